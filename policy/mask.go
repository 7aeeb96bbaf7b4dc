package policy

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"sync/atomic"
	"unicode"
	"unicode/utf8"
)

// Detectors are the value detectors a MaskRule may name.
var Detectors = []string{"email", "card", "national_id", "phone", "iban", "jwt", "api_key"}

// Strategies are the masking strategies a MaskRule may name.
var Strategies = []string{"redact", "partial", "hash", "null"}

func validDetector(s string) bool { return contains(Detectors, s) }
func validStrategy(s string) bool { return contains(Strategies, s) }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

var (
	emailRe = regexp.MustCompile(
		`^[A-Za-z0-9.!#$%&'*+/=?^_{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?` +
			`(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}$`)
	// US social security number, without the never-issued ranges.
	ssnRe = regexp.MustCompile(`^(\d{3})-(\d{2})-(\d{4})$`)
	// UK National Insurance number.
	ninoRe = regexp.MustCompile(`^[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]$`)
	// E.164 with optional separators, or a North American number written
	// with separators.
	phoneIntlRe = regexp.MustCompile(`^\+[1-9][0-9 ().-]{6,20}$`)
	phoneNARe   = regexp.MustCompile(`^\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}$`)
	ibanRe      = regexp.MustCompile(`^[A-Z]{2}\d{2}[A-Z0-9]{11,30}$`)
	jwtRe       = regexp.MustCompile(`^[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*$`)
	apiKeyRes   = []*regexp.Regexp{
		regexp.MustCompile(`^(?:AKIA|ASIA)[0-9A-Z]{16}$`),                   // AWS access key id
		regexp.MustCompile(`^gh[pousr]_[A-Za-z0-9]{36,255}$`),               // GitHub token
		regexp.MustCompile(`^github_pat_[A-Za-z0-9_]{22,255}$`),             // GitHub fine-grained
		regexp.MustCompile(`^xox[abposr]-[A-Za-z0-9-]{10,}$`),               // Slack
		regexp.MustCompile(`^(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}$`), // Stripe
		regexp.MustCompile(`^sk-[A-Za-z0-9_-]{20,}$`),                       // OpenAI, Anthropic
		regexp.MustCompile(`^AIza[0-9A-Za-z_-]{35}$`),                       // Google API key
		regexp.MustCompile(`^glpat-[A-Za-z0-9_-]{20,}$`),                    // GitLab
	}
)

// Detect reports whether value, as a whole (surrounding spaces ignored),
// has the shape of what detector names: "email", "card" (13 to 19 digits,
// optionally grouped by spaces or dashes, passing the Luhn check),
// "national_id" (a US SSN or a UK National Insurance number), "phone"
// (international +… or North American with separators), "iban" (ISO 13616
// with a valid mod-97 checksum), "jwt" (three base64url parts whose header is
// a JSON object naming "alg") or "api_key" (well-known key formats of AWS,
// GitHub, GitLab, Slack, Stripe, OpenAI, Anthropic and Google). An unknown
// detector detects nothing. Values inside longer text are not found.
func Detect(detector string, value []byte) bool {
	v := bytes.TrimSpace(value)
	if len(v) == 0 || len(v) > 4096 || !utf8.Valid(v) {
		return false
	}
	switch detector {
	case "email":
		return emailRe.Match(v)
	case "card":
		return isCard(v)
	case "national_id":
		return isSSN(v) || ninoRe.Match(bytes.ToUpper(v))
	case "phone":
		return phoneIntlRe.Match(v) && digits(v) >= 8 && digits(v) <= 15 ||
			phoneNARe.Match(v)
	case "iban":
		return isIBAN(v)
	case "jwt":
		return isJWT(v)
	case "api_key":
		for _, re := range apiKeyRes {
			if re.Match(v) {
				return true
			}
		}
	}
	return false
}

func digits(v []byte) int {
	n := 0
	for _, c := range v {
		if c >= '0' && c <= '9' {
			n++
		}
	}
	return n
}

