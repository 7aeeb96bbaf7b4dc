package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/extproc"
	"github.com/vigilaudit/vigil/policy"
)

// itemKind is the client request a pending item stands for.
type itemKind int

const (
	itemQuery itemKind = iota // simple Query: answered up to ReadyForQuery
	itemFunction
	itemParse
	itemBind
	itemDescribe
	itemExecute
	itemClose
	itemSync
	// itemInjected is vigil's own Parse, Describe and Sync, answered up to
	// ReadyForQuery; its answers are kept from the client.
	itemInjected
)

// item is one client request the server still owes an answer to. The
// server answers requests strictly in order, which is how vigil pairs each
// answer with its command.
type item struct {
	kind itemKind
	// cmds are the audited commands: a Query's statements, or the one
	// Execute or FunctionCall.
	cmds []*command
	// cur is the Query statement being answered.
	cur int
	// sql and stmt say what a Parse or Describe was about; portal is set
	// for a Describe of a portal.
	sql    string
	stmt   string
	portal *portal
	// denied is set when vigil rewrote the request so the server refuses
	// it; the server's error is replaced with vigil's.
	denied *denial
	// injected marks a Describe vigil sent on its own to learn the columns
	// of next's rows; its answer never reaches the client.
	injected bool
	next     *command
}

// command is an audited command waiting for its result.
type command struct {
	seq   uint64
	start time.Time
	rows  int64
	done  bool
	// sql is kept to name a failed Parse's command.
	sql string
	// mask is what the policy wants masked in the command's rows;
	// fields and formats describe those rows once known.
	mask    []policy.MaskRule
	fields  []pgproto3.FieldDescription
	formats []int16
	plan    *maskPlan
	// tables are the tables the command reads, for table-qualified rules.
	tables  []string
	copyOut bool
}

// prepared is a statement created by Parse.
type prepared struct {
	sql       string
	paramOIDs []uint32
	analysed  analysis
	// fields is the row shape the server described, for masking.
	fields []pgproto3.FieldDescription
}

// portal is a portal created by Bind.
type portal struct {
	stmt    string
	sql     string
	params  []audit.Parameter
	nparam  int
	formats []int16 // result format codes
	fields  []pgproto3.FieldDescription
}

// fromClient handles one whole client message; mu is not held on entry.
func (s *session) fromClient(ctx context.Context, out []byte, typ byte,
	raw []byte) ([]byte, extproc.Action) {
	s.mu.Lock()
	defer s.mu.Unlock()

	switch s.phase {
	case phaseStartup:
		return s.startup(out, raw)
	case phaseFailed:
		return out, extproc.Close
	case phaseCancel:
		return append(out, raw...), extproc.Continue
	case phaseAuth:
		if typ == 'p' {
			return s.password(ctx, out, raw)
		}
		if !s.auth.verified {
			// Nothing but the token may reach the server before the
			// client is known.
			if typ == 'X' {
				return append(out, raw...), extproc.Continue
			}
			s.log.Warn("client sent a request before authenticating; closing", "type", string(typ))
			return out, extproc.Close
		}
	}
	return s.request(ctx, out, typ, raw)
}

// request handles a client request once the client is known.
func (s *session) request(ctx context.Context, out []byte, typ byte,
	raw []byte) ([]byte, extproc.Action) {
	if s.discarding && typ != 'S' {
		return s.discarded(out, typ, raw)
	}
	var err error
	send := raw
	switch typ {
	case 'Q':
		send, err = s.query(ctx, raw)
	case 'P':
		s.parse(raw)
	case 'B':
		s.bind(raw)
	case 'D':
		s.describe(raw)
	case 'E':
		send, err = s.execute(ctx, raw)
	case 'C':
		s.closeObject(raw)
	case 'S':
		s.discarding, s.shadow = false, nil
		s.pending = append(s.pending, &item{kind: itemSync})
	case 'F':
		send, err = s.functionCall(ctx, raw)
	case 'H', 'X', 'd', 'c', 'f':
		// Flush, Terminate and COPY data pass as they are.
	default:
		// Not a request a client sends after login: recorded, and passed
		// on for the server to refuse with its own FATAL error, as it
		// does.
		s.recordViolation(typ, raw, fmt.Sprintf("message type %q is not a frontend request", typ))
	}
	if s.violation != "" {
		return s.closeOnViolation(out)
	}
	if err != nil {
		return s.unrecorded(out, typ, err)
	}
	return append(out, send...), extproc.Continue
}

