package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
)

// auditCmd groups the commands that read the journal. Its persistent flags
// (--data, --json) are shared by every audit subcommand.
var auditCmd = &cobra.Command{
	Use:   "audit",
	Short: "Read and verify the audit journal: sessions and their commands",
	Long: `Read the audit journal in audit.dir (or --data DIR), also while vigil is running.

  vigil audit sessions   one line per session, filtered by identity, connection and time
  vigil audit show ID    every event of one session, in order
  vigil audit verify     check hash chains and signed checkpoints: nothing edited,
                         removed, reordered or added
  vigil audit pubkey     the public key checkpoints are signed with`,
}

// auditOptions holds the flags of the audit commands.
type auditOptions struct {
	data       string
	json       bool
	identity   string
	connection string
	since      string
	until      string
	// elasticsearch reads audit.elasticsearch instead of the journal
	// (the flag is registered in elasticsearch.go).
	elasticsearch bool
}

var auditFlags auditOptions

var auditSessionsCmd = &cobra.Command{
	Use:   "sessions",
	Short: "List the recorded sessions",
	Long: `List the recorded sessions, oldest first. --since and --until take an RFC 3339
time (2025-01-02T15:04:05Z) or a duration meaning that long ago (2h, 30m), and
select the sessions that were open at some moment between them.`,
	Args: cobra.NoArgs,
	RunE: func(cmd *cobra.Command, _ []string) error {
		dir, err := auditDir()
		if err != nil {
			return err
		}
		f := audit.Filter{Identity: auditFlags.identity, Connection: auditFlags.connection}
		now := time.Now()
		if f.Since, err = parseWhen(auditFlags.since, now); err != nil {
			return fmt.Errorf("--since: %w", err)
		}
		if f.Until, err = parseWhen(auditFlags.until, now); err != nil {
			return fmt.Errorf("--until: %w", err)
		}
		ss, err := readSessions(cmd, dir, f)
		if err != nil {
			return err
		}
		if auditFlags.json {
			return writeJSON(cmd.OutOrStdout(), ss)
		}
		return writeSessions(cmd.OutOrStdout(), ss)
	},
}

var auditShowCmd = &cobra.Command{
	Use:   "show SESSION",
	Short: "Print every event of one session, in order",
	Long: `Print the session's header (identity, grant, client, upstream user, open and
close times), then one line per command joined with its result. With --json,
print the stored events, one JSON object per line, byte for byte as journaled.`,
	Args: cobra.ExactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		dir, err := auditDir()
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if auditFlags.json {
			recs, err := readRecords(cmd, dir, args[0])
			if err != nil {
				return err
			}
			for _, r := range recs {
				if _, err := fmt.Fprintf(out, "%s\n", r.Event); err != nil {
					return err
				}
			}
			return nil
		}
		evs, err := readSession(cmd, dir, args[0])
		if err != nil {
			return err
		}
		return writeSession(out, evs)
	},
}

func init() {
	pf := auditCmd.PersistentFlags()
	pf.StringVar(&auditFlags.data, "data", "",
		"journal directory (default: audit.dir of --config)")
	pf.BoolVar(&auditFlags.json, "json", false, "print JSON for scripts")
	f := auditSessionsCmd.Flags()
	f.StringVar(&auditFlags.identity, "identity", "",
		"only this identity: principal, oid, appid, upn or name")
	f.StringVar(&auditFlags.connection, "connection", "", "only this connection")
	f.StringVar(&auditFlags.since, "since", "", "only sessions open at or after T")
	f.StringVar(&auditFlags.until, "until", "", "only sessions open at or before T")
	auditCmd.AddCommand(auditSessionsCmd, auditShowCmd)
	root.AddCommand(auditCmd)
}

// auditDir is --data, or else audit.dir of the configuration.
func auditDir() (string, error) {
	if auditFlags.data != "" {
		return auditFlags.data, nil
	}
	cfg, err := config.Load(flagConfig)
	if err != nil {
		return "", fmt.Errorf("%w (or name the journal with --data DIR)", err)
	}
	return cfg.Audit.Dir, nil
}

// parseWhen reads an RFC 3339 time or a duration before now; "" is zero.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, errors.New("want an RFC 3339 time or a duration such as 2h")
	}
	return now.Add(-d), nil
}

