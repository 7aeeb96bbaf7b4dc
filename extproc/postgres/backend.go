package postgres

import (
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vigilaudit/vigil/audit"
)

// fromServer handles one whole server message; mu is not held on entry.
func (s *session) fromServer(out []byte, typ byte, raw []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.silenced {
		return out // nothing follows a FATAL error
	}
	switch s.phase {
	case phaseStartup, phaseAuth:
		return s.fromServerAuth(out, typ, raw)
	case phaseFailed:
		return out
	case phaseCancel:
		return append(out, raw...)
	}
	return s.answer(out, typ, raw)
}

// head is the request the server is answering, or nil.
func (s *session) head() *item {
	if len(s.pending) == 0 {
		return nil
	}
	return s.pending[0]
}

func (s *session) pop() { s.pending = s.pending[1:] }

// current is the command the server's rows and tags belong to.
func (it *item) current() *command {
	if it == nil || it.cur >= len(it.cmds) {
		return nil
	}
	return it.cmds[it.cur]
}

// answer pairs a server message with the request it answers, records
// results, and appends the message to out: as it came, masked, or (for a
// request vigil denied) replaced by vigil's error.
func (s *session) answer(out []byte, typ byte, raw []byte) []byte {
	it := s.head()
	if it != nil && it.kind == itemInjected {
		s.injectedAnswer(it, typ, raw)
		return out
	}
	switch typ {
	case 'D': // DataRow
		if c := it.current(); c != nil {
			c.rows++
			if c.plan != nil {
				return c.plan.row(out, raw)
			}
		}
	case 'd': // CopyData of a COPY TO STDOUT
		if c := it.current(); c != nil && c.plan != nil && c.copyOut {
			return c.plan.copyRow(out, raw)
		}
	case 'H': // CopyOutResponse
		if c := it.current(); c != nil && len(c.mask) > 0 {
			c.copyOut = true
			c.plan = newMaskPlan(c.mask, c.fields, nil, c.tables)
		}
	case 'C', 'I': // CommandComplete, EmptyQueryResponse
		s.complete(it, typ, raw)
	case 's': // PortalSuspended: the Execute's row limit was reached
		if it != nil && it.kind == itemExecute {
			s.finish(it.current(), audit.Result{Status: audit.StatusOK, Tag: "SUSPENDED"})
			s.pop()
		}
	case 'E':
		return s.failed(out, it, raw)
	case 'V': // FunctionCallResponse; ReadyForQuery follows
		if it != nil && it.kind == itemFunction {
			s.finish(it.current(), audit.Result{Status: audit.StatusOK, Tag: "FUNCTION CALL"})
		}
	case 'Z':
		s.ready(it)
	case '1', '2', '3': // ParseComplete, BindComplete, CloseComplete
		if it != nil && (it.kind == itemParse || it.kind == itemBind || it.kind == itemClose) {
			s.pop()
		}
	case 't': // ParameterDescription: learn the parameter types
		if it != nil && it.kind == itemDescribe {
			s.learnParameterTypes(it, raw)
		}
	case 'T': // RowDescription
		if s.rowDescription(it, raw) {
			return out
		}
	case 'n': // NoData
		if it != nil && it.kind == itemDescribe {
			s.pop()
			if it.injected {
				return out
			}
		}
	}
	// CopyInResponse, CopyBothResponse, CopyDone, NoticeResponse,
	// NotificationResponse, ParameterStatus, BackendKeyData and
	// NegotiateProtocolVersion pass through; their commands complete with
	// a CommandComplete like any other.
	return append(out, raw...)
}

// rowDescription learns the shape of rows: for a Describe, of the
// statement or portal; for a simple query, of the statement now running.
// It reports whether the message answers vigil's own Describe and must
// not reach the client.
func (s *session) rowDescription(it *item, raw []byte) bool {
	if it == nil {
		return false
	}
	var rd pgproto3.RowDescription
	if err := rd.Decode(body('T', raw)); err != nil {
		return false
	}
	fields := make([]pgproto3.FieldDescription, len(rd.Fields))
	for i, f := range rd.Fields {
		fields[i] = f
		fields[i].Name = append([]byte(nil), f.Name...)
	}
	switch it.kind {
	case itemDescribe:
		if it.portal != nil {
			it.portal.fields = fields
		} else if st := s.stmts[it.stmt]; st != nil && st.sql == it.sql {
			st.fields = fields
		}
		s.pop()
		if c := it.next; it.injected && c != nil {
			c.fields = fields
			c.plan = newMaskPlan(c.mask, fields, it.portal.formats, c.tables)
			return true
		}
	case itemQuery:
		if c := it.current(); c != nil && len(c.mask) > 0 {
			c.fields = fields
			c.plan = newMaskPlan(c.mask, fields, nil, c.tables)
		}
	}
	return false
}

