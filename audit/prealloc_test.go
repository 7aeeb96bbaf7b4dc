package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// logicalEnd returns the offset of the first 0 byte in b, or len(b).
func logicalEnd(b []byte) int {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return i
	}
	return len(b)
}

// copyDir copies the regular files of src into a new directory, as a
// crash leaves them: whatever the running journal has written.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// writeSynced records a session of k commands, syncs, and leaves it open.
func writeSynced(t *testing.T, j *Journal, who string, k int) (*Recorder, string) {
	t.Helper()
	r, err := j.Begin(startEvent("db", who))
	if err != nil {
		t.Fatal(err)
	}
	for c := range k {
		if _, err := r.Record(command(fmt.Sprintf("SELECT %d -- %s", c, who))); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r, r.ID()
}

func mustVerify(t *testing.T, dir string) {
	t.Helper()
	rep, err := Verify(context.Background(), JournalSource(dir), VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("verify: %+v", rep.Problems)
	}
}

// A crash leaves the segment being written with a zero-filled tail: Open
// cuts it back to the last record, loses nothing synced, and the journal
// verifies.
func TestPreallocCrashLeavesZeroTail(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{CheckpointInterval: -1})
	r1, id1 := writeSynced(t, j, "a@x", 5)
	if err := r1.End(Event{}); err != nil {
		t.Fatal(err)
	}
	if err := j.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	_, id2 := writeSynced(t, j, "b@x", 3) // left open: the crash cuts it

	live := segmentPath(t, dir, -1)
	b, err := os.ReadFile(live)
	if err != nil {
		t.Fatal(err)
	}
	end := logicalEnd(b)
	nonZero := func(r rune) bool { return r != 0 }
	if len(b) < preallocChunk || end >= len(b) || bytes.ContainsFunc(b[end:], nonZero) {
		t.Fatalf("segment being written: %d bytes, logical end %d; want a preallocated zero tail",
			len(b), end)
	}

	crashed := copyDir(t, dir)
	var logs bytes.Buffer
	j2 := openTest(t, crashed, Options{CheckpointInterval: -1,
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if !strings.Contains(logs.String(), "zero tail") || strings.Contains(logs.String(), "torn") {
		t.Fatalf("want a Warn about the zero tail, none about a torn record:\n%s", logs.String())
	}
	mustChain(t, crashed, id1, 7)
	recs := mustChain(t, crashed, id2, 5) // start, 3 commands, the crash's end
	if !bytes.Contains(recs[4].Event, []byte(ReasonCrash)) {
		t.Fatalf("end after the crash: %s", recs[4].Event)
	}
	// The journal goes on writing into the recovered segment.
	r3, id3 := writeSynced(t, j2, "c@x", 2)
	if err := r3.End(Event{}); err != nil {
		t.Fatal(err)
	}
	if err := j2.Close(); err != nil {
		t.Fatal(err)
	}
	mustChain(t, crashed, id3, 4)
	mustVerify(t, crashed)
	b, _ = os.ReadFile(segmentPath(t, crashed, -1))
	if bytes.IndexByte(b, 0) >= 0 || !bytes.HasSuffix(b, []byte("\n")) {
		t.Fatal("a cleanly closed segment keeps a zero tail")
	}
}

// The readers read a live, preallocated segment while it is written:
// they stop at the zero tail without calling it corruption.
func TestReadersOnLivePreallocatedSegment(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{CheckpointInterval: -1, MaxSegmentSize: 256 << 10})
	_, first := writeSynced(t, j, "first@x", 3)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := j.Begin(startEvent("db", fmt.Sprintf("w%d@x", g)))
			if err != nil {
				t.Error(err)
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					r.End(Event{})
					return
				default:
				}
				if i == 400 { // bounded, so that the readers keep up
					<-stop
					r.End(Event{})
					return
				}
				if _, err := r.Record(command(fmt.Sprintf("SELECT %d -- %s", i,
					strings.Repeat("y", i*37%3000)))); err != nil {
					t.Error(err)
					return
				}
				if err := r.Sync(context.Background()); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 20 {
		if _, err := ReadSessions(dir, Filter{}); err != nil {
			t.Fatalf("ReadSessions on a live journal: %v", err)
		}
		if _, err := ReadSession(dir, first); err != nil {
			t.Fatalf("ReadSession on a live journal: %v", err)
		}
		mustChain(t, dir, first, 4)
		src := JournalSource(dir)
		ids, err := src.Sessions(context.Background())
		if err != nil {
			t.Fatalf("JournalSource on a live journal: %v", err)
		}
		for _, id := range ids {
			recs, err := src.Records(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyChain(recs); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, dir)
}

// Rotation truncates the finished segment to its last record; only the
// segment being written has a zero tail, never longer than
// MaxSegmentSize plus a chunk.
func TestRotationTruncatesPreallocation(t *testing.T) {
	dir := t.TempDir()
	const max = 64 << 10
	j := openTest(t, dir, Options{CheckpointInterval: -1, MaxSegmentSize: max})
	for i := range 6 {
		_, _ = writeSynced(t, j, fmt.Sprintf("u%d@x", i), 120)
	}
	nums, err := listSegments(dir)
	if err != nil || len(nums) < 3 {
		t.Fatalf("segments %v, %v: want several", nums, err)
	}
	for i, n := range nums {
		b, err := os.ReadFile(filepath.Join(dir, segmentName(n)))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 2*max {
			t.Fatalf("%s: %d bytes, over MaxSegmentSize plus a chunk", segmentName(n), len(b))
		}
		zero := bytes.IndexByte(b, 0)
		if i < len(nums)-1 && (zero >= 0 || !bytes.HasSuffix(b, []byte("\n"))) {
			t.Fatalf("finished %s: 0 byte at %d of %d; want it truncated to its last record",
				segmentName(n), zero, len(b))
		}
		if i == len(nums)-1 && zero < 0 {
			t.Fatalf("segment being written %s has no preallocated tail", segmentName(n))
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(segmentPath(t, dir, -1))
	if bytes.IndexByte(b, 0) >= 0 {
		t.Fatal("Close left a zero tail")
	}
	mustVerify(t, dir)
}

// Zeros followed by data further on than one write could tear is
// corruption, for Open and the readers alike; nearer, it is a torn write
// that Open cuts.
func TestZerosThenData(t *testing.T) {
	build := func(t *testing.T) (string, string, []byte) {
		dir := t.TempDir()
		writeSessions(t, openTest(t, dir, Options{CheckpointInterval: -1}), 2, 3)
		path := segmentPath(t, dir, -1)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.SplitAfter(b, []byte("\n"))
		return dir, path, lines[0] // a whole record
	}
	t.Run("far: corruption", func(t *testing.T) {
		dir, path, rec := build(t)
		st, _ := os.Stat(path)
		appendTo(t, path, make([]byte, maxWriteSize+4096))
		appendTo(t, path, rec)
		appendTo(t, path, make([]byte, 8192))
		var ce *CorruptError
		if _, err := Open(dir, Options{Log: quietLog()}); !errors.As(err, &ce) ||
			ce.Offset != st.Size() {
			t.Fatalf("Open: %v, want a *CorruptError at %d", err, st.Size())
		}
		if _, err := ReadSessions(dir, Filter{}); !errors.As(err, &ce) {
			t.Fatalf("ReadSessions: %v, want a *CorruptError", err)
		}
		if _, err := JournalSource(dir).Sessions(context.Background()); !errors.As(err, &ce) {
			t.Fatalf("JournalSource: %v, want a *CorruptError", err)
		}
		if b, _ := os.ReadFile(path); int64(len(b)) == st.Size() {
			t.Fatal("Open cut a corrupt journal")
		}
	})
	t.Run("near: a torn write", func(t *testing.T) {
		dir, path, rec := build(t)
		st, _ := os.Stat(path)
		appendTo(t, path, rec[:40])
		appendTo(t, path, make([]byte, 8192))
		appendTo(t, path, rec[100:])
		appendTo(t, path, make([]byte, 3*maxWriteSize))
		if _, err := ReadSessions(dir, Filter{}); err != nil {
			t.Fatalf("ReadSessions: %v", err)
		}
		var logs bytes.Buffer
		j := openTest(t, dir, Options{CheckpointInterval: -1,
			Log: slog.New(slog.NewTextHandler(&logs, nil))})
		if !strings.Contains(logs.String(), "torn") {
			t.Fatalf("no Warn about the torn write:\n%s", logs.String())
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		f, _ := os.Open(path)
		head := make([]byte, st.Size())
		io.ReadFull(f, head)
		f.Close()
		b, _ := os.ReadFile(path)
		if !bytes.Equal(b[:st.Size()], head) || bytes.IndexByte(b, 0) >= 0 {
			t.Fatal("the torn write was not cut back to the last record")
		}
		mustVerify(t, dir)
	})
}
