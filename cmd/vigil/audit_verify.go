package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
)

// verifyOptions holds the flags of `vigil audit verify` and `pubkey`.
type verifyOptions struct {
	session  string
	pubkey   string
	progress bool
	base64   bool
}

var verifyFlags verifyOptions

var auditVerifyCmd = &cobra.Command{
	Use:   "verify",
	Short: "Check that nothing in the journal was edited, removed, reordered or added",
	Long: `Check every session's hash chain, seq numbers and order; every checkpoint's
Ed25519 signature and the chain of checkpoints; that every session head a
checkpoint names is stored (so a removed session or a removed tail shows); and
that every session has an end.

Each problem is printed with its session and seq. A session without an end is
a warning, not a failure, when the newest checkpoint says it is open (vigil is
running, or stopped with it open: the next start records its end, with the
reason "vigil restarted after a crash" after a crash). The command exits with
status 1 when it finds any problem other than warnings.

Without --pubkey the checkpoints are checked against the key they name, which
shows only that one key signed them all. Keep the output of 'vigil audit
pubkey' away from the journal's host and pass it with --pubkey to show that
this vigil's key signed them.`,
	Args: cobra.NoArgs,
	RunE: runVerify,
}

var auditPubkeyCmd = &cobra.Command{
	Use:   "pubkey",
	Short: "Print the public key that checkpoints are signed with",
	Long: `Print the Ed25519 public key of the journal's checkpoint key (the file
` + audit.KeyFile + ` in audit.dir, created by vigil's first start) as a PKIX
"PUBLIC KEY" PEM block, or with --base64 as the base64 of its 32 bytes, the
form checkpoints name it in. Both forms are accepted by 'vigil audit verify
--pubkey FILE'. Reading it needs read access to the key file.`,
	Args: cobra.NoArgs,
	RunE: func(cmd *cobra.Command, _ []string) error {
		dir, err := auditDir()
		if err != nil {
			return err
		}
		k, err := audit.LoadKey(dir)
		if err != nil {
			return err
		}
		pub := k.Public().(ed25519.PublicKey)
		if verifyFlags.base64 {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(pub))
			return err
		}
		b, err := audit.PublicKeyPEM(pub)
		if err != nil {
			return err
		}
		_, err = cmd.OutOrStdout().Write(b)
		return err
	},
}

func init() {
	f := auditVerifyCmd.Flags()
	f.StringVar(&verifyFlags.session, "session", "", "check only this session's chain")
	f.StringVar(&verifyFlags.pubkey, "pubkey", "",
		"file with the public key from 'vigil audit pubkey' (PEM or base64)")
	f.BoolVar(&verifyFlags.progress, "progress", false,
		"report progress on stderr (the default when stderr is a terminal)")
	auditPubkeyCmd.Flags().BoolVar(&verifyFlags.base64, "base64", false,
		"print the base64 of the key's 32 bytes instead of PEM")
	auditCmd.AddCommand(auditVerifyCmd, auditPubkeyCmd)
}

// auditSource returns what the audit commands read, from the flags: the
// local journal in auditDir, or Elasticsearch with --elasticsearch.
func auditSource(cmd *cobra.Command) (audit.Source, error) {
	if auditFlags.elasticsearch {
		return esSource()
	}
	dir, err := auditDir()
	if err != nil {
		return nil, err
	}
	return audit.JournalSource(dir), nil
}

// errVerifyFailed makes `vigil audit verify` exit non-zero after it
// printed the problems.
var errVerifyFailed = errors.New("audit verify found problems")

func runVerify(cmd *cobra.Command, _ []string) error {
	src, err := auditSource(cmd)
	if err != nil {
		return err
	}
	opts := audit.VerifyOptions{Session: verifyFlags.session}
	if auditFlags.elasticsearch {
		// Elasticsearch holds the sessions of connections with
		// export: siem only.
		cfg, err := config.Load(flagConfig)
		if err != nil {
			return err
		}
		for _, cn := range cfg.Connections {
			if cn.Export == "siem" {
				opts.Connections = append(opts.Connections, cn.Name)
			}
		}
	}
	if verifyFlags.pubkey != "" {
		b, err := os.ReadFile(verifyFlags.pubkey)
		if err != nil {
			return fmt.Errorf("--pubkey: %w", err)
		}
		if opts.PublicKey, err = audit.ParsePublicKey(b); err != nil {
			return fmt.Errorf("--pubkey %s: %w", verifyFlags.pubkey, err)
		}
	}
	stderr := cmd.ErrOrStderr()
	if verifyFlags.progress || isTerminal(stderr) {
		opts.Progress = progressPrinter(stderr)
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	rep, err := audit.Verify(ctx, src, opts)
	if err != nil {
		return err
	}
	if auditFlags.json {
		if err := writeJSON(cmd.OutOrStdout(), rep); err != nil {
			return err
		}
	} else if err := writeReport(cmd.OutOrStdout(), rep); err != nil {
		return err
	}
	if !rep.OK() {
		return errVerifyFailed
	}
	return nil
}

// progressPrinter reports every 1000 sessions, and the last one.
func progressPrinter(w io.Writer) func(done, total int) {
	return func(done, total int) {
		if done%1000 == 0 || done == total {
			fmt.Fprintf(w, "verified %d of %d sessions\n", done, total)
		}
	}
}

// isTerminal reports whether w is a character device.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// writeReport prints one line per problem, then a summary.
func writeReport(w io.Writer, rep *audit.Report) error {
	ew := &errWriter{w: w}
	failures := 0
	for _, p := range rep.Problems {
		level := "FAIL"
		if p.Warning {
			level = "warn"
		} else {
			failures++
		}
		where := "journal"
		if p.Session != "" {
			where = "session " + p.Session
		}
		if p.Seq != 0 {
			where += fmt.Sprintf(" seq %d", p.Seq)
		}
		ew.printf("%s  %s  %s: %s\n", level, where, p.Kind, p.Detail)
	}
	verdict := "ok"
	if failures > 0 {
		verdict = fmt.Sprintf("%d problems", failures)
	}
	ew.printf("%s: %d sessions, %d events, %d checkpoints checked; %d warnings\n", verdict,
		rep.Sessions, rep.Records, rep.Checkpoints, len(rep.Problems)-failures)
	return ew.err
}
