package policy

import (
	"bytes"
	"regexp"
	"unicode/utf8"
)

// Unanchored forms of the detectors, for values found inside longer text
// ("call bob@example.org after 5"). Each candidate is confirmed with
// Detect, so checksums (Luhn, IBAN mod-97, JWT header) still apply.
var findRes = map[string][]*regexp.Regexp{
	"email": {regexp.MustCompile(`[A-Za-z0-9.!#$%&'*+/=?^_{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*` +
		`[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}`)},
	"card": {regexp.MustCompile(`\d(?:[ -]?\d){12,18}`)},
	"national_id": {regexp.MustCompile(`\b\d{3}-\d{2}-\d{4}\b`),
		regexp.MustCompile(`(?i)\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b`)},
	"phone": {regexp.MustCompile(`\+[1-9][0-9 ().-]{6,20}\d`),
		regexp.MustCompile(`\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b`)},
	"iban": {regexp.MustCompile(`\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b`)},
	"jwt":  {regexp.MustCompile(`[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*`)},
	"api_key": {regexp.MustCompile(`\b(?:AKIA|ASIA)[0-9A-Z]{16}\b`),
		regexp.MustCompile(`\bgh[pousr]_[A-Za-z0-9]{36,255}\b`),
		regexp.MustCompile(`\bgithub_pat_[A-Za-z0-9_]{22,255}\b`),
		regexp.MustCompile(`\bxox[abposr]-[A-Za-z0-9-]{10,}`),
		regexp.MustCompile(`\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b`),
		regexp.MustCompile(`\bsk-[A-Za-z0-9_-]{20,}`),
		regexp.MustCompile(`\bAIza[0-9A-Za-z_-]{35}`),
		regexp.MustCompile(`\bglpat-[A-Za-z0-9_-]{20,}`)},
}

// maxFindLen bounds the text Find scans, so a huge value cannot make
// masking slow; longer values are scanned in their first maxFindLen bytes
// and the caller treats the rest as unknown.
const maxFindLen = 1 << 20

// Find returns the byte ranges of value that detector recognises, inside
// longer text as well as the whole value, in order and not overlapping.
// Every range passes Detect on its own.
func Find(detector string, value []byte) [][2]int {
	if len(value) == 0 || !utf8.Valid(value) {
		return nil
	}
	if len(value) > maxFindLen {
		value = value[:maxFindLen]
	}
	if detector == "card" {
		return findCards(value)
	}
	var out [][2]int
	for _, re := range findRes[detector] {
		for _, m := range re.FindAllIndex(value, -1) {
			if Detect(detector, value[m[0]:m[1]]) && !overlaps(out, m[0], m[1]) {
				out = append(out, [2]int{m[0], m[1]})
			}
		}
	}
	sortRanges(out)
	return out
}

func overlaps(rs [][2]int, a, b int) bool {
	for _, r := range rs {
		if a < r[1] && r[0] < b {
			return true
		}
	}
	return false
}

func sortRanges(rs [][2]int) {
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && rs[j][0] < rs[j-1][0]; j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
}

// MaskFound masks the ranges Find returned inside value with strategy and
// returns the new value; "null" makes the whole value NULL (isNull).
func MaskFound(strategy string, value []byte, ranges [][2]int) (masked []byte, isNull bool) {
	if strategy == "null" {
		return nil, true
	}
	var b bytes.Buffer
	last := 0
	for _, r := range ranges {
		b.Write(value[last:r[0]])
		m, _ := MaskValue(strategy, value[r[0]:r[1]])
		b.Write(m)
		last = r[1]
	}
	b.Write(value[last:])
	return b.Bytes(), false
}

// cardRunRe matches a run of digits with single spaces or dashes between.
var cardRunRe = regexp.MustCompile(`\d(?:[ -]?\d)*`)

// findCards finds card numbers in runs of digits, where a number is one
// or more consecutive groups (digits between single spaces or dashes) of
// 13 to 19 digits in all that Detect accepts (Luhn). "4111111111111111
// 5500005555555559" holds two numbers; a 20-digit string holds none; a
// number never starts or ends inside a group, so a long digit string does
// not hide one by chance of its checksum.
func findCards(value []byte) [][2]int {
	var out [][2]int
	for _, run := range cardRunRe.FindAllIndex(value, -1) {
		type group struct{ start, end, digits int }
		var gs []group
		for i := run[0]; i < run[1]; {
			j := i
			for j < run[1] && value[j] >= '0' && value[j] <= '9' {
				j++
			}
			gs = append(gs, group{i, j, j - i})
			i = j + 1 // past the separator
		}
		for a := 0; a < len(gs); {
			taken := false
			n := 0
			end := a
			for end < len(gs) && n+gs[end].digits <= 19 {
				n += gs[end].digits
				end++
			}
			// Longest first: gs[a:end] holds at most 19 digits.
			for e := end; e > a; e-- {
				total := 0
				for _, g := range gs[a:e] {
					total += g.digits
				}
				if total < 13 {
					break
				}
				if r := [2]int{gs[a].start, gs[e-1].end}; Detect("card", value[r[0]:r[1]]) {
					out = append(out, r)
					a, taken = e, true
					break
				}
			}
			if !taken {
				a++
			}
		}
	}
	return out
}
