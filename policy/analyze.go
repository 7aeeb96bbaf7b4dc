package policy

import (
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Statement is what the policy sees of one SQL statement. It is derived from
// PostgreSQL's own parse tree, never from keywords in the text.
type Statement struct {
	// Text is the statement's own text, comments included, trimmed. For a
	// nested statement it is the parser's rendering of it (deparsed).
	Text string `json:"text"`
	// Tag is the command tag PostgreSQL gives the statement: "SELECT",
	// "DELETE", "CREATE TABLE", "DROP TABLE", "TRUNCATE TABLE", "EXPLAIN",
	// "PREPARE", "EXECUTE", "SELECT INTO"...
	Tag string `json:"tag"`
	// Tables lists every table, view or sequence the statement names,
	// including inside CTEs, subqueries, EXPLAIN ANALYZE and PREPARE, once
	// per access. Names of CTEs in scope are not tables and are left out.
	Tables []TableRef `json:"tables"`
	// Functions lists the functions called, schema-qualified when written
	// so ("pg_catalog.pg_read_file"), each once.
	Functions []string `json:"functions"`
	// HasWhere is set for UPDATE and DELETE whose WHERE clause refers to at
	// least one column (or is WHERE CURRENT OF): a WHERE that names no
	// column, such as WHERE true or WHERE 1 = 1, keeps or drops every row
	// and counts as none. Always false for other statements.
	HasWhere bool `json:"has_where"`
	// Writes is set when the statement, or anything nested in it, changes
	// data or schema, or may do so unseen (DO, CALL, COPY to a file).
	// EXPLAIN without ANALYZE never writes.
	Writes bool `json:"writes"`
	// DDL is set when the statement changes schema, roles, privileges or
	// server settings (PostgreSQL's log_statement = ddl class).
	DDL bool `json:"ddl"`
	// Nested holds the statements inside this one worth judging on their
	// own, flattened in the order they appear: data-modifying statements in
	// CTEs, COPY (query) and rules, the statement of EXPLAIN ANALYZE and the
	// statement of PREPARE. Each has its own Tag, HasWhere and Tables; their
	// own Nested is always empty.
	Nested []Statement `json:"nested,omitempty"`
	// Prepared is the statement name a PREPARE defines.
	Prepared string `json:"prepared,omitempty"`
	// Executes is the prepared statement name an EXECUTE runs; the caller
	// links it to the PREPARE it saw in the same session.
	Executes string `json:"executes,omitempty"`
}

// TableRef is one relation a statement names.
type TableRef struct {
	Schema string `json:"schema,omitempty"`
	Name   string `json:"name"`
	// Access is "read" or "write". A write is a change of rows or of the
	// relation itself (INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY FROM,
	// DROP, ALTER, CREATE, SELECT INTO, GRANT on it).
	Access string `json:"access"`
}

// Access values of TableRef.
const (
	AccessRead  = "read"
	AccessWrite = "write"
)

// Analyze parses sql with PostgreSQL's parser and returns one Statement per
// statement in the string, in order. Empty statements (";;") are skipped.
// A syntax error is returned as an error; the caller decides whether to let
// the server report it.
func Analyze(sql string) ([]Statement, error) {
	tree, err := pg.Parse(sql)
	if err != nil {
		return nil, fmt.Errorf("policy: parse: %w", err)
	}
	out := make([]Statement, 0, len(tree.Stmts))
	for _, raw := range tree.Stmts {
		if raw.Stmt == nil {
			continue
		}
		out = append(out, analyzeNode(raw.Stmt, stmtText(sql, raw), nil))
	}
	return out, nil
}

// stmtText cuts a statement's text out of the query string; a length of 0
// means up to the end.
func stmtText(sql string, raw *pg.RawStmt) string {
	start, end := int(raw.StmtLocation), len(sql)
	if raw.StmtLen > 0 {
		end = start + int(raw.StmtLen)
	}
	if start < 0 || start > end || end > len(sql) {
		return strings.TrimSpace(sql)
	}
	return strings.TrimSpace(sql[start:end])
}

// analyzeNode builds the Statement of one statement node; scope holds the
// CTE names visible where it appears.
func analyzeNode(n *pg.Node, text string, scope []string) Statement {
	tag, cl := tagOf(n)
	st := Statement{Text: text, Tag: tag, DDL: cl == classDDL, Writes: cl != classRead}
	w := &walker{root: n, scope: scope}

	switch s := n.GetNode().(type) {
	case *pg.Node_ExplainStmt:
		if !explainAnalyze(s.ExplainStmt) {
			// The inner statement is planned, not run: every table is
			// only read and nothing inside is judged on its own.
			w.readOnly = true
		} else if q := s.ExplainStmt.Query; q != nil {
			w.nestedNode(q)
		}
	case *pg.Node_PrepareStmt:
		st.Prepared = s.PrepareStmt.Name
		if q := s.PrepareStmt.Query; q != nil {
			w.nestedNode(q)
		}
	case *pg.Node_ExecuteStmt:
		st.Executes = s.ExecuteStmt.Name
	case *pg.Node_UpdateStmt:
		st.HasWhere = filters(s.UpdateStmt.WhereClause)
	case *pg.Node_DeleteStmt:
		st.HasWhere = filters(s.DeleteStmt.WhereClause)
	}

	w.walk(n.ProtoReflect())
	st.Tables, st.Functions, st.Nested = w.tables, w.funcs, w.nested
	if st.Tables == nil {
		st.Tables = []TableRef{}
	}
	if st.Functions == nil {
		st.Functions = []string{}
	}
	for _, ns := range st.Nested {
		st.Writes = st.Writes || ns.Writes
	}
	return st
}

// explainAnalyze reports whether EXPLAIN runs its statement.
func explainAnalyze(e *pg.ExplainStmt) bool {
	for _, o := range e.Options {
		d := o.GetDefElem()
		if d == nil || d.Defname != "analyze" {
			continue
		}
		return defTrue(d.Arg)
	}
	return false
}

// defTrue reads an option's boolean value the way PostgreSQL's defGetBoolean
// does: no value means true.
func defTrue(arg *pg.Node) bool {
	if arg == nil {
		return true
	}
	switch v := arg.GetNode().(type) {
	case *pg.Node_Boolean:
		return v.Boolean.Boolval
	case *pg.Node_Integer:
		return v.Integer.Ival != 0
	case *pg.Node_String_:
		switch strings.ToLower(v.String_.Sval) {
		case "false", "off", "0", "no":
			return false
		}
		return true
	}
	return true
}

// filters reports whether a WHERE clause can select rows: it names a column
// or is WHERE CURRENT OF.
func filters(where *pg.Node) bool {
	if where == nil {
		return false
	}
	found := false
	var visit func(m protoreflect.Message)
	visit = func(m protoreflect.Message) {
		if found {
			return
		}
		switch m.Interface().(type) {
		case *pg.ColumnRef, *pg.CurrentOfExpr:
			found = true
			return
		}
		eachChild(m, visit)
	}
	visit(where.ProtoReflect())
	return found
}

// eachChild calls f on every message directly inside m.
func eachChild(m protoreflect.Message, f func(protoreflect.Message)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil || fd.IsMap() {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				f(l.Get(i).Message())
			}
			return true
		}
		f(v.Message())
		return true
	})
}

