package postgres

import (
	"bytes"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/policy"
)

// Masking rewrites result values on their way to the client, keeping the
// message framing valid: a DataRow (or a COPY row) is decoded, its values
// replaced, and encoded again with its new length.
//
// A column rule matches a result column by name; a rule that names a
// table also needs the statement to read that table (RowDescription
// carries table OIDs, not names, and vigil does not query the catalog).
// A rule with only a detector looks at every text value; a rule with a
// column and a detector masks only the values of that column the detector
// recognises. Values of types other than text (numbers, dates, binary
// formats) are replaced by NULL whatever the strategy: any other rewrite
// would break the client's decoding.

// Type OIDs whose binary format is their text.
const (
	oidText    = 25
	oidVarchar = 1043
	oidBpchar  = 1042
	oidName    = 19
	oidJSON    = 114
)

// maskPlan says how to rewrite the rows of one command.
type maskPlan struct {
	cols []colPlan
	// detectors are the rules that name no column: they scan every value.
	detectors []policy.MaskRule
	counts    map[[2]string]*audit.Masked // (column, rule) → count
	order     [][2]string
}

type colPlan struct {
	name string
	// text is set for text types, whose values (in either format) are
	// the text itself and can take any strategy.
	text bool
	rule *policy.MaskRule
}

// newMaskPlan builds the plan for rows shaped by fields; formats are the
// result format codes of the Bind (none for text). tables are what the
// statement reads. It returns nil when nothing can match.
func newMaskPlan(rules []policy.MaskRule, fields []pgproto3.FieldDescription, formats []int16,
	tables []string) *maskPlan {
	if len(rules) == 0 {
		return nil
	}
	p := &maskPlan{counts: map[[2]string]*audit.Masked{}}
	for i := range rules {
		if rules[i].Detector != "" && rules[i].Column == "" {
			p.detectors = append(p.detectors, rules[i])
		}
	}
	p.cols = make([]colPlan, len(fields))
	matched := len(p.detectors) > 0
	for i, f := range fields {
		cp := colPlan{name: string(f.Name), text: textual(f.DataTypeOID) ||
			(f.DataTypeOID == 0 && formatOf(formats, i, f.Format) == formatText)}
		for j := range rules {
			r := &rules[j]
			if r.Column != "" && strings.EqualFold(r.Column, cp.name) &&
				(r.Table == "" || readsTable(tables, r.Table)) {
				cp.rule = r
				matched = true
				break
			}
		}
		p.cols[i] = cp
	}
	if !matched {
		return nil
	}
	return p
}

// formatOf is a column's format code: none given means text, one applies
// to every column.
func formatOf(formats []int16, i int, described int16) int16 {
	switch {
	case len(formats) == 0:
		return described
	case len(formats) == 1:
		return formats[0]
	case i < len(formats):
		return formats[i]
	}
	return formatText
}

func textual(oid uint32) bool {
	switch oid {
	case oidText, oidVarchar, oidBpchar, oidName, oidJSON:
		return true
	}
	return false
}

func readsTable(tables []string, want string) bool {
	for _, t := range tables {
		if strings.EqualFold(t, want) || strings.HasSuffix(strings.ToLower(t),
			"."+strings.ToLower(want)) {
			return true
		}
	}
	return false
}

// value masks one value; it returns the new value (nil for NULL) and
// whether it changed.
func (p *maskPlan) value(i int, v []byte) ([]byte, bool) {
	if v == nil {
		return v, false
	}
	var cp *colPlan
	if i < len(p.cols) {
		cp = &p.cols[i]
	} else {
		// Rows wider than their description (COPY rows of unknown shape):
		// detectors still look at every value.
		cp = &colPlan{name: "column " + itoa(i+1), text: true}
	}
	if r := cp.rule; r != nil {
		if r.Detector == "" {
			return p.apply(cp, r.Column, *r, v), true
		}
		if !cp.text {
			return v, false
		}
		return p.detect(cp, r.Column, *r, v)
	}
	if !cp.text {
		return v, false
	}
	// Every detector looks at the value, each at what the ones before it
	// left: a text may hold an e-mail address and a card number.
	changed := false
	for _, d := range p.detectors {
		nv, ok := p.detect(cp, d.Detector, d, v)
		if !ok {
			continue
		}
		if nv == nil {
			return nil, true
		}
		v, changed = nv, true
	}
	return v, changed
}