// stamp formats t in UTC with milliseconds; "-" when zero.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeSessions prints the sessions as a table.
func writeSessions(w io.Writer, ss []audit.SessionSummary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tOPENED\tCLOSED\tDURATION\tIDENTITY\tGRANT\tCONNECTION\t"+
		"UPSTREAM USER\tCLIENT\tCOMMANDS")
	for _, s := range ss {
		closed, dur := "open", "-"
		if !s.Closed.IsZero() {
			closed = stamp(s.Closed)
			dur = s.Closed.Sub(s.Opened).Round(time.Millisecond).String()
		}
		principal := "-"
		if s.Identity != nil {
			principal = s.Identity.Principal()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", s.ID, stamp(s.Opened),
			closed, dur, principal, dash(s.Grant), dash(s.Connection), dash(s.UpstreamUser),
			dash(s.Client), s.Commands)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeSession prints a session's header, then its commands, each with its
// result, and its failed logins, in seq order.
func writeSession(w io.Writer, evs []audit.Event) error {
	results := map[uint64]*audit.Result{}
	approvalsOf := map[uint64][]audit.Event{}
	for _, ev := range evs {
		if ev.Kind == audit.KindResult && ev.Result != nil {
			results[ev.Result.Command] = ev.Result
		}
		if ev.Kind == audit.KindApproval && ev.Approval != nil {
			approvalsOf[ev.Approval.Command] = append(approvalsOf[ev.Approval.Command], ev)
		}
	}
	ew := &errWriter{w: w}
	writeHeader(ew, evs)
	for _, ev := range evs {
		switch ev.Kind {
		case audit.KindCommand:
			writeCommand(ew, ev, results[ev.Seq])
			// Its approval steps, under it: the result above came after
			// them.
			for _, a := range approvalsOf[ev.Seq] {
				writeApproval(ew, a)
			}
		case audit.KindAuthFailed:
			ew.printf("%5d  %s  %-11s %s\n", ev.Seq, stamp(ev.Time), "auth_failed",
				reasonText(ev.Reason, ev.ReasonCode))
		case audit.KindApproval, audit.KindSessionStart, audit.KindSessionEnd, audit.KindResult:
		default:
			ew.printf("%5d  %s  %-11s %s\n", ev.Seq, stamp(ev.Time), ev.Kind, ev.Reason)
		}
	}
	return ew.err
}

func reasonText(reason, code string) string {
	if code == "" {
		return reason
	}
	return reason + " (" + code + ")"
}

// writeHeader prints who, where and when, from the first and last events.
func writeHeader(ew *errWriter, evs []audit.Event) {
	first, last := evs[0], evs[len(evs)-1]
	ew.printf("session     %s\n", first.SessionID)
	ew.printf("connection  %s", dash(first.Connection))
	if first.Protocol != "" {
		ew.printf(" (%s)", first.Protocol)
	}
	ew.printf("\n")
	if id := first.Identity; id != nil {
		var ids []string
		if id.OID != "" {
			ids = append(ids, "oid "+id.OID)
		}
		if id.AppID != "" {
			ids = append(ids, "appid "+id.AppID)
		}
		if id.TID != "" {
			ids = append(ids, "tid "+id.TID)
		}
		ew.printf("identity    %s (%s)\n", id.Principal(), strings.Join(ids, ", "))
	} else {
		ew.printf("identity    -\n")
	}
	ew.printf("grant       %s\n", dash(first.Grant))
	client := dash(first.Client)
	if s := first.Session; s != nil && (s.Application != "" || s.ClientUser != "") {
		client += fmt.Sprintf(" (application %s, user %s)", dash(s.Application),
			dash(s.ClientUser))
	}
	ew.printf("client      %s\n", client)
	upstream := dash(first.UpstreamUser)
	if first.Upstream != "" {
		upstream += " at " + first.Upstream
	}
	if first.Database != "" {
		upstream += ", database " + first.Database
	}
	ew.printf("upstream    %s\n", upstream)

	opened := first.Time
	if first.Session != nil && !first.Session.Opened.IsZero() {
		opened = first.Session.Opened
	}
	ew.printf("opened      %s\n", stamp(opened))
	if last.Kind != audit.KindSessionEnd {
		ew.printf("closed      - (no session_end event: still open, or cut short)\n")
	} else {
		closed := last.Time
		if last.Session != nil && !last.Session.Closed.IsZero() {
			closed = last.Session.Closed
		}
		ew.printf("closed      %s (after %s)\n", stamp(closed),
			closed.Sub(opened).Round(time.Millisecond))
		if last.Reason != "" {
			ew.printf("end reason  %s\n", last.Reason)
		}
	}
	ew.printf("\n")
}

// writeCommand prints one command line with its result, then the SQL,
// parameters and names indented beneath it.
func writeCommand(ew *errWriter, ev audit.Event, r *audit.Result) {
	status, dur, outcome := "no result", "", ""
	if r != nil {
		status, dur = r.Status, fmt.Sprintf("%.2fms", r.Duration)
		switch {
		case r.SQLState != "":
			outcome = r.SQLState + " " + r.Message
		case r.Tag != "":
			outcome = r.Tag
			if r.Rows != 0 && !strings.HasSuffix(r.Tag, " "+strconv.FormatInt(r.Rows, 10)) {
				outcome += fmt.Sprintf(" (%d rows)", r.Rows)
			}
		default:
			outcome = r.Message
		}
	}
	ew.printf("%5d  %s  %-11s %9s  %s\n", ev.Seq, stamp(ev.Time), status, dur, outcome)
	c := ev.Command
	if c == nil {
		return
	}
	const indent = "       "
	what := c.Message
	if c.Count > 1 {
		what += fmt.Sprintf(", statement %d of %d", c.Index, c.Count)
	}
	if c.Statement != "" {
		what += ", statement name " + strconv.Quote(c.Statement)
	}
	if c.Portal != "" {
		what += ", portal " + strconv.Quote(c.Portal)
	}
	if c.Function != 0 {
		what += fmt.Sprintf(", function oid %d", c.Function)
	}
	ew.printf("%s[%s]\n", indent, what)
	if c.SQL != "" {
		for _, l := range strings.Split(strings.TrimRight(c.SQL, "\n"), "\n") {
			ew.printf("%s%s\n", indent, l)
		}
	}
	if len(c.Parameters) > 0 {
		ew.printf("%s%s\n", indent, formatParams(c.Parameters))
	} else if c.ParameterCount > 0 {
		ew.printf("%s%d parameters (values not recorded)\n", indent, c.ParameterCount)
	}
	if d := ev.Decision; d != nil && (len(d.Rules) > 0 || d.Hold || !d.Allowed) {
		verdict := "allowed"
		if !d.Allowed {
			verdict = "denied"
		}
		if d.Hold {
			verdict += ", held for approval"
		}
		ew.printf("%spolicy: %s by %s (revision %s)\n", indent, verdict,
			dash(strings.Join(d.Rules, ", ")), dash(d.Revision))
	}
	if r != nil {
		for _, m := range r.Masked {
			ew.printf("%smasked: column %s, %d by %s (%s)\n", indent, m.Column, m.Values,
				m.Rule, m.Strategy)
		}
	}
}

// writeApproval prints one step of a command's approval.
func writeApproval(ew *errWriter, ev audit.Event) {
	a := ev.Approval
	if a == nil {
		return
	}
	line := a.Step
	if a.Actor != nil {
		line += " by " + a.Actor.Principal()
	}
	if len(a.Approvers) > 0 {
		line += ", approvers " + strings.Join(a.Approvers, " or ")
	}
	if a.Reason != "" {
		line += ": " + a.Reason
	}
	if a.RequestID != "" {
		line += " [request " + a.RequestID + "]"
	}
	ew.printf("       approval: %s (seq %d, %s)\n", line, ev.Seq, stamp(ev.Time))
}

// formatParams renders $1=... $2=...: NULL, binary values as their hex, text
// values quoted as SQL literals.
func formatParams(ps []audit.Parameter) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "$%d=", i+1)
		switch {
		case p.Null:
			b.WriteString("NULL")
		case p.Format == "binary":
			b.WriteString(p.Value)
		default:
			b.WriteString("'" + strings.ReplaceAll(p.Value, "'", "''") + "'")
		}
	}
	return b.String()
}

// errWriter keeps the first write error, so printing code stays linear.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, args...)
	}
}
