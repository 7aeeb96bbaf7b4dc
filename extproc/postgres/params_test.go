package postgres

import (
	"testing"

	"github.com/vigilaudit/vigil/audit"
)

func TestRenderParameters(t *testing.T) {
	values := [][]byte{
		[]byte("one"), nil, {0, 0, 0, 42}, {0xde, 0xad}, []byte("five"),
		[]byte("6"), []byte("7"), []byte("8"), []byte("9"), []byte("ten"),
	}
	formats := []int16{0, 0, 1, 1, 0, 0, 0, 0, 0, 0}
	oids := []uint32{25, 25, oidInt4, oidBytea}
	got := renderParameters(formats, values, oids)
	want := []audit.Parameter{
		{Format: "text", Value: "one", TypeOID: 25},
		{Format: "text", Null: true, TypeOID: 25},
		{Format: "binary", Value: "42", TypeOID: oidInt4},
		{Format: "binary", Value: `\xdead`, TypeOID: oidBytea},
		{Format: "text", Value: "five"},
	}
	for i, w := range want {
		if got[i] != w {
			t.Errorf("$%d = %+v, want %+v", i+1, got[i], w)
		}
	}
	if got[9].Value != "ten" {
		t.Errorf("$10 = %+v, want ten", got[9])
	}
}

func TestRenderParametersOneFormatForAll(t *testing.T) {
	got := renderParameters([]int16{1}, [][]byte{{1}, {0, 0, 0, 0, 0, 0, 0, 7}},
		[]uint32{oidBool, oidInt8})
	if got[0].Value != "true" || got[1].Value != "7" || got[1].Format != "binary" {
		t.Fatalf("got %+v", got)
	}
}

func TestTagRows(t *testing.T) {
	for tag, n := range map[string]int64{"INSERT 0 5": 5, "SELECT 3": 3, "COPY 100000": 100000,
		"CREATE TABLE": 0, "BEGIN": 0, "": 0} {
		if got := tagRows(tag); got != n {
			t.Errorf("tagRows(%q) = %d, want %d", tag, got, n)
		}
	}
}

func TestMD5Password(t *testing.T) {
	// From the PostgreSQL protocol's definition:
	// concat('md5', md5(concat(md5(concat(password, username)), random-salt))).
	got := md5Password("secret", "alice", [4]byte{1, 2, 3, 4})
	if len(got) != 35 || got[:3] != "md5" {
		t.Fatalf("got %q", got)
	}
	if got == md5Password("secret", "alice", [4]byte{1, 2, 3, 5}) {
		t.Fatal("salt ignored")
	}
}