// isCard checks length, allowed separators and the Luhn checksum.
func isCard(v []byte) bool {
	var ds []byte
	for _, c := range v {
		switch {
		case c >= '0' && c <= '9':
			ds = append(ds, c-'0')
		case c == ' ' || c == '-':
		default:
			return false
		}
	}
	if len(ds) < 13 || len(ds) > 19 {
		return false
	}
	sum := 0
	for i := range ds {
		d := int(ds[len(ds)-1-i])
		if i%2 == 1 {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
	}
	return sum%10 == 0
}

func isSSN(v []byte) bool {
	m := ssnRe.FindSubmatch(v)
	if m == nil {
		return false
	}
	area := string(m[1])
	return area != "000" && area != "666" && area[0] != '9' &&
		string(m[2]) != "00" && string(m[3]) != "0000"
}

// isIBAN checks the shape and the ISO 7064 mod-97 checksum.
func isIBAN(v []byte) bool {
	s := bytes.ToUpper(bytes.ReplaceAll(v, []byte(" "), nil))
	if !ibanRe.Match(s) {
		return false
	}
	rearranged := append(append([]byte{}, s[4:]...), s[:4]...)
	rem := 0
	for _, c := range rearranged {
		if c >= 'A' && c <= 'Z' {
			n := int(c-'A') + 10
			rem = (rem*100 + n) % 97
		} else {
			rem = (rem*10 + int(c-'0')) % 97
		}
	}
	return rem == 1
}

func isJWT(v []byte) bool {
	if !jwtRe.Match(v) {
		return false
	}
	header := v[:bytes.IndexByte(v, '.')]
	raw, err := base64.RawURLEncoding.DecodeString(string(header))
	if err != nil {
		return false
	}
	var h map[string]any
	if json.Unmarshal(raw, &h) != nil {
		return false
	}
	_, ok := h["alg"]
	return ok
}

// hashKey keys the hash strategy, so that masked values of small domains
// (national ids, phone numbers) cannot be reversed by hashing every
// candidate. Without SetHashKey it is random per process: equal values hash
// equally within one vigil process, not across restarts or replicas.
var hashKey atomic.Pointer[[]byte]

func init() {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic("policy: no randomness for the masking key: " + err.Error())
	}
	hashKey.Store(&k)
}

// MinHashKey is the shortest key SetHashKey accepts.
const MinHashKey = 16

// SetHashKey keys the hash strategy with key (policy.hash_key_file), so
// that equal values hash equally across restarts and replicas sharing it.
func SetHashKey(key []byte) error {
	if len(key) < MinHashKey {
		return fmt.Errorf("policy: the masking hash key has %d bytes; want at least %d",
			len(key), MinHashKey)
	}
	k := bytes.Clone(key)
	hashKey.Store(&k)
	return nil
}

// Redacted is what the redact strategy puts in place of a value.
const Redacted = "[REDACTED]"

// MaskValue masks one value with strategy: "redact" replaces it with
// Redacted; "partial" keeps the first character of an e-mail's local part
// and its domain ("j***@example.com"), otherwise the last four letters or
// digits when the value has at least eight, masking the others with '*' and
// keeping separators; "hash" gives "hash:" and 16 hex digits of a keyed
// SHA-256 (equal values give equal results within the process); "null"
// returns isNull. An unknown strategy redacts. The result is a new slice;
// value is not modified.
func MaskValue(strategy string, value []byte) (masked []byte, isNull bool) {
	switch strategy {
	case "null":
		return nil, true
	case "partial":
		return partial(value), false
	case "hash":
		mac := hmac.New(sha256.New, *hashKey.Load())
		mac.Write(value)
		sum := mac.Sum(nil)
		return []byte("hash:" + hex.EncodeToString(sum[:8])), false
	}
	return []byte(Redacted), false
}

func partial(value []byte) []byte {
	v := bytes.TrimSpace(value)
	if !utf8.Valid(v) {
		return []byte(Redacted)
	}
	if at := bytes.LastIndexByte(v, '@'); at > 0 && emailRe.Match(v) {
		r, _ := utf8.DecodeRune(v)
		out := append([]byte(string(r)), "***"...)
		return append(out, v[at:]...)
	}
	runes := []rune(string(v))
	alnum := 0
	for _, r := range runes {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			alnum++
		}
	}
	keep := 0
	if alnum >= 8 {
		keep = 4
	}
	out := make([]rune, len(runes))
	seen := 0
	for i := len(runes) - 1; i >= 0; i-- {
		r := runes[i]
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			out[i] = r
			continue
		}
		if seen < keep {
			out[i] = r
		} else {
			out[i] = '*'
		}
		seen++
	}
	return []byte(string(out))
}