// badMessage handles a client request vigil cannot decode: it is
// recorded, never forwarded (vigil judges only what it understands), and
// the connection is closed. It returns a non-nil error for callers that
// return one; request sees s.violation first.
func (s *session) badMessage(typ byte, raw []byte, err error) error {
	why := fmt.Sprintf("malformed %q message: %v", typ, err)
	s.recordViolation(typ, raw, why)
	s.violation = why
	return errors.New(why)
}

// recordViolation records a client message that is not a valid request,
// with its first bytes, and its refusal.
func (s *session) recordViolation(typ byte, raw []byte, why string) {
	b := body(typ, raw)
	c := &audit.Command{Message: "protocol_violation",
		SQL: strconv.Quote(string(b[:min(len(b), 1024)]))}
	cmd, err := s.record(c, nil)
	if err != nil {
		s.violation = "audit journal unavailable: " + err.Error()
		return
	}
	s.finish(cmd, audit.Result{Status: audit.StatusError, Message: why})
	s.log.Warn("client protocol violation", "type", string(typ), "why", why)
}

// closeOnViolation ends a session whose client broke the protocol. The
// client is told why, as PostgreSQL would (FATAL, SQLSTATE 08P01): the
// server is sent a Query it refuses, its error is replaced with vigil's,
// and the stream ends shortly after, closing both connections. The
// malformed message itself never reaches the server.
func (s *session) closeOnViolation(out []byte) ([]byte, extproc.Action) {
	s.endReason = "client protocol violation: " + s.violation
	if !s.abortSoon(errors.New(s.endReason)) {
		return out, extproc.Close
	}
	s.pending = append(s.pending, &item{kind: itemQuery, denied: &denial{code: "08P01",
		fatal: true, message: "vigil: " + s.violation + "; closing the connection",
		hint: "the message was recorded and not run"}})
	return append(out, s.deniedQuery(nil)...), extproc.Continue
}

// unrecorded refuses a command that could not be recorded: fail closed.
// The server is sent a request it will refuse, and its error is replaced
// with one that says why, so the client learns the cause and the session
// stays in step; every later command is refused the same way while the
// journal stays unavailable.
func (s *session) unrecorded(out []byte, typ byte, err error) ([]byte, extproc.Action) {
	s.log.Error("audit journal unavailable: refusing the command", "alert", true, "err", err)
	s.endReason = "audit journal unavailable: " + err.Error()
	d := &denial{code: stateIOError,
		message: "vigil: the audit journal cannot be written, so the command was not run: " +
			err.Error(),
		hint: "this is vigil's storage, not your command; tell the operator"}
	if typ == 'E' {
		s.pending = append(s.pending, &item{kind: itemExecute, denied: d})
		return append(out, s.deniedExecute(nil)...), extproc.Continue
	}
	// A Query or a FunctionCall: both are answered with an error and
	// ReadyForQuery, as the refused Query will be.
	s.pending = append(s.pending, &item{kind: itemQuery, denied: d})
	return append(out, s.deniedQuery(nil)...), extproc.Continue
}

// discarded handles a request the server will drop unseen, after an
// error in an extended-protocol batch: commands are recorded as skipped.
// Statements and portals the client creates meanwhile never exist on the
// server; they are kept apart, for the record only, until the Sync.
func (s *session) discarded(out []byte, typ byte, raw []byte) ([]byte, extproc.Action) {
	if s.shadow == nil {
		s.shadow = &session{h: s.h, cn: s.cn, log: s.log, stmts: map[string]*prepared{},
			portals: map[string]*portal{}, sqlPrepared: map[string][]policy.Statement{}}
		for k, v := range s.stmts {
			s.shadow.stmts[k] = v
		}
	}
	var c *audit.Command
	switch typ {
	case 'P':
		s.shadow.parse(raw)
	case 'B':
		s.shadow.bind(raw)
	case 'E':
		var e pgproto3.Execute
		if err := e.Decode(body('E', raw)); err == nil {
			c = &audit.Command{Message: "execute", Portal: e.Portal}
			pt := s.shadow.portals[e.Portal]
			if pt == nil {
				pt = s.portals[e.Portal]
			}
			if pt != nil {
				c.SQL, c.Statement = pt.sql, pt.stmt
				c.Parameters, c.ParameterCount = pt.params, pt.nparam
			}
		}
	case 'Q':
		var q pgproto3.Query
		if err := q.Decode(body('Q', raw)); err == nil {
			c = &audit.Command{Message: "query", SQL: q.String}
		}
	}
	if c != nil {
		cmd, err := s.record(c, nil)
		if err != nil {
			s.endReason = "audit journal unavailable: " + err.Error()
			return out, extproc.Close
		}
		s.skip(&item{cmds: []*command{cmd}}, 0)
	}
	return append(out, raw...), extproc.Continue
}

