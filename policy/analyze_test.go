package policy

import (
	"reflect"
	"testing"
)

// analyzeCase is one query string and what Analyze must find in it.
type analyzeCase struct {
	name string
	sql  string
	want []Statement // compared on the fields set in check
}

func (c analyzeCase) run(t *testing.T) {
	got, err := Analyze(c.sql)
	if err != nil {
		t.Fatalf("Analyze(%q): %v", c.sql, err)
	}
	if len(got) != len(c.want) {
		t.Fatalf("Analyze(%q) = %d statements, want %d: %+v", c.sql, len(got), len(c.want), got)
	}
	for i := range got {
		checkStatement(t, c.sql, got[i], c.want[i])
	}
}

// checkStatement compares tag, has_where, writes, ddl, prepared, executes,
// tables, and the nested statements' tags and has_where; text when wanted.
func checkStatement(t *testing.T, sql string, got, want Statement) {
	t.Helper()
	if want.Text != "" && got.Text != want.Text {
		t.Errorf("%q: text %q, want %q", sql, got.Text, want.Text)
	}
	if got.Tag != want.Tag || got.HasWhere != want.HasWhere || got.Writes != want.Writes ||
		got.DDL != want.DDL || got.Prepared != want.Prepared || got.Executes != want.Executes {
		t.Errorf("%q: got tag=%q where=%v writes=%v ddl=%v prepared=%q executes=%q, "+
			"want tag=%q where=%v writes=%v ddl=%v prepared=%q executes=%q", sql,
			got.Tag, got.HasWhere, got.Writes, got.DDL, got.Prepared, got.Executes,
			want.Tag, want.HasWhere, want.Writes, want.DDL, want.Prepared, want.Executes)
	}
	if want.Tables != nil && !reflect.DeepEqual(got.Tables, want.Tables) {
		t.Errorf("%q: tables %+v, want %+v", sql, got.Tables, want.Tables)
	}
	if want.Functions != nil && !reflect.DeepEqual(got.Functions, want.Functions) {
		t.Errorf("%q: functions %v, want %v", sql, got.Functions, want.Functions)
	}
	if len(got.Nested) != len(want.Nested) {
		t.Fatalf("%q: %d nested %+v, want %d", sql, len(got.Nested), got.Nested, len(want.Nested))
	}
	for i := range got.Nested {
		checkStatement(t, sql, got.Nested[i], want.Nested[i])
	}
}

func w(name string) TableRef { return TableRef{Name: name, Access: AccessWrite} }
func r(name string) TableRef { return TableRef{Name: name, Access: AccessRead} }

var deleteT = Statement{Tag: "DELETE", Writes: true, Tables: []TableRef{w("t")}}

