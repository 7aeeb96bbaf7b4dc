package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/identity"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openTest(t *testing.T, dir string, opts Options) *Journal {
	t.Helper()
	if opts.Log == nil {
		opts.Log = quietLog()
	}
	j, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

func startEvent(conn, principal string) Event {
	return Event{Kind: KindSessionStart, Connection: conn, Protocol: "postgres",
		Identity: &identity.Identity{UPN: principal, OID: "oid-" + principal},
		Grant:    "group:g", Client: "127.0.0.1:5000", UpstreamUser: "app"}
}

func command(sql string) Event {
	return Event{Kind: KindCommand, Command: &Command{Message: "query", SQL: sql}}
}

// mustChain reads a session back and checks its chain and length.
func mustChain(t *testing.T, dir, id string, want int) []Record {
	t.Helper()
	recs, err := ReadRecords(dir, id)
	if err != nil {
		t.Fatalf("ReadRecords(%s): %v", id, err)
	}
	if len(recs) != want {
		t.Fatalf("session %s: %d records, want %d", id, len(recs), want)
	}
	if err := VerifyChain(recs); err != nil {
		t.Fatalf("VerifyChain: %v", err)
	}
	return recs
}

func TestConcurrentRecordKeepsSeqAndChain(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{})
	r, err := j.Begin(startEvent("db", "a@x"))
	if err != nil {
		t.Fatal(err)
	}
	const per = 300
	seqs := make([][]uint64, 2)
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				seq, err := r.Record(command(fmt.Sprintf("SELECT %d, %d", g, i)))
				if err != nil {
					t.Error(err)
					return
				}
				seqs[g] = append(seqs[g], seq)
			}
		}()
	}
	wg.Wait()
	if err := r.End(Event{Session: &Session{Commands: 2 * per}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Record(command("late")); !errors.Is(err, ErrSessionEnded) {
		t.Fatalf("Record after End: %v, want ErrSessionEnded", err)
	}

	seen := map[uint64]bool{}
	for _, s := range seqs {
		for i, q := range s {
			if seen[q] || q < 2 || q > 2*per+1 || (i > 0 && q <= s[i-1]) {
				t.Fatalf("seq %d repeated, out of range or out of order", q)
			}
			seen[q] = true
		}
	}
	evs, err := ReadSession(dir, r.ID())
	if err != nil {
		t.Fatal(err)
	}
	mustChain(t, dir, r.ID(), 2*per+2)
	if evs[0].Kind != KindSessionStart || evs[len(evs)-1].Kind != KindSessionEnd {
		t.Fatalf("first %s, last %s", evs[0].Kind, evs[len(evs)-1].Kind)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) || ev.SessionID != r.ID() || ev.Time.IsZero() {
			t.Fatalf("event %d: seq %d session %q time %v", i, ev.Seq, ev.SessionID, ev.Time)
		}
	}
}