// query judges and records each statement of a simple Query, and returns
// what to send upstream: the Query, or one the server will refuse.
func (s *session) query(ctx context.Context, raw []byte) ([]byte, error) {
	var q pgproto3.Query
	if err := q.Decode(body('Q', raw)); err != nil {
		return nil, s.badMessage('Q', raw, err)
	}
	a := s.analyse(q.String)
	analysed := a.stmts
	v := s.judge(ctx, "query", q.String, nil, a)
	texts := statementTexts(q.String, analysed)
	it := &item{kind: itemQuery, denied: v.denied}
	for i, sql := range texts {
		c := &audit.Command{Message: "query", SQL: sql}
		if len(texts) > 1 {
			c.Index, c.Count = i+1, len(texts)
		}
		var d *policy.Decision
		if i < len(v.decisions) {
			d = v.decisions[i]
		}
		cmd, err := s.record(c, d)
		if err != nil {
			return nil, err
		}
		if d != nil && !s.h.opts.Monitor {
			cmd.mask = d.Mask
		}
		if i < len(analysed) {
			cmd.tables = readTables(analysed[i : i+1])
		}
		it.cmds = append(it.cmds, cmd)
	}
	if v.denied == nil && len(it.cmds) > 0 {
		held := it.cmds[0]
		for i, d := range v.decisions {
			if d.Approval != nil && i < len(it.cmds) {
				held = it.cmds[i]
				break
			}
		}
		if d := s.hold(ctx, v, q.String, nil, held); d != nil {
			v.denied, it.denied = d, d
		}
	}
	if v.denied != nil {
		s.pending = append(s.pending, it)
		s.log.Info("query denied", "reason", v.denied.message)
		return s.deniedQuery(nil), nil
	}
	send := s.prepareCopies(it)
	s.pending = append(s.pending, it)
	if it.denied != nil {
		return s.deniedQuery(nil), nil
	}
	return append(send, raw...), nil
}

// prepareCopies readies masking for the COPY TO statements of a query:
// it returns the requests that learn their columns first, or denies the
// query (it.denied) when a COPY's rows cannot be masked.
func (s *session) prepareCopies(it *item) []byte {
	var copies []*command
	var kinds []copyTo
	for _, c := range it.cmds {
		if len(c.mask) == 0 || !strings.Contains(strings.ToUpper(c.sql), "COPY") {
			continue
		}
		ct, ok := parseCopyTo(c.sql)
		if !ok {
			continue
		}
		if ct.binary {
			it.denied = &denial{message: "vigil: denied: a binary COPY TO cannot be masked; " +
				"use the text format or SELECT (rule vigil.copy_binary_masked)"}
			return nil
		}
		copies, kinds = append(copies, c), append(kinds, ct)
	}
	var send []byte
	for i, c := range copies {
		if hasColumnRules(c) {
			send = append(send, describeFirst(kinds[i].query)...)
			s.pending = append(s.pending, &item{kind: itemInjected, next: c})
		}
	}
	return send
}

// analysis is what the parser made of a request's SQL.
type analysis struct {
	stmts []policy.Statement
	// parseError is the parser's message when the SQL does not parse; the
	// policy then judges it unparsed.
	parseError string
}

// analyse parses SQL for the policy, linking SQL-level PREPARE and
// EXECUTE so that the statement a PREPARE holds is judged when it runs.
func (s *session) analyse(sql string) analysis {
	if s.h.opts.Policy == nil {
		return analysis{}
	}
	stmts, err := policy.Analyze(sql)
	if err != nil {
		s.log.Debug("statement does not parse; the policy judges it unparsed", "err", err)
		return analysis{parseError: err.Error()}
	}
	for i := range stmts {
		st := &stmts[i]
		if st.Prepared != "" {
			s.sqlPrepared[st.Prepared] = st.Nested
		}
		if st.Executes != "" {
			st.Nested = append(st.Nested, s.sqlPrepared[st.Executes]...)
		}
	}
	return analysis{stmts: stmts}
}

