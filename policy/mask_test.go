package policy

import (
	"strings"
	"testing"
)

func TestDetect(t *testing.T) {
	for _, c := range []struct {
		detector, value string
		want            bool
	}{
		{"email", "ana@example.com", true},
		{"email", " ana.b+x@mail.example.co.uk ", true},
		{"email", "ana@localhost", false},
		{"email", "not an email", false},
		{"card", "4111 1111 1111 1111", true},
		{"card", "4111-1111-1111-1111", true},
		{"card", "5500000000000004", true},
		{"card", "4111 1111 1111 1112", false}, // Luhn fails
		{"card", "123456789012", false},        // too short
		{"card", "4111x1111x1111x1111", false},
		{"national_id", "123-45-6789", true},
		{"national_id", "000-45-6789", false},
		{"national_id", "666-45-6789", false},
		{"national_id", "AB123456C", true},
		{"national_id", "12345", false},
		{"phone", "+44 20 7946 0958", true},
		{"phone", "(555) 123-4567", true},
		{"phone", "5551234567", false},
		{"phone", "+1", false},
		{"iban", "GB82 WEST 1234 5698 7654 32", true},
		{"iban", "DE89370400440532013000", true},
		{"iban", "GB82 WEST 1234 5698 7654 33", false}, // checksum fails
		{"iban", "hello", false},
		{"jwt", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2ln", true},
		{"jwt", "abcdefghijk.abc.def", false}, // header is not JSON
		{"jwt", "a.b", false},
		{"api_key", "AKIAIOSFODNN7EXAMPLE", true},
		{"api_key", "ghp_" + strings.Repeat("a", 36), true},
		{"api_key", "sk_live_" + strings.Repeat("Z", 24), true},
		{"api_key", "sk-proj-" + strings.Repeat("x", 40), true},
		{"api_key", "AKIA123", false},
		{"api_key", "hello world", false},
		{"unknown", "ana@example.com", false},
	} {
		if got := Detect(c.detector, []byte(c.value)); got != c.want {
			t.Errorf("Detect(%q, %q) = %v, want %v", c.detector, c.value, got, c.want)
		}
	}
}

func TestMaskValue(t *testing.T) {
	for _, c := range []struct {
		strategy, value, want string
	}{
		{"redact", "4111 1111 1111 1111", Redacted},
		{"partial", "ana@example.com", "a***@example.com"},
		{"partial", "4111 1111 1111 1111", "**** **** **** 1111"},
		{"partial", "+44 20 7946 0958", "+** ** **** 0958"},
		{"partial", "short", "*****"},
		{"partial", "Ünïcødé-chars", "*******-*hars"},
		{"nonsense", "x", Redacted},
	} {
		got, isNull := MaskValue(c.strategy, []byte(c.value))
		if isNull || string(got) != c.want {
			t.Errorf("MaskValue(%q, %q) = %q, %v; want %q", c.strategy, c.value, got, isNull, c.want)
		}
	}

	if got, isNull := MaskValue("null", []byte("x")); !isNull || got != nil {
		t.Errorf("MaskValue(null) = %q, %v; want nil, true", got, isNull)
	}

	a, _ := MaskValue("hash", []byte("123-45-6789"))
	b, _ := MaskValue("hash", []byte("123-45-6789"))
	c, _ := MaskValue("hash", []byte("123-45-6780"))
	if string(a) != string(b) || string(a) == string(c) || !strings.HasPrefix(string(a), "hash:") ||
		len(a) != len("hash:")+16 || strings.Contains(string(a), "6789") {
		t.Errorf("hash: %q %q %q: want equal for equal values, different otherwise", a, b, c)
	}

	in := []byte("ana@example.com")
	MaskValue("partial", in)
	if string(in) != "ana@example.com" {
		t.Errorf("MaskValue modified its input: %q", in)
	}
}

// TestSetHashKey: with a configured key the hash strategy gives the same
// result in every process sharing it, a different one under another key;
// short keys are refused.
func TestSetHashKey(t *testing.T) {
	old := *hashKey.Load()
	t.Cleanup(func() { hashKey.Store(&old) })
	if err := SetHashKey([]byte("short")); err == nil {
		t.Error("a 5-byte key was accepted")
	}
	hashOf := func(key string) string {
		if err := SetHashKey([]byte(key)); err != nil {
			t.Fatal(err)
		}
		v, _ := MaskValue("hash", []byte("ann@example.com"))
		return string(v)
	}
	a1, b, a2 := hashOf("key-one-0123456789"), hashOf("key-two-0123456789"),
		hashOf("key-one-0123456789")
	if a1 != a2 || a1 == b || !strings.HasPrefix(a1, "hash:") {
		t.Errorf("hashes %q, %q, %q: want equal under one key, different under another", a1, a2, b)
	}
}