// injectedAnswer takes the server's answers to vigil's own requests (a
// Describe sent to learn the columns of a COPY); none reaches the client.
func (s *session) injectedAnswer(it *item, typ byte, raw []byte) {
	switch typ {
	case 'T':
		var rd pgproto3.RowDescription
		if err := rd.Decode(body('T', raw)); err == nil && it.next != nil {
			it.next.fields = make([]pgproto3.FieldDescription, len(rd.Fields))
			for i, f := range rd.Fields {
				it.next.fields[i] = f
				it.next.fields[i].Name = append([]byte(nil), f.Name...)
			}
		}
	case 'E':
		// The COPY itself will fail the same way; the client sees that.
		s.log.Debug("vigil's describe of a COPY failed")
	case 'Z':
		s.pop()
	}
}

// complete handles CommandComplete and EmptyQueryResponse.
func (s *session) complete(it *item, typ byte, raw []byte) {
	if it == nil {
		return
	}
	tag := "EMPTY"
	if typ == 'C' {
		var cc pgproto3.CommandComplete
		if err := cc.Decode(body('C', raw)); err == nil {
			tag = string(cc.CommandTag)
		}
	}
	r := audit.Result{Status: audit.StatusOK, Tag: tag, Rows: tagRows(tag)}
	switch it.kind {
	case itemQuery:
		s.finish(it.current(), r)
		it.cur++
	case itemExecute:
		s.finish(it.current(), r)
		s.pop()
	}
}

// failed handles an ErrorResponse: the request at the head failed. A
// request vigil denied has its error replaced by vigil's.
func (s *session) failed(out []byte, it *item, raw []byte) []byte {
	var e pgproto3.ErrorResponse
	if err := e.Decode(body('E', raw)); err != nil {
		e.Message = "malformed error response"
	}
	r := audit.Result{Status: audit.StatusError, SQLState: e.Code, Message: e.Message}
	if it == nil {
		return append(out, raw...) // outside any request, such as an admin shutdown
	}
	if it.denied != nil {
		r = audit.Result{Status: audit.StatusDenied, SQLState: it.denied.state(),
			Message: it.denied.message}
		out = rewriteDenial(out, it.denied, e.Severity)
		if it.denied.fatal {
			// Nothing follows a FATAL error: the session is over.
			s.silenced = true
		}
		it.denied = nil
		if it.kind == itemQuery {
			// None of the query string ran: each statement was refused.
			for _, c := range it.cmds {
				s.finish(c, r)
			}
			it.cur = len(it.cmds)
			return out
		}
	} else {
		out = append(out, raw...)
	}

	switch it.kind {
	case itemQuery:
		// The rest of the query string does not run.
		s.finish(it.current(), r)
		it.cur++
		s.skip(it, it.cur)
		return out
	case itemFunction:
		s.finish(it.current(), r)
		return out
	case itemSync:
		return out // a failure at the implicit commit; the Executes completed
	}

	// Extended protocol: the server discards everything up to Sync. The
	// error goes to the first Execute of the batch it stops; the later
	// ones are skipped.
	attributed := false
	i := 0
	for ; i < len(s.pending) && s.pending[i].kind != itemSync; i++ {
		p := s.pending[i]
		if len(p.cmds) == 0 {
			continue
		}
		if !attributed {
			s.finish(p.current(), r)
			attributed = true
			continue
		}
		s.skip(p, 0)
	}
	if !attributed && it.kind == itemParse {
		s.failedParse(it, r)
	}
	s.discarding = i == len(s.pending)
	s.pending = s.pending[i:]
	return out
}

// failedParse records a Parse the server refused when no Execute of the
// batch carries the error: the attempt is part of what the agent did.
func (s *session) failedParse(it *item, r audit.Result) {
	c, err := s.record(&audit.Command{Message: "parse", SQL: it.sql, Statement: it.stmt}, nil)
	if err != nil {
		s.log.Error("audit: failed parse not recorded", "err", err)
		return
	}
	s.finish(c, r)
}

// ready handles ReadyForQuery, which ends a Query, FunctionCall or Sync.
func (s *session) ready(it *item) {
	if it == nil {
		return
	}
	switch it.kind {
	case itemQuery, itemFunction:
		// Statements the server never reached (after an error) are skipped.
		s.skip(it, it.cur)
		s.pop()
	case itemSync:
		s.pop()
	}
}

func (s *session) learnParameterTypes(it *item, raw []byte) {
	var pd pgproto3.ParameterDescription
	if err := pd.Decode(body('t', raw)); err != nil {
		return
	}
	if st := s.stmts[it.stmt]; st != nil && st.sql == it.sql {
		st.paramOIDs = append(st.paramOIDs[:0], pd.ParameterOIDs...)
	}
}