func TestAnalyze(t *testing.T) {
	for _, c := range []analyzeCase{
		{"delete without where", "DELETE FROM t", []Statement{deleteT}},
		{"delete with where", "DELETE FROM t WHERE id = $1", []Statement{
			{Tag: "DELETE", Writes: true, HasWhere: true}}},
		{"constant where counts as none", "DELETE FROM t WHERE 1 = 1", []Statement{deleteT}},
		{"where true counts as none", "UPDATE t SET a = 1 WHERE true", []Statement{
			{Tag: "UPDATE", Writes: true}}},
		{"delete in a cte", "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
			[]Statement{{Tag: "SELECT", Writes: true, Tables: []TableRef{w("t")},
				Nested: []Statement{{Tag: "DELETE", Writes: true,
					Text: "DELETE FROM t RETURNING *"}}}}},
		{"leading comment", "/* cleanup */ -- really\nDELETE FROM t", []Statement{
			{Tag: "DELETE", Writes: true, Text: "/* cleanup */ -- really\nDELETE FROM t"}}},
		{"second statement", "SELECT 1; DELETE FROM t", []Statement{
			{Tag: "SELECT", Text: "SELECT 1", Tables: []TableRef{}},
			{Tag: "DELETE", Writes: true, Text: "DELETE FROM t"}}},
		{"explain analyze delete", "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t", []Statement{
			{Tag: "EXPLAIN", Writes: true, Tables: []TableRef{w("t")},
				Nested: []Statement{deleteT}}}},
		{"explain analyze off", "EXPLAIN (ANALYZE false) DELETE FROM t", []Statement{
			{Tag: "EXPLAIN", Tables: []TableRef{r("t")}}}},
		{"plain explain only plans", "EXPLAIN DELETE FROM t", []Statement{
			{Tag: "EXPLAIN", Tables: []TableRef{r("t")}}}},
		{"prepare and execute", "PREPARE p AS DELETE FROM t; EXECUTE p", []Statement{
			{Tag: "PREPARE", Prepared: "p", Writes: true, Nested: []Statement{deleteT}},
			{Tag: "EXECUTE", Executes: "p"}}},
		{"cte name is not a table", "WITH x AS (SELECT * FROM a) SELECT * FROM x", []Statement{
			{Tag: "SELECT", Tables: []TableRef{r("a")}}}},
		{"cte cannot hide a table outside its scope",
			"SELECT * FROM users WHERE id IN (WITH users AS (SELECT 1) SELECT * FROM users)",
			[]Statement{{Tag: "SELECT", Tables: []TableRef{r("users")}}}},
		{"non-recursive cte reads the real table",
			"WITH users AS (SELECT * FROM users) SELECT * FROM users",
			[]Statement{{Tag: "SELECT", Tables: []TableRef{r("users")}}}},
		{"functions, schema kept", "SELECT lower(email), pg_catalog.pg_read_file('x') FROM s.c",
			[]Statement{{Tag: "SELECT", Functions: []string{"lower", "pg_catalog.pg_read_file"},
				Tables: []TableRef{{Schema: "s", Name: "c", Access: AccessRead}}}}},
		{"insert select", "INSERT INTO a SELECT * FROM b", []Statement{
			{Tag: "INSERT", Writes: true, Tables: []TableRef{w("a"), r("b")}}}},
		{"drop and truncate", "DROP TABLE a, s.b; TRUNCATE c", []Statement{
			{Tag: "DROP TABLE", Writes: true, DDL: true,
				Tables: []TableRef{w("a"), {Schema: "s", Name: "b", Access: AccessWrite}}},
			{Tag: "TRUNCATE TABLE", Writes: true, Tables: []TableRef{w("c")}}}},
		{"ddl", "CREATE TABLE x (id int); ALTER TABLE x ADD c int; CREATE INDEX ON x (id)",
			[]Statement{{Tag: "CREATE TABLE", Writes: true, DDL: true},
				{Tag: "ALTER TABLE", Writes: true, DDL: true},
				{Tag: "CREATE INDEX", Writes: true, DDL: true}}},
		{"select into", "SELECT * INTO n FROM o", []Statement{
			{Tag: "SELECT INTO", Writes: true, DDL: true, Tables: []TableRef{w("n"), r("o")}}}},
		{"copy", "COPY t FROM STDIN; COPY t TO STDOUT; COPY t TO '/tmp/x'", []Statement{
			{Tag: "COPY", Writes: true, Tables: []TableRef{w("t")}},
			{Tag: "COPY", Tables: []TableRef{r("t")}},
			{Tag: "COPY", Writes: true, Tables: []TableRef{r("t")}}}},
		{"copy of a delete", "COPY (DELETE FROM t RETURNING id) TO STDOUT", []Statement{
			{Tag: "COPY", Writes: true, Nested: []Statement{
				{Tag: "DELETE", Writes: true}}}}},
		{"session statements", "BEGIN; SET search_path = x; SHOW all; COMMIT", []Statement{
			{Tag: "BEGIN"}, {Tag: "SET"}, {Tag: "SHOW"}, {Tag: "COMMIT"}}},
		{"do and call may write", "DO $$ BEGIN END $$; CALL p()", []Statement{
			{Tag: "DO", Writes: true}, {Tag: "CALL", Writes: true}}},
		{"empty statements skipped", ";;SELECT 1;;", []Statement{{Tag: "SELECT"}}},
	} {
		t.Run(c.name, c.run)
	}
}

func TestAnalyzeSyntaxError(t *testing.T) {
	if _, err := Analyze("DELETE FORM t"); err == nil {
		t.Fatal("Analyze accepted a syntax error")
	}
}
