package postgres

import (
	"bytes"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// COPY ... TO STDOUT carries no column names, so column mask rules cannot
// find their columns in its rows. When such rules apply, vigil learns the
// names from the server before the COPY runs: ahead of the client's Query
// it sends Parse of the equivalent SELECT into the unnamed statement (a
// simple Query destroys that statement anyway), Describe and Sync, and
// keeps every answer to them from the client.

// copyTo is what vigil needs to know of a COPY TO STDOUT.
type copyTo struct {
	// query is a SELECT with the same columns as the COPY's rows.
	query string
	// binary is set for FORMAT binary, whose rows vigil cannot mask.
	binary bool
}

// parseCopyTo recognises a COPY ... TO statement; ok is false for
// anything else.
func parseCopyTo(sql string) (c copyTo, ok bool) {
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.Stmts) != 1 {
		return c, false
	}
	cs := tree.Stmts[0].Stmt.GetCopyStmt()
	if cs == nil || cs.IsFrom {
		return c, false
	}
	for _, o := range cs.Options {
		if d := o.GetDefElem(); d != nil && strings.EqualFold(d.Defname, "format") {
			if s := d.Arg.GetString_(); s != nil && strings.EqualFold(s.Sval, "binary") {
				c.binary = true
			}
		}
	}
	if cs.Query != nil {
		q, err := pg_query.Deparse(&pg_query.ParseResult{Stmts: []*pg_query.RawStmt{
			{Stmt: cs.Query}}})
		if err != nil {
			return c, false
		}
		c.query = q
		return c, true
	}
	if cs.Relation == nil {
		return c, false
	}
	cols := "*"
	if len(cs.Attlist) > 0 {
		names := make([]string, 0, len(cs.Attlist))
		for _, a := range cs.Attlist {
			if s := a.GetString_(); s != nil {
				names = append(names, quoteIdent(s.Sval))
			}
		}
		cols = strings.Join(names, ", ")
	}
	rel := quoteIdent(cs.Relation.Relname)
	if cs.Relation.Schemaname != "" {
		rel = quoteIdent(cs.Relation.Schemaname) + "." + rel
	}
	c.query = "SELECT " + cols + " FROM " + rel
	return c, true
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// describeFirst returns the messages that ask the server for the columns
// of q, ahead of the client's request.
func describeFirst(q string) []byte {
	b, _ := (&pgproto3.Parse{Query: q}).Encode(nil)
	b, _ = (&pgproto3.Describe{ObjectType: 'S'}).Encode(b)
	b, _ = (&pgproto3.Sync{}).Encode(b)
	return b
}

// hasColumnRules reports whether rules name columns.
func hasColumnRules(c *command) bool {
	for _, r := range c.mask {
		if r.Column != "" {
			return true
		}
	}
	return false
}

// unescapeCopy decodes a field of COPY's text format.
func unescapeCopy(f []byte) []byte {
	if bytes.IndexByte(f, '\\') < 0 {
		return f
	}
	out := make([]byte, 0, len(f))
	for i := 0; i < len(f); i++ {
		if f[i] != '\\' || i+1 == len(f) {
			out = append(out, f[i])
			continue
		}
		i++
		switch f[i] {
		case 't':
			out = append(out, '\t')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'v':
			out = append(out, '\v')
		default:
			out = append(out, f[i])
		}
	}
	return out
}
