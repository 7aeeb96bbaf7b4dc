package postgres

import (
	"bytes"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// stream is a client byte stream: a startup packet and three messages,
// one of them larger than a typical chunk.
func stream(t testing.TB) []byte {
	t.Helper()
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "agent", "database": "db"}}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = (&pgproto3.Query{String: "SELECT 1"}).Encode(b)
	b, _ = (&pgproto3.CopyData{Data: bytes.Repeat([]byte("x"), 20000)}).Encode(b)
	b, _ = (&pgproto3.Terminate{}).Encode(b)
	return b
}

// frames feeds the stream in chunks of size n and returns the messages.
func frames(t testing.TB, b []byte, n int) (types []byte, sizes []int) {
	t.Helper()
	f := framer{untyped: true, max: DefaultMaxMessage}
	for len(b) > 0 {
		k := min(n, len(b))
		f.feed(b[:k])
		b = b[k:]
		for {
			typ, raw, ok, err := f.next()
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			if typ == 0 {
				f.untyped = false
			}
			types = append(types, typ)
			sizes = append(sizes, len(raw))
		}
	}
	if f.pending() != 0 {
		t.Fatalf("%d bytes left over", f.pending())
	}
	return types, sizes
}

func TestFramerEveryChunkSize(t *testing.T) {
	b := stream(t)
	wantTypes, wantSizes := frames(t, b, len(b))
	if string(wantTypes) != "\x00QdX" {
		t.Fatalf("types %q", wantTypes)
	}
	for _, n := range []int{1, 2, 3, 4, 5, 7, 8, 13, 100, 8191, 8192, 20001} {
		types, sizes := frames(t, b, n)
		if !bytes.Equal(types, wantTypes) {
			t.Fatalf("chunk %d: types %q, want %q", n, types, wantTypes)
		}
		for i := range sizes {
			if sizes[i] != wantSizes[i] {
				t.Fatalf("chunk %d: message %d is %d bytes, want %d", n, i, sizes[i], wantSizes[i])
			}
		}
	}
}

func TestFramerRejectsBadLengths(t *testing.T) {
	cases := []struct {
		name    string
		untyped bool
		in      []byte
	}{
		{"length below header", false, []byte{'Q', 0, 0, 0, 3}},
		{"startup too short", true, []byte{0, 0, 0, 4, 0, 0, 0, 0}},
		{"startup too long", true, []byte{0, 0, 0x30, 0, 0, 3, 0, 0}},
		{"over the cap", false, []byte{'d', 0x7f, 0xff, 0xff, 0xff}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := framer{untyped: c.untyped, max: 1 << 20}
			f.feed(c.in)
			_, _, _, err := f.next()
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want ErrProtocol", err)
			}
		})
	}
}

func FuzzFramer(f *testing.F) {
	f.Add(stream(f), 7)
	f.Add([]byte{'Q', 0, 0, 0, 4}, 1)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		if n <= 0 {
			n = 1
		}
		fr := framer{untyped: true, max: 1 << 16}
		total := 0
		for len(b) > 0 {
			k := min(n, len(b))
			fr.feed(b[:k])
			b = b[k:]
			for {
				typ, raw, ok, err := fr.next()
				if err != nil || !ok {
					break
				}
				if typ == 0 {
					fr.untyped = false
				}
				if len(raw) < 5 && typ != 0 {
					t.Fatalf("message of %d bytes handed out", len(raw))
				}
				total += len(raw)
			}
		}
		_ = total
	})
}