// detect masks what rule r's detector finds in v: the whole value, or the
// parts of a longer text ("call bob@example.org").
func (p *maskPlan) detect(cp *colPlan, name string, r policy.MaskRule, v []byte) ([]byte, bool) {
	if policy.Detect(r.Detector, v) {
		return p.apply(cp, name, r, v), true
	}
	found := policy.Find(r.Detector, v)
	if len(found) == 0 {
		return v, false
	}
	p.count(cp, name, r, int64(len(found)))
	masked, null := policy.MaskFound(r.Strategy, v, found)
	if null {
		return nil, true
	}
	return masked, true
}

func (p *maskPlan) count(cp *colPlan, rule string, r policy.MaskRule, n int64) {
	key := [2]string{cp.name, rule}
	m := p.counts[key]
	if m == nil {
		m = &audit.Masked{Column: cp.name, Strategy: r.Strategy, Rule: rule}
		p.counts[key] = m
		p.order = append(p.order, key)
	}
	m.Values += n
}

func (p *maskPlan) apply(cp *colPlan, rule string, r policy.MaskRule, v []byte) []byte {
	p.count(cp, rule, r, 1)
	if !cp.text {
		return nil
	}
	masked, null := policy.MaskValue(r.Strategy, v)
	if null {
		return nil
	}
	return masked
}

// row rewrites a DataRow; it returns raw itself when nothing changed.
func (p *maskPlan) row(out, raw []byte) []byte {
	var dr pgproto3.DataRow
	if err := dr.Decode(body('D', raw)); err != nil {
		return append(out, raw...)
	}
	changed := false
	for i, v := range dr.Values {
		nv, ok := p.value(i, v)
		if ok {
			dr.Values[i] = nv
			changed = true
		}
	}
	if !changed {
		return append(out, raw...)
	}
	b, err := dr.Encode(out)
	if err != nil {
		return append(out, raw...)
	}
	return b
}

// copyRow rewrites one CopyData row of a text-format COPY TO STDOUT,
// whose columns vigil learnt before the COPY ran (see copyout.go).
func (p *maskPlan) copyRow(out, raw []byte) []byte {
	data := body('d', raw)
	line := bytes.TrimSuffix(data, []byte("\n"))
	fields := bytes.Split(line, []byte("\t"))
	changed := false
	for i, f := range fields {
		if string(f) == `\N` {
			continue
		}
		nv, ok := p.value(i, unescapeCopy(f))
		if !ok {
			continue
		}
		changed = true
		if nv == nil {
			fields[i] = []byte(`\N`)
		} else {
			fields[i] = escapeCopy(nv)
		}
	}
	if !changed {
		return append(out, raw...)
	}
	row := append(bytes.Join(fields, []byte("\t")), '\n')
	b, err := (&pgproto3.CopyData{Data: row}).Encode(out)
	if err != nil {
		return append(out, raw...)
	}
	return b
}

// escapeCopy keeps a masked value from breaking COPY's text format.
func escapeCopy(v []byte) []byte {
	if !bytes.ContainsAny(v, "\t\n\r\\") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`)
	return []byte(r.Replace(string(v)))
}

// summary lists the masked values per column and rule, in first-seen order.
func (p *maskPlan) summary() []audit.Masked {
	if p == nil || len(p.order) == 0 {
		return nil
	}
	out := make([]audit.Masked, len(p.order))
	for i, k := range p.order {
		out[i] = *p.counts[k]
	}
	return out
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}
