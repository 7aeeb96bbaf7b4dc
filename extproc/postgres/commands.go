package postgres

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/extproc"
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
	// sql and stmt say what a Parse or Describe was about.
	sql  string
	stmt string
}

// command is an audited command waiting for its result.
type command struct {
	seq   uint64
	start time.Time
	rows  int64
	done  bool
	// sql is kept to name a failed Parse's command.
	sql string
}

// prepared is a statement created by Parse.
type prepared struct {
	sql       string
	paramOIDs []uint32
}

// portal is a portal created by Bind.
type portal struct {
	stmt   string
	sql    string
	params []audit.Parameter
	nparam int
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
	return s.request(out, typ, raw)
}

// request handles a client request once the client is known.
func (s *session) request(out []byte, typ byte, raw []byte) ([]byte, extproc.Action) {
	if s.discarding && typ != 'S' {
		return s.discarded(out, typ, raw)
	}
	var err error
	switch typ {
	case 'Q':
		err = s.query(raw)
	case 'P':
		s.parse(raw)
	case 'B':
		s.bind(raw)
	case 'D':
		s.describe(raw)
	case 'E':
		err = s.execute(raw)
	case 'C':
		s.closeObject(raw)
	case 'S':
		s.discarding, s.shadow = false, nil
		s.pending = append(s.pending, &item{kind: itemSync})
	case 'F':
		err = s.functionCall(raw)
	}
	if err != nil {
		// Fail closed: a command that cannot be recorded does not run.
		// TODO(issue 4): refuse it with an ErrorResponse through the
		// deny path instead of closing the connection.
		s.log.Error("audit journal unavailable; closing the connection", "err", err)
		s.endReason = "audit journal unavailable: " + err.Error()
		return out, extproc.Close
	}
	return append(out, raw...), extproc.Continue
}

// discarded handles a request the server will drop unseen, after an
// error in an extended-protocol batch: commands are recorded as skipped.
// Statements and portals the client creates meanwhile never exist on the
// server; they are kept apart, for the record only, until the Sync.
func (s *session) discarded(out []byte, typ byte, raw []byte) ([]byte, extproc.Action) {
	if s.shadow == nil {
		s.shadow = &session{stmts: map[string]*prepared{}, portals: map[string]*portal{},
			cn: s.cn, log: s.log}
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
		cmd, err := s.record(c)
		if err != nil {
			s.endReason = "audit journal unavailable: " + err.Error()
			return out, extproc.Close
		}
		s.skip(&item{cmds: []*command{cmd}}, 0)
	}
	return append(out, raw...), extproc.Continue
}

// query records each statement of a simple Query.
func (s *session) query(raw []byte) error {
	var q pgproto3.Query
	if err := q.Decode(body('Q', raw)); err != nil {
		return nil // the server will reject it; nothing ran
	}
	stmts := splitStatements(q.String)
	it := &item{kind: itemQuery}
	for i, sql := range stmts {
		c := &audit.Command{Message: "query", SQL: sql}
		if len(stmts) > 1 {
			c.Index, c.Count = i+1, len(stmts)
		}
		cmd, err := s.record(c)
		if err != nil {
			return err
		}
		it.cmds = append(it.cmds, cmd)
	}
	s.pending = append(s.pending, it)
	return nil
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
		s.pending = append(s.pending, &item{kind: itemParse})
		return
	}
	s.stmts[p.Name] = &prepared{sql: p.Query, paramOIDs: append([]uint32(nil), p.ParameterOIDs...)}
	s.pending = append(s.pending, &item{kind: itemParse, sql: p.Query, stmt: p.Name})
}

func (s *session) bind(raw []byte) {
	s.pending = append(s.pending, &item{kind: itemBind})
	var b pgproto3.Bind
	if err := b.Decode(body('B', raw)); err != nil {
		return
	}
	pt := &portal{stmt: b.PreparedStatement, nparam: len(b.Parameters)}
	st := s.stmts[b.PreparedStatement]
	if st != nil {
		pt.sql = st.sql
	}
	if s.cn.RecordParameters() {
		var oids []uint32
		if st != nil {
			oids = st.paramOIDs
		}
		pt.params = renderParameters(b.ParameterFormatCodes, b.Parameters, oids)
	}
	s.portals[b.DestinationPortal] = pt
}

func (s *session) describe(raw []byte) {
	it := &item{kind: itemDescribe}
	var d pgproto3.Describe
	if err := d.Decode(body('D', raw)); err == nil && d.ObjectType == 'S' {
		it.stmt = d.Name
		if st := s.stmts[d.Name]; st != nil {
			it.sql = st.sql
		}
	}
	s.pending = append(s.pending, it)
}

func (s *session) execute(raw []byte) error {
	var e pgproto3.Execute
	if err := e.Decode(body('E', raw)); err != nil {
		s.pending = append(s.pending, &item{kind: itemExecute})
		return nil
	}
	c := &audit.Command{Message: "execute", Portal: e.Portal}
	if pt := s.portals[e.Portal]; pt != nil {
		c.SQL, c.Statement = pt.sql, pt.stmt
		c.Parameters, c.ParameterCount = pt.params, pt.nparam
	}
	cmd, err := s.record(c)
	if err != nil {
		return err
	}
	s.pending = append(s.pending, &item{kind: itemExecute, cmds: []*command{cmd}})
	return nil
}

func (s *session) closeObject(raw []byte) {
	s.pending = append(s.pending, &item{kind: itemClose})
	var c pgproto3.Close
	if err := c.Decode(body('C', raw)); err != nil {
		return
	}
	if c.ObjectType == 'S' {
		delete(s.stmts, c.Name)
	} else {
		delete(s.portals, c.Name)
	}
}

func (s *session) functionCall(raw []byte) error {
	var f pgproto3.FunctionCall
	if err := f.Decode(body('F', raw)); err != nil {
		s.pending = append(s.pending, &item{kind: itemFunction})
		return nil
	}
	c := &audit.Command{Message: "function_call", Function: f.Function,
		ParameterCount: len(f.Arguments)}
	if s.cn.RecordParameters() {
		formats := make([]int16, len(f.ArgFormatCodes))
		for i, fc := range f.ArgFormatCodes {
			formats[i] = int16(fc)
		}
		c.Parameters = renderParameters(formats, f.Arguments, nil)
	}
	cmd, err := s.record(c)
	if err != nil {
		return err
	}
	s.pending = append(s.pending, &item{kind: itemFunction, cmds: []*command{cmd}})
	return nil
}

// record writes a command event before the command is forwarded.
func (s *session) record(c *audit.Command) (*command, error) {
	ev := s.base(audit.KindCommand)
	ev.Command = c
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