// walker collects the tables, functions and nested statements under one
// statement.
type walker struct {
	root     *pg.Node
	scope    []string // CTE names visible at the current point
	readOnly bool     // plain EXPLAIN: report every table as read

	writeTargets map[*pg.RangeVar]bool
	tables       []TableRef
	funcs        []string
	nested       []Statement
	skipNested   map[*pg.Node]bool // already added as nested by analyzeNode
}

func (w *walker) walk(m protoreflect.Message) {
	switch x := m.Interface().(type) {
	case *pg.Node:
		w.node(x)
	case *pg.RangeVar:
		w.rangeVar(x)
	case *pg.FuncCall:
		w.addFunc(qualified(x.Funcname))
	}
	if wc, ok := m.Interface().(interface{ GetWithClause() *pg.WithClause }); ok &&
		wc.GetWithClause() != nil {
		w.withScope(m, wc.GetWithClause())
		return
	}
	eachChild(m, w.walk)
}

// node handles a statement node: marks the relations it writes and, below
// the root, records data-modifying statements as nested.
func (w *walker) node(n *pg.Node) {
	if w.readOnly {
		return
	}
	w.markTargets(n)
	if n == w.root || w.skipNested[n] {
		return
	}
	switch n.GetNode().(type) {
	case *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt,
		*pg.Node_MergeStmt:
		w.nestedNode(n)
	case *pg.Node_SelectStmt:
		if n.GetSelectStmt().GetIntoClause() != nil {
			w.nestedNode(n)
		}
	}
}