// statementTexts names the statements of a query string for the record:
// the parser's split when it has one, else the scanner's.
func statementTexts(sql string, analysed []policy.Statement) []string {
	if len(analysed) > 0 {
		out := make([]string, len(analysed))
		for i, st := range analysed {
			out[i] = st.Text
		}
		return out
	}
	return splitStatements(sql)
}

// splitStatements splits a query string the way the server's scanner
// does. A string the scanner cannot split is kept whole.
func splitStatements(sql string) []string {
	parts, err := pg_query.SplitWithScanner(sql, true)
	if err != nil || len(parts) == 0 {
		return []string{sql}
	}
	return parts
}

func (s *session) parse(raw []byte) {
	var p pgproto3.Parse
	if err := p.Decode(body('P', raw)); err != nil {
		s.badMessage('P', raw, err)
		return
	}
	// Parse once, judge at every Execute: prepared statements reused many
	// times cost one parse.
	s.stmts[p.Name] = &prepared{sql: p.Query, paramOIDs: append([]uint32(nil), p.ParameterOIDs...),
		analysed: s.analyse(p.Query)}
	s.pending = append(s.pending, &item{kind: itemParse, sql: p.Query, stmt: p.Name})
}

func (s *session) bind(raw []byte) {
	s.pending = append(s.pending, &item{kind: itemBind})
	var b pgproto3.Bind
	if err := b.Decode(body('B', raw)); err != nil {
		s.badMessage('B', raw, err)
		return
	}
	pt := &portal{stmt: b.PreparedStatement, nparam: len(b.Parameters),
		formats: append([]int16(nil), b.ResultFormatCodes...)}
	st := s.stmts[b.PreparedStatement]
	var oids []uint32
	if st != nil {
		pt.sql, pt.fields, oids = st.sql, st.fields, st.paramOIDs
	}
	// The policy sees parameters whatever the connection records.
	pt.params = renderParameters(b.ParameterFormatCodes, b.Parameters, oids)
	s.portals[b.DestinationPortal] = pt
}

func (s *session) describe(raw []byte) {
	it := &item{kind: itemDescribe}
	var d pgproto3.Describe
	if err := d.Decode(body('D', raw)); err != nil {
		s.badMessage('D', raw, err)
	} else {
		if d.ObjectType == 'S' {
			it.stmt = d.Name
			if st := s.stmts[d.Name]; st != nil {
				it.sql = st.sql
			}
		} else {
			it.portal = s.portals[d.Name]
		}
	}
	s.pending = append(s.pending, it)
}

// execute judges and records an Execute, and returns what to send
// upstream: the Execute, or one naming a portal that cannot exist.
func (s *session) execute(ctx context.Context, raw []byte) ([]byte, error) {
	var e pgproto3.Execute
	if err := e.Decode(body('E', raw)); err != nil {
		return nil, s.badMessage('E', raw, err)
	}
	c := &audit.Command{Message: "execute", Portal: e.Portal}
	pt := s.portals[e.Portal]
	var v verdict
	if pt != nil {
		c.SQL, c.Statement, c.ParameterCount = pt.sql, pt.stmt, pt.nparam
		if s.cn.RecordParameters() {
			c.Parameters = pt.params
		}
		var a analysis
		if st := s.stmts[pt.stmt]; st != nil && st.sql == pt.sql {
			a = st.analysed
		} else {
			a = s.analyse(pt.sql)
		}
		v = s.judge(ctx, "execute", pt.sql, pt.params, a)
	} else {
		v = s.judge(ctx, "execute", "", nil, analysis{})
	}
	cmd, err := s.record(c, v.first())
	if err != nil {
		return nil, err
	}
	cmd.mask = v.mask
	if pt != nil && len(v.mask) > 0 {
		cmd.fields, cmd.formats = pt.fields, pt.formats
		if st := s.stmts[pt.stmt]; st != nil {
			cmd.tables = readTables(st.analysed.stmts)
		}
		cmd.plan = newMaskPlan(v.mask, cmd.fields, cmd.formats, cmd.tables)
	}
	if v.denied == nil && pt != nil {
		v.denied = s.hold(ctx, v, pt.sql, pt.params, cmd)
	}
	if v.denied != nil {
		s.pending = append(s.pending, &item{kind: itemExecute, cmds: []*command{cmd},
			denied: v.denied})
		s.log.Info("execute denied", "reason", v.denied.message)
		return s.deniedExecute(nil), nil
	}
	var send []byte
	if pt != nil && len(v.mask) > 0 && pt.fields == nil {
		// Masking needs the column names and the client never asked for
		// them: ask the server, and keep its answer from the client.
		send, _ = (&pgproto3.Describe{ObjectType: 'P', Name: e.Portal}).Encode(nil)
		s.pending = append(s.pending, &item{kind: itemDescribe, portal: pt, injected: true,
			next: cmd})
	}
	s.pending = append(s.pending, &item{kind: itemExecute, cmds: []*command{cmd}})
	return append(send, raw...), nil
}

