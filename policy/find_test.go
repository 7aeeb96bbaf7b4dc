package policy

import (
	"strings"
	"testing"
)

func TestFindInsideText(t *testing.T) {
	cases := []struct {
		detector, in, want string
	}{
		{"email", "call bob@example.org after 5", "call b***@example.org after 5"},
		{"card", "paid with 4111 1111 1111 1111 today", "paid with [REDACTED] today"},
		{"card", "order 4111111111111112 (bad checksum)", "order 4111111111111112 (bad checksum)"},
		{"iban", "to GB82 WEST 1234 5698 7654 32 please", "to [REDACTED] please"},
		{"email", "a@example.com and b@example.net", "a***@example.com and b***@example.net"},
		{"api_key", "key=AKIAABCDEFGHIJKLMNOP;", "key=[REDACTED];"},
	}
	for _, c := range cases {
		strategy := "redact"
		if c.detector == "email" {
			strategy = "partial"
		}
		got, _ := MaskFound(strategy, []byte(c.in), Find(c.detector, []byte(c.in)))
		if string(got) != c.want {
			t.Errorf("%s in %q: got %q, want %q", c.detector, c.in, got, c.want)
		}
	}
}

func TestFindCardsInRuns(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"4111111111111111 5500005555555559", []string{"4111111111111111", "5500005555555559"}},
		{"4111111111111111,5500005555555559", []string{"4111111111111111", "5500005555555559"}},
		{"order 99 4111-1111-1111-1111 paid", []string{"4111-1111-1111-1111"}},
		{"12345678901234567890", nil},
		{"ref 004111111111111111", []string{"004111111111111111"}},
		{"1234 4111111111111111", []string{"4111111111111111"}},
	} {
		var got []string
		for _, r := range Find("card", []byte(tc.in)) {
			got = append(got, tc.in[r[0]:r[1]])
		}
		if strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("Find(card, %q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}