// nestedNode records n as a nested statement, followed by everything nested
// in it.
func (w *walker) nestedNode(n *pg.Node) {
	if w.skipNested == nil {
		w.skipNested = map[*pg.Node]bool{}
	}
	w.skipNested[n] = true
	st := analyzeNode(n, deparse(n), w.scope)
	inner := st.Nested
	st.Nested = nil
	w.nested = append(w.nested, st)
	w.nested = append(w.nested, inner...)
	// Nodes nested in n were judged by n's own walker already.
	markAll(n, w.skipNested)
}

// markAll adds every statement node under n to seen.
func markAll(n *pg.Node, seen map[*pg.Node]bool) {
	var visit func(m protoreflect.Message)
	visit = func(m protoreflect.Message) {
		if x, ok := m.Interface().(*pg.Node); ok {
			seen[x] = true
		}
		eachChild(m, visit)
	}
	visit(n.ProtoReflect())
}

// withScope walks a statement that has a WITH clause: each CTE sees the CTEs
// before it (all of them when RECURSIVE), the rest of the statement sees all.
func (w *walker) withScope(m protoreflect.Message, with *pg.WithClause) {
	outer := w.scope
	var names []string
	for _, c := range with.Ctes {
		cte := c.GetCommonTableExpr()
		if cte != nil {
			names = append(names, cte.Ctename)
		}
	}
	for i, c := range with.Ctes {
		visible := names[:i]
		if with.Recursive {
			visible = names
		}
		w.scope = append(append([]string(nil), outer...), visible...)
		w.walk(c.ProtoReflect())
	}
	w.scope = append(append([]string(nil), outer...), names...)
	withField := m.Descriptor().Fields().ByName("with_clause")
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd == withField {
			return true
		}
		eachChild(singleField{m, fd}, w.walk)
		return true
	})
	w.scope = outer
}

// singleField presents one field of a message to eachChild.
type singleField struct {
	protoreflect.Message
	fd protoreflect.FieldDescriptor
}

func (s singleField) Range(f func(protoreflect.FieldDescriptor, protoreflect.Value) bool) {
	f(s.fd, s.Message.Get(s.fd))
}

func (w *walker) rangeVar(r *pg.RangeVar) {
	if r.Schemaname == "" && r.Catalogname == "" {
		for _, name := range w.scope {
			if name == r.Relname {
				return
			}
		}
	}
	access := AccessRead
	if w.writeTargets[r] && !w.readOnly {
		access = AccessWrite
	}
	w.addTable(TableRef{Schema: r.Schemaname, Name: r.Relname, Access: access})
}

func (w *walker) addTable(t TableRef) {
	for _, have := range w.tables {
		if have == t {
			return
		}
	}
	w.tables = append(w.tables, t)
}

func (w *walker) addFunc(name string) {
	if name == "" {
		return
	}
	for _, have := range w.funcs {
		if have == name {
			return
		}
	}
	w.funcs = append(w.funcs, name)
}