func (s *session) closeObject(raw []byte) {
	s.pending = append(s.pending, &item{kind: itemClose})
	var c pgproto3.Close
	if err := c.Decode(body('C', raw)); err != nil {
		s.badMessage('C', raw, err)
		return
	}
	if c.ObjectType == 'S' {
		delete(s.stmts, c.Name)
	} else {
		delete(s.portals, c.Name)
	}
}

// functionCall judges and records a fast-path FunctionCall, and returns
// what to send upstream: the call, or, denied, a Query the server refuses
// (both are answered with an error and ReadyForQuery).
func (s *session) functionCall(ctx context.Context, raw []byte) ([]byte, error) {
	var f pgproto3.FunctionCall
	if err := f.Decode(body('F', raw)); err != nil {
		return nil, s.badMessage('F', raw, err)
	}
	c := &audit.Command{Message: "function_call", Function: f.Function,
		ParameterCount: len(f.Arguments)}
	formats := make([]int16, len(f.ArgFormatCodes))
	for i, fc := range f.ArgFormatCodes {
		formats[i] = int16(fc)
	}
	params := renderParameters(formats, f.Arguments, nil)
	if s.cn.RecordParameters() {
		c.Parameters = params
	}
	// The policy sees the function's OID, not its name: the call carries
	// nothing else. The default policy refuses the fast path to agents.
	s.function = f.Function
	v := s.judge(ctx, "function_call", "", params, analysis{})
	s.function = 0
	cmd, err := s.record(c, v.first())
	if err != nil {
		return nil, err
	}
	if v.denied == nil {
		v.denied = s.hold(ctx, v, "", params, cmd)
	}
	it := &item{kind: itemFunction, cmds: []*command{cmd}, denied: v.denied}
	s.pending = append(s.pending, it)
	if v.denied != nil {
		s.log.Info("function call denied", "oid", f.Function, "reason", v.denied.message)
		return s.deniedQuery(nil), nil
	}
	return raw, nil
}

// record writes a command event, with the policy's decision, before the
// command is forwarded.
func (s *session) record(c *audit.Command, d *policy.Decision) (*command, error) {
	ev := s.base(audit.KindCommand)
	ev.Command = c
	ev.Decision = auditDecision(d)
	seq, err := s.rec.Record(ev)
	if err != nil {
		return nil, err
	}
	s.commands++
	return &command{seq: seq, start: time.Now(), sql: c.SQL}, nil
}

// finish records a command's result once.
func (s *session) finish(c *command, r audit.Result) {
	if c == nil || c.done {
		return
	}
	c.done = true
	r.Command = c.seq
	if r.Rows == 0 {
		r.Rows = c.rows
	}
	r.Duration = float64(time.Since(c.start).Microseconds()) / 1000
	r.Masked = c.plan.summary()
	ev := s.base(audit.KindResult)
	ev.Result = &r
	if _, err := s.rec.Record(ev); err != nil {
		s.log.Error("audit: result not recorded", "seq", c.seq, "err", err)
	}
	s.recorded = true
}

// skip records the commands of an item the server will never run.
func (s *session) skip(it *item, from int) {
	for _, c := range it.cmds[min(from, len(it.cmds)):] {
		s.finish(c, audit.Result{Status: audit.StatusSkipped,
			Message: "not run: an earlier command of the same batch failed"})
	}
}

// tagRows reads the row count of a command tag: "INSERT 0 5", "SELECT 3".
func tagRows(tag string) int64 {
	i := strings.LastIndexByte(tag, ' ')
	if i < 0 {
		return 0
	}
	var n int64
	for _, ch := range tag[i+1:] {
		if ch < '0' || ch > '9' {
			return 0
		}
		n = n*10 + int64(ch-'0')
	}
	return n
}

// readTables lists the tables statements read, nested ones included.
func readTables(stmts []policy.Statement) []string {
	var out []string
	for _, st := range stmts {
		for _, t := range st.Tables {
			name := t.Name
			if t.Schema != "" {
				name = t.Schema + "." + t.Name
			}
			out = append(out, name)
		}
		out = append(out, readTables(st.Nested)...)
	}
	return out
}
