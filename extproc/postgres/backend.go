package postgres

import (
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vigilaudit/vigil/audit"
)

// fromServer handles one whole server message; mu is not held on entry.
func (s *session) fromServer(out []byte, typ byte, raw []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.phase {
	case phaseStartup, phaseAuth:
		return s.fromServerAuth(out, typ, raw)
	case phaseFailed:
		return out
	case phaseCancel:
		return append(out, raw...)
	}
	s.answer(typ, raw)
	return append(out, raw...)
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

// answer pairs a server message with the request it answers and records
// results. It never changes the message.
func (s *session) answer(typ byte, raw []byte) {
	it := s.head()
	switch typ {
	case 'D': // DataRow
		if c := it.current(); c != nil {
			c.rows++
		}
	case 'C', 'I': // CommandComplete, EmptyQueryResponse
		s.complete(it, typ, raw)
	case 's': // PortalSuspended: the Execute's row limit was reached
		if it != nil && it.kind == itemExecute {
			s.finish(it.current(), audit.Result{Status: audit.StatusOK, Tag: "SUSPENDED"})
			s.pop()
		}
	case 'E':
		s.failed(it, raw)
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
	case 'T', 'n': // RowDescription, NoData
		if it != nil && it.kind == itemDescribe {
			s.pop()
		}
	}
	// CopyIn/Out/BothResponse, CopyData, CopyDone, NoticeResponse,
	// NotificationResponse, ParameterStatus, BackendKeyData and
	// NegotiateProtocolVersion pass through; their commands complete with
	// a CommandComplete like any other.
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

// failed handles an ErrorResponse: the request at the head failed.
func (s *session) failed(it *item, raw []byte) {
	var e pgproto3.ErrorResponse
	if err := e.Decode(body('E', raw)); err != nil {
		e.Message = "malformed error response"
	}
	r := audit.Result{Status: audit.StatusError, SQLState: e.Code, Message: e.Message}
	if it == nil {
		return // an error outside any request, such as an admin shutdown
	}
	switch it.kind {
	case itemQuery:
		// The rest of the query string does not run.
		s.finish(it.current(), r)
		it.cur++
		s.skip(it, it.cur)
		return
	case itemFunction:
		s.finish(it.current(), r)
		return
	case itemSync:
		return // a failure at the implicit commit; the Executes completed
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
}

// failedParse records a Parse the server refused when no Execute of the
// batch carries the error: the attempt is part of what the agent did.
func (s *session) failedParse(it *item, r audit.Result) {
	c, err := s.record(&audit.Command{Message: "parse", SQL: it.sql, Statement: it.stmt})
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