// markTargets notes the relations a statement node writes, before its
// children are walked.
func (w *walker) markTargets(n *pg.Node) {
	var targets []*pg.RangeVar
	switch s := n.GetNode().(type) {
	case *pg.Node_InsertStmt:
		targets = append(targets, s.InsertStmt.Relation)
	case *pg.Node_UpdateStmt:
		targets = append(targets, s.UpdateStmt.Relation)
	case *pg.Node_DeleteStmt:
		targets = append(targets, s.DeleteStmt.Relation)
	case *pg.Node_MergeStmt:
		targets = append(targets, s.MergeStmt.Relation)
	case *pg.Node_SelectStmt:
		targets = append(targets, s.SelectStmt.GetIntoClause().GetRel())
	case *pg.Node_CreateTableAsStmt:
		targets = append(targets, s.CreateTableAsStmt.GetInto().GetRel())
	case *pg.Node_TruncateStmt:
		targets = append(targets, rangeVars(s.TruncateStmt.Relations)...)
	case *pg.Node_CopyStmt:
		if s.CopyStmt.IsFrom {
			targets = append(targets, s.CopyStmt.Relation)
		}
	case *pg.Node_CreateStmt:
		targets = append(targets, s.CreateStmt.Relation)
	case *pg.Node_CreateForeignTableStmt:
		targets = append(targets, s.CreateForeignTableStmt.GetBaseStmt().GetRelation())
	case *pg.Node_ViewStmt:
		targets = append(targets, s.ViewStmt.View)
	case *pg.Node_IndexStmt:
		targets = append(targets, s.IndexStmt.Relation)
	case *pg.Node_AlterTableStmt:
		targets = append(targets, s.AlterTableStmt.Relation)
	case *pg.Node_RenameStmt:
		targets = append(targets, s.RenameStmt.Relation)
	case *pg.Node_AlterObjectSchemaStmt:
		targets = append(targets, s.AlterObjectSchemaStmt.Relation)
	case *pg.Node_AlterOwnerStmt:
		targets = append(targets, s.AlterOwnerStmt.Relation)
	case *pg.Node_CreateTrigStmt:
		targets = append(targets, s.CreateTrigStmt.Relation)
	case *pg.Node_RuleStmt:
		targets = append(targets, s.RuleStmt.Relation)
	case *pg.Node_CreatePolicyStmt:
		targets = append(targets, s.CreatePolicyStmt.Table)
	case *pg.Node_AlterPolicyStmt:
		targets = append(targets, s.AlterPolicyStmt.Table)
	case *pg.Node_RefreshMatViewStmt:
		targets = append(targets, s.RefreshMatViewStmt.Relation)
	case *pg.Node_GrantStmt:
		targets = append(targets, rangeVars(s.GrantStmt.Objects)...)
	case *pg.Node_DropStmt:
		w.dropTargets(s.DropStmt)
	}
	for _, t := range targets {
		if t == nil {
			continue
		}
		if w.writeTargets == nil {
			w.writeTargets = map[*pg.RangeVar]bool{}
		}
		w.writeTargets[t] = true
	}
}

// dropTargets records the relations a DROP names; they are name lists, not
// RangeVars, in the parse tree.
func (w *walker) dropTargets(d *pg.DropStmt) {
	switch d.RemoveType {
	case pg.ObjectType_OBJECT_TABLE, pg.ObjectType_OBJECT_VIEW,
		pg.ObjectType_OBJECT_MATVIEW, pg.ObjectType_OBJECT_FOREIGN_TABLE,
		pg.ObjectType_OBJECT_SEQUENCE, pg.ObjectType_OBJECT_INDEX:
	default:
		return
	}
	for _, o := range d.Objects {
		parts := names(o.GetList().GetItems())
		if len(parts) == 0 {
			continue
		}
		t := TableRef{Name: parts[len(parts)-1], Access: AccessWrite}
		if len(parts) > 1 {
			t.Schema = parts[len(parts)-2]
		}
		w.addTable(t)
	}
}

func rangeVars(nodes []*pg.Node) []*pg.RangeVar {
	var out []*pg.RangeVar
	for _, n := range nodes {
		if r := n.GetRangeVar(); r != nil {
			out = append(out, r)
		}
	}
	return out
}

// names returns the strings of a name list ("schema", "table").
func names(nodes []*pg.Node) []string {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		if s := n.GetString_(); s != nil {
			out = append(out, s.Sval)
		}
	}
	return out
}

// qualified joins a function's name list: "pg_catalog.now".
func qualified(nodes []*pg.Node) string {
	return strings.Join(names(nodes), ".")
}

// parserVersion is the parse tree version Deparse expects: the version of
// PostgreSQL's grammar compiled into pg_query_go.
var parserVersion = func() int32 {
	tree, err := pg.Parse("SELECT")
	if err != nil {
		return 0
	}
	return tree.Version
}()

// deparse renders a nested statement as SQL; on failure it names the tag.
func deparse(n *pg.Node) string {
	tree := &pg.ParseResult{Version: parserVersion, Stmts: []*pg.RawStmt{{Stmt: n}}}
	s, err := pg.Deparse(tree)
	if err != nil {
		tag, _ := tagOf(n)
		return tag
	}
	return s
}