func TestGroupCommit(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{})

	// Hold the writer inside its first batch while every other session
	// records; their events must then all go out in one more batch.
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	j.mu.Lock()
	j.testHookWrite = func() {
		once.Do(func() { close(entered); <-release })
	}
	j.mu.Unlock()
	first, err := j.Begin(startEvent("db", "first@x"))
	if err != nil {
		t.Fatal(err)
	}
	<-entered

	const sessions = 40
	recs := make([]*Recorder, sessions)
	for i := range recs {
		r, err := j.Begin(startEvent("db", fmt.Sprintf("s%d@x", i)))
		if err != nil {
			t.Fatal(err)
		}
		for k := range 3 {
			if _, err := r.Record(command(fmt.Sprintf("SELECT %d", k))); err != nil {
				t.Fatal(err)
			}
		}
		recs[i] = r
	}
	errs := make(chan error, sessions+1)
	for _, r := range append(recs, first) {
		go func() { errs <- r.Sync(context.Background()) }()
	}
	close(release)
	for range sessions + 1 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	j.mu.Lock()
	batches := j.batches
	j.mu.Unlock()
	if batches != 2 {
		t.Fatalf("%d batches (fsyncs) for %d sessions, want 2", batches, sessions+1)
	}

	// Synced means on disk: a reader sees every event before Close, and a
	// reopened journal keeps them.
	for _, r := range recs {
		mustChain(t, dir, r.ID(), 4)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j2 := openTest(t, dir, Options{})
	ss, err := ReadSessions(dir, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != sessions+1 {
		t.Fatalf("%d sessions after reopening, want %d", len(ss), sessions+1)
	}
	if _, err := j2.Begin(startEvent("db", "after@x")); err != nil {
		t.Fatal(err)
	}
}

func TestSecondWriterRefused(t *testing.T) {
	dir := t.TempDir()
	openTest(t, dir, Options{})
	if j, err := Open(dir, Options{Log: quietLog()}); err == nil {
		j.Close()
		t.Fatal("a second Open of the same journal succeeded")
	}
}

// writeSessions records n sessions of k commands each and closes j.
func writeSessions(t *testing.T, j *Journal, n, k int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		r, err := j.Begin(startEvent("db", fmt.Sprintf("u%d@x", i)))
		if err != nil {
			t.Fatal(err)
		}
		for c := range k {
			if _, err := r.Record(command(fmt.Sprintf("SELECT %d", c))); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.End(Event{}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID())
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return ids
}

func segmentPath(t *testing.T, dir string, i int) string {
	t.Helper()
	nums, err := listSegments(dir)
	if err != nil || len(nums) == 0 {
		t.Fatalf("segments: %v %v", nums, err)
	}
	if i < 0 {
		i += len(nums)
	}
	return filepath.Join(dir, segmentName(nums[i]))
}

func TestTornTailRecovery(t *testing.T) {
	for _, tc := range []struct {
		name string
		tear func(t *testing.T, path string, size int64)
	}{
		{"cut mid-line", func(t *testing.T, path string, size int64) {
			// Into the last session's end, before Close's final checkpoint.
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			cp := bytes.LastIndex(b, checkpointPrefix)
			if err := os.Truncate(path, int64(cp)-17); err != nil {
				t.Fatal(err)
			}
		}},
		{"zeros after the last record", func(t *testing.T, path string, _ int64) {
			appendTo(t, path, make([]byte, 300))
		}},
		{"half a line with a newline", func(t *testing.T, path string, _ int64) {
			appendTo(t, path, []byte("{\"hash\":\"ab\n\x00\x00"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ids := writeSessions(t, openTest(t, dir, Options{}), 3, 4)
			path := segmentPath(t, dir, -1)
			st, _ := os.Stat(path)
			tc.tear(t, path, st.Size())

			var logs bytes.Buffer
			j := openTest(t, dir, Options{Log: slog.New(slog.NewTextHandler(&logs, nil))})
			// Zeros alone are the preallocated tail a crash leaves, not a
			// torn record, and are logged as such.
			if !strings.Contains(logs.String(), "level=WARN") ||
				!strings.Contains(logs.String(), "torn") &&
					!strings.Contains(logs.String(), "zero tail") {
				t.Fatalf("no Warn about the torn tail; logs:\n%s", logs.String())
			}
			mustChain(t, dir, ids[0], 6)
			mustChain(t, dir, ids[1], 6)
			// Cutting mid-line loses the last session's end, nothing else;
			// Open records a new end for it, naming the crash.
			recs := mustChain(t, dir, ids[2], 6)
			var end Event
			if err := json.Unmarshal(recs[5].Event, &end); err != nil {
				t.Fatal(err)
			}
			wantReason := ""
			if tc.name == "cut mid-line" {
				wantReason = ReasonCrash
			}
			if end.Kind != KindSessionEnd || end.Reason != wantReason ||
				end.Session == nil || end.Session.Events != 6 ||
				end.Session.LastHash != recs[4].Hash {
				t.Fatalf("end after recovery: %s", recs[5].Event)
			}

			// The journal goes on after the cut, and the result reads clean.
			r, err := j.Begin(startEvent("db", "next@x"))
			if err != nil {
				t.Fatal(err)
			}
			if err := r.End(Event{}); err != nil {
				t.Fatal(err)
			}
			mustChain(t, dir, r.ID(), 2)
			if _, err := ReadSessions(dir, Filter{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func appendTo(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptRecordInTheMiddle(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(b []byte, at int) []byte
	}{
		{"edited statement", func(b []byte, at int) []byte {
			i := at + bytes.Index(b[at:], []byte("SELECT 1"))
			b[i+7] = '9'
			return b
		}},
		{"garbage line", func(b []byte, at int) []byte {
			return append(b[:at:at], append([]byte("not a record\n"), b[at:]...)...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeSessions(t, openTest(t, dir, Options{}), 2, 3)
			path := segmentPath(t, dir, 0)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			at := bytes.Index(b, []byte(`"SELECT 1"`))
			at = bytes.LastIndexByte(b[:at], '\n') + 1
			if err := os.WriteFile(path, tc.damage(b, at), 0o600); err != nil {
				t.Fatal(err)
			}

			var ce *CorruptError
			_, err = Open(dir, Options{Log: quietLog()})
			if !errors.As(err, &ce) || ce.Offset != int64(at) ||
				ce.Segment != filepath.Base(path) {
				t.Fatalf("Open: %v; want a CorruptError at %s offset %d",
					err, filepath.Base(path), at)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("offset %d", at)) {
				t.Fatalf("error does not name the offset: %v", err)
			}
			if _, err := ReadSessions(dir, Filter{}); !errors.As(err, &ce) {
				t.Fatalf("ReadSessions: %v; want a CorruptError", err)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	const max = 2048
	j := openTest(t, dir, Options{MaxSegmentSize: max})
	r, err := j.Begin(startEvent("db", "rot@x"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 60 {
		if _, err := r.Record(command(fmt.Sprintf("SELECT %d", i))); err != nil {
			t.Fatal(err)
		}
		if err := r.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.End(Event{}); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	nums, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(nums) < 3 {
		t.Fatalf("%d segments, want several", len(nums))
	}
	for i, n := range nums {
		st, err := os.Stat(filepath.Join(dir, segmentName(n)))
		if err != nil {
			t.Fatal(err)
		}
		if n != i+1 || st.Size() > max {
			t.Fatalf("segment %d (number %d) has %d bytes, over %d", i, n, st.Size(), max)
		}
	}
	mustChain(t, dir, r.ID(), 62)

	// A reopened journal appends to the newest segment.
	j2 := openTest(t, dir, Options{MaxSegmentSize: max})
	r2, err := j2.Begin(startEvent("db", "again@x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.End(Event{}); err != nil {
		t.Fatal(err)
	}
	recs := mustChain(t, dir, r2.ID(), 2)
	if recs[0].Segment < segmentName(nums[len(nums)-1]) {
		t.Fatalf("new session written to %s, before the newest segment", recs[0].Segment)
	}
}

func TestReadSessionsFilter(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{})
	t0 := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	add := func(conn, who string, opened time.Time, dur time.Duration, commands int) string {
		ev := startEvent(conn, who)
		ev.Time = opened
		ev.Session = &Session{Opened: opened}
		r, err := j.Begin(ev)
		if err != nil {
			t.Fatal(err)
		}
		for i := range commands {
			if _, err := r.Record(command(fmt.Sprintf("SELECT %d", i))); err != nil {
				t.Fatal(err)
			}
		}
		if dur > 0 {
			end := opened.Add(dur)
			if err := r.End(Event{Time: end, Session: &Session{Opened: opened,
				Closed: end}}); err != nil {
				t.Fatal(err)
			}
		} else if err := r.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		return r.ID()
	}
	a := add("billing", "alice@x", t0, time.Minute, 2)
	b := add("billing", "bob@x", t0.Add(time.Hour), time.Minute, 1)
	c := add("crm", "alice@x", t0.Add(2*time.Hour), 0, 3) // still open

	for _, tc := range []struct {
		name string
		f    Filter
		want []string
	}{
		{"all, by opening time", Filter{}, []string{a, b, c}},
		{"identity by upn, any case", Filter{Identity: "ALICE@x"}, []string{a, c}},
		{"identity by oid", Filter{Identity: "oid-bob@x"}, []string{b}},
		{"connection", Filter{Connection: "billing"}, []string{a, b}},
		{"since skips sessions closed before", Filter{Since: t0.Add(30 * time.Minute)},
			[]string{b, c}},
		{"until skips sessions opened after", Filter{Until: t0.Add(90 * time.Minute)},
			[]string{a, b}},
		{"window", Filter{Since: t0.Add(62 * time.Minute), Until: t0.Add(3 * time.Hour)},
			[]string{c}},
		{"nothing", Filter{Connection: "nope"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ss, err := ReadSessions(dir, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range ss {
				got = append(got, s.ID)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}

	ss, err := ReadSessions(dir, Filter{Identity: "bob@x"})
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	if s.Commands != 1 || s.Events != 3 || s.LastSeq != 3 || s.Grant != "group:g" ||
		!s.Opened.Equal(t0.Add(time.Hour)) || s.DurationMS != 60000 ||
		s.UpstreamUser != "app" || s.Identity.Principal() != "bob@x" {
		t.Fatalf("summary: %+v", s)
	}
	if _, err := ReadSession(dir, "no-such-session"); !errors.Is(err, ErrSessionNotFound) {
		t.Fatalf("ReadSession of an unknown id: %v", err)
	}
}

func TestWriteFailureFailsClosed(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	j := openTest(t, dir, Options{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	r, err := j.Begin(startEvent("db", "a@x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}

	// Take the segment away from under the writer: its next write fails.
	j.mu.Lock()
	j.seg.Close()
	j.mu.Unlock()

	if _, err := r.Record(command("SELECT 1")); err != nil {
		t.Fatalf("Record before the failure is known: %v", err)
	}
	if err := r.Sync(context.Background()); !errors.Is(err, ErrJournalUnavailable) {
		t.Fatalf("Sync after a failed write: %v, want ErrJournalUnavailable", err)
	}
	if _, err := r.Record(command("SELECT 2")); !errors.Is(err, ErrJournalUnavailable) {
		t.Fatalf("Record after the failure: %v", err)
	}
	if err := r.Sync(context.Background()); !errors.Is(err, ErrJournalUnavailable) {
		t.Fatalf("second Sync: %v", err)
	}
	if _, err := j.Begin(startEvent("db", "b@x")); !errors.Is(err, ErrJournalUnavailable) {
		t.Fatalf("Begin after the failure: %v", err)
	}
	if err := r.End(Event{}); !errors.Is(err, ErrJournalUnavailable) {
		t.Fatalf("End after the failure: %v", err)
	}
	if err := j.Close(); !errors.Is(err, ErrJournalUnavailable) {
		t.Fatalf("Close: %v, want the write failure", err)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("no Error log line for the failure:\n%s", logs.String())
	}
}

func TestSyncHonoursContext(t *testing.T) {
	j := openTest(t, t.TempDir(), Options{})
	release := make(chan struct{})
	j.mu.Lock()
	j.testHookWrite = func() { <-release }
	j.mu.Unlock()
	defer close(release)
	r, err := j.Begin(startEvent("db", "a@x"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Sync(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sync with a cancelled context: %v", err)
	}
}

func TestSessionIDsSortByTime(t *testing.T) {
	t0 := time.Now()
	a, err := newSessionID(t0)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := newSessionID(t0.Add(time.Millisecond))
	if len(a) != 36 || a[14] != '7' || !strings.ContainsRune("89ab", rune(a[19])) {
		t.Fatalf("%s is not a UUIDv7", a)
	}
	if a >= b {
		t.Fatalf("ids do not sort by time: %s >= %s", a, b)
	}
}

func TestBackpressureAndClose(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{MaxPending: 1})
	r, err := j.Begin(startEvent("db", "a@x"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if _, err := r.Record(command(fmt.Sprintf("SELECT %d", i))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	// Close wrote everything recorded before it; nothing is taken after it.
	mustChain(t, dir, r.ID(), 401)
	if _, err := r.Record(command("late")); !errors.Is(err, ErrJournalUnavailable) {
		t.Fatalf("Record after Close: %v", err)
	}
	if _, err := j.Begin(startEvent("db", "b@x")); !errors.Is(err, ErrJournalUnavailable) {
		t.Fatalf("Begin after Close: %v", err)
	}
	// Sync vouches only for events recorded, and Close made them durable.
	if err := r.Sync(context.Background()); err != nil {
		t.Fatalf("Sync after a clean Close: %v", err)
	}
}
