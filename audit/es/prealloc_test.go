package es

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The shipper's reader treats the zero-filled tail of the segment being
// written as not yet written: no damaged line, and what is written later
// is read from the same cursor.
func TestJournalSourceLivePreallocatedSegment(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, dir)
	writeSession(t, j, siemConn, 1)

	segs, _ := filepath.Glob(filepath.Join(dir, "segment-*.jsonl"))
	last, err := os.ReadFile(segs[len(segs)-1])
	if err != nil {
		t.Fatal(err)
	}
	if bytes.IndexByte(last, 0) < 0 {
		t.Fatal("the segment being written has no preallocated zero tail")
	}

	src := JournalSource(dir)
	read := func(pos Cursor) ([]Record, Cursor) {
		t.Helper()
		recs, err := src.ReadFrom(pos, 100000)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Err != nil {
				t.Fatalf("%s at %d: %v", r.Segment, r.Offset, r.Err)
			}
			pos = r.Next
		}
		return recs, pos
	}
	first, pos := read(Cursor{})
	if len(first) == 0 {
		t.Fatal("nothing read")
	}
	if again, _ := read(pos); len(again) != 0 {
		t.Fatalf("%d records read past the end", len(again))
	}
	writeSession(t, j, siemConn, 2)
	more, _ := read(pos)
	if len(more) != 2+2*2 { // start, 2 commands and results, end
		t.Fatalf("read %d records written later, want 6", len(more))
	}
}
