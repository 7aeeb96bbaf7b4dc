package es

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/internal/es8double"
)

// The journal tests write through the real audit.Journal, with small
// segments so the reader crosses segment files, and ship only the
// connection "siem-db".
const (
	siemConn  = "siem-db"
	localConn = "local-db"
)

func openJournal(t *testing.T, dir string) *audit.Journal {
	t.Helper()
	j, err := audit.Open(dir, audit.Options{MaxSegmentSize: 4 << 10, CheckpointInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// writeSession records a whole session of n commands on conn and returns
// its id.
func writeSession(t *testing.T, j *audit.Journal, conn string, n int) string {
	t.Helper()
	who := &identity.Identity{OID: "oid-1", TID: "72f988bf-86f1-41af-91ab-2d7cd011db47",
		UPN: "agent@contoso.example"}
	base := audit.Event{Connection: conn, Protocol: "postgres", Identity: who,
		Grant: "role:Db.Read", Client: "10.1.2.3:51234", Upstream: "127.0.0.1:5432"}
	start := base
	start.Kind = audit.KindSessionStart
	start.Session = &audit.Session{Opened: time.Now().UTC()}
	r, err := j.Begin(start)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ev := base
		ev.Kind = audit.KindCommand
		ev.Command = &audit.Command{Message: "query", SQL: fmt.Sprintf("SELECT %d", i)}
		ev.Decision = &audit.Decision{Allowed: i%2 == 0, Reasons: []string{"test"}}
		seq, err := r.Record(ev)
		if err != nil {
			t.Fatal(err)
		}
		ev = base
		ev.Kind = audit.KindResult
		ev.Result = &audit.Result{Command: seq, Status: audit.StatusOK, Duration: 0.5}
		if i%2 == 1 {
			ev.Result.Status = audit.StatusDenied
		}
		if _, err := r.Record(ev); err != nil {
			t.Fatal(err)
		}
	}
	end := base
	end.Kind = audit.KindSessionEnd
	if err := r.End(end); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r.ID()
}

// exportedIDs returns the document ids the journal in dir should produce:
// every event of the siem connection's sessions and every checkpoint. It
// reads the journal through package audit, not through JournalSource.
func exportedIDs(t *testing.T, dir string, checkpoints []audit.Checkpoint) []string {
	t.Helper()
	ss, err := audit.ReadSessions(dir, audit.Filter{Connection: siemConn})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range ss {
		for seq := uint64(1); seq <= s.LastSeq; seq++ {
			ids = append(ids, DocumentID(s.ID, seq))
		}
	}
	for i := range checkpoints {
		ids = append(ids, CheckpointID(&checkpoints[i]))
	}
	slices.Sort(ids)
	return ids
}

// journalCheckpoints returns the checkpoints in the journal.
func journalCheckpoints(t *testing.T, dir string) []audit.Checkpoint {
	t.Helper()
	recs, err := JournalSource(dir).ReadFrom(Cursor{}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Checkpoint
	for _, r := range recs {
		if r.Err != nil {
			t.Fatalf("journal line %s:%d: %v", r.Segment, r.Offset, r.Err)
		}
		if r.Checkpoint != nil {
			out = append(out, *r.Checkpoint)
		}
	}
	return out
}

// runShipper runs a shipper on the journal in dir until the test ends.
func runShipper(t *testing.T, tg *target, dir string) *Shipper {
	t.Helper()
	s, err := NewShipper(Options{Client: tg.client, Source: JournalSource(dir), Dir: dir,
		DataStream: tg.ds, BatchSize: 5, MinBackoff: time.Millisecond,
		MaxBackoff: 50 * time.Millisecond, PollInterval: 10 * time.Millisecond,
		Include: func(ev *audit.Event) bool { return ev.Connection == siemConn }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		s.Close(context.Background())
	})
	return s
}

// waitFor polls cond until it holds; the bound only turns a hang into a
// failure.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestJournalExport ships a real journal (several segments, two
// connections, checkpoints) and reads it back through Reader as an
// audit.Source: only the siem connection's sessions, every checkpoint with
// its signed bytes verbatim, every record byte for byte.
func TestJournalExport(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *target) {
		dir := t.TempDir()
		j := openJournal(t, dir)
		var siem []string
		local := map[string]bool{}
		for i := range 3 {
			siem = append(siem, writeSession(t, j, siemConn, 4+i))
			local[writeSession(t, j, localConn, 2)] = true
			if err := j.Checkpoint(); err != nil {
				t.Fatal(err)
			}
		}
		if segs, _ := filepath.Glob(filepath.Join(dir, "segment-*.jsonl")); len(segs) < 2 {
			t.Fatalf("the journal has %d segments; the test wants several", len(segs))
		}
		cps := journalCheckpoints(t, dir)
		if len(cps) < 3 {
			t.Fatalf("%d checkpoints in the journal, want at least 3", len(cps))
		}
		want := exportedIDs(t, dir, cps)
		s := runShipper(t, tg, dir)
		var got []string
		waitFor(t, "every exported id", func() bool {
			got = tg.storedIDs(t)
			return len(got) >= len(want)
		})
		if !slices.Equal(got, want) {
			t.Fatalf("stored ids\n%v\nwant\n%v", got, want)
		}
		waitFor(t, "the cursor at the end", func() bool { return s.Lag().Behind == 0 })
		if st := s.Lag(); st.Shipped != uint64(len(want)) || st.Skipped == 0 {
			t.Errorf("stats %+v: want %d shipped and the local sessions skipped", st, len(want))
		}

		// Read back through the audit.Source the verifier uses.
		tg.refresh(t)
		var src audit.Source = NewReader(tg.client, tg.ds)
		ctx := shipCtx(t)
		ids, err := src.Sessions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids, sorted(siem)) {
			t.Errorf("sessions %v, want the siem ones %v", ids, sorted(siem))
		}
		for _, id := range siem {
			recs, err := src.Records(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			jrecs, err := audit.ReadRecords(dir, id)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != len(jrecs) {
				t.Fatalf("session %s: %d records, journal has %d", id, len(recs), len(jrecs))
			}
			for i := range recs {
				if !bytes.Equal(recs[i].Event, jrecs[i].Event) || recs[i].Hash != jrecs[i].Hash ||
					recs[i].Prev != jrecs[i].Prev {
					t.Errorf("session %s record %d differs from the journal", id, i+1)
				}
			}
			if err := audit.VerifyChain(recs); err != nil {
				t.Errorf("chain of %s in elasticsearch: %v", id, err)
			}
		}
		got2, err := src.Checkpoints(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got2) != len(cps) {
			t.Fatalf("%d checkpoints in elasticsearch, journal has %d", len(got2), len(cps))
		}
		for i, cp := range got2 {
			if cp.Seq != cps[i].Seq || !bytes.Equal(cp.Raw, cps[i].Raw) ||
				cp.Signature != cps[i].Signature {
				t.Errorf("checkpoint %d differs from the journal: %s", i+1, cp.Raw)
			}
			checkSignature(t, cp)
		}

		// The verifier finds everything in order, except that the
		// checkpoints name the sessions of the connection not exported.
		rep, err := audit.Verify(ctx, src, audit.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		missing := 0
		for _, p := range rep.Problems {
			switch {
			case p.Warning:
			case p.Kind == audit.ProblemMissingSession && local[p.Session]:
				missing++
			default:
				t.Errorf("verify against elasticsearch: %+v", p)
			}
		}
		if missing != len(local) || rep.Checkpoints != len(cps) {
			t.Errorf("verify: %d missing sessions (want the %d local ones), %d checkpoints",
				missing, len(local), rep.Checkpoints)
		}
	})
}

// checkSignature verifies a checkpoint's Ed25519 signature over Raw.
func checkSignature(t *testing.T, cp audit.Checkpoint) {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(cp.Key)
	if err != nil || len(key) != ed25519.PublicKeySize {
		t.Fatalf("checkpoint %d key %q: %v", cp.Seq, cp.Key, err)
	}
	sig, err := base64.StdEncoding.DecodeString(cp.Signature)
	if err != nil || !ed25519.Verify(key, cp.Raw, sig) {
		t.Errorf("checkpoint %d: signature does not verify over the stored bytes", cp.Seq)
	}
}

// TestJournalOutage takes the double down while sessions keep being
// journaled: the lag is reported (Lag, Handler), nothing is stored during
// the outage, and after it every event and checkpoint is stored exactly
// once.
func TestJournalOutage(t *testing.T) {
	tg := doubleTarget(t, es8double.Options{})
	dir := t.TempDir()
	j := openJournal(t, dir)
	writeSession(t, j, siemConn, 3)
	s := runShipper(t, tg, dir)
	first := exportedIDs(t, dir, nil)
	waitFor(t, "the first session", func() bool { return len(tg.double.IDs(tg.ds)) == len(first) })

	// Down: the journal keeps growing.
	if err := tg.server.Down(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		writeSession(t, j, siemConn, 2)
		writeSession(t, j, localConn, 1)
	}
	if err := j.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the shipper to notice the outage", func() bool {
		st := s.Lag()
		return st.LastError != "" && st.Behind > 0 && st.Retries >= 2
	})
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/export", nil))
	var rep lagReport
	if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil || rec.Code != 200 ||
		rep.Behind == 0 || rep.LastError == "" || rep.OldestAge <= 0 {
		t.Errorf("handler during the outage: %d %s", rec.Code, rec.Body)
	}
	if n := len(tg.double.IDs(tg.ds)); n != len(first) {
		t.Fatalf("%d ids stored while down, want %d", n, len(first))
	}

	// Back: everything arrives, once.
	if err := tg.server.Up(); err != nil {
		t.Fatal(err)
	}
	want := exportedIDs(t, dir, journalCheckpoints(t, dir))
	var got []string
	waitFor(t, "every exported id", func() bool {
		got = tg.storedIDs(t)
		return len(got) >= len(want)
	})
	if !slices.Equal(got, want) {
		t.Fatalf("stored ids\n%v\nwant\n%v", got, want)
	}
	waitFor(t, "the cursor at the end", func() bool { return s.Lag().Behind == 0 })
	c := readCursor(t, dir, tg.ds)
	if c.Shipped != uint64(len(want)) {
		t.Errorf("cursor counts %d shipped, want %d", c.Shipped, len(want))
	}
	if st := s.Lag(); st.LastError != "" || st.Blocked != nil {
		t.Errorf("stats after the outage: %+v", st)
	}
}

// TestJournalDamagedLine blocks the cursor in front of a line whose hash
// does not match its bytes, instead of shipping or skipping it.
func TestJournalDamagedLine(t *testing.T) {
	tg := doubleTarget(t, es8double.Options{})
	dir := t.TempDir()
	j := openJournal(t, dir)
	writeSession(t, j, siemConn, 1)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "segment-00000001.jsonl")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Edit the statement of the command (the second line).
	b = bytes.Replace(b, []byte("SELECT 0"), []byte("SELECT 9"), 1)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := NewShipper(Options{Client: tg.client, Source: JournalSource(dir), Dir: dir,
		DataStream: tg.ds})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	shipErr := s.ShipAvailable(shipCtx(t))
	var ie *ItemError
	if !errors.As(shipErr, &ie) || ie.Status != 0 {
		t.Fatalf("ShipAvailable: %v, want an *ItemError for the damaged line", shipErr)
	}
	// Lines after it in the same batch may be stored (a later pass gets
	// 409s for them); the damaged one is not, and the cursor stays in front
	// of it.
	recs, err := JournalSource(dir).ReadFrom(Cursor{}, 2)
	if err != nil || len(recs) != 2 || recs[1].Err == nil {
		t.Fatalf("journal source: %v, %+v", err, recs)
	}
	var ev audit.Event
	_ = json.Unmarshal(recs[1].Event, &ev)
	if slices.Contains(tg.double.IDs(tg.ds), DocumentID(ev.SessionID, ev.Seq)) {
		t.Errorf("the damaged event %d was stored", ev.Seq)
	}
	if c := readCursor(t, dir, tg.ds); c.Cursor != recs[0].Next {
		t.Errorf("cursor %+v, want %+v (in front of the damaged line)", c.Cursor, recs[0].Next)
	}
	if op := operatorAction(shipErr); !bytes.Contains([]byte(op), []byte("verify")) {
		t.Errorf("operator action %q does not say to verify", op)
	}
}

// TestStart runs the shipper the way vigil gateway and extproc do: from the
// configuration, only when some connection exports, stopped by Close.
func TestStart(t *testing.T) {
	tg := doubleTarget(t, es8double.Options{})
	dir := t.TempDir()
	cfg := &config.Config{
		Connections: []config.Connection{{Name: siemConn, Export: "siem"}, {Name: localConn}},
		Audit: config.Audit{Dir: dir, Elasticsearch: &config.Elasticsearch{
			Addresses: tg.cfg.Addresses, DataStream: tg.ds}},
	}
	j := openJournal(t, dir)
	writeSession(t, j, siemConn, 2)
	writeSession(t, j, localConn, 2)

	s, err := Start(context.Background(), cfg, nil)
	if err != nil || s == nil {
		t.Fatalf("Start: %v, %v", s, err)
	}
	want := exportedIDs(t, dir, nil)
	waitFor(t, "the siem session", func() bool { return len(tg.double.IDs(tg.ds)) == len(want) })
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := tg.storedIDs(t); !slices.Equal(got, want) {
		t.Errorf("stored %v, want %v", got, want)
	}

	// Nothing to export: no shipper, and the nil one is usable.
	cfg.Connections[0].Export = ""
	s, err = Start(context.Background(), cfg, nil)
	if err != nil || s != nil {
		t.Fatalf("Start without export: %v, %v", s, err)
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/export", nil))
	if err := s.Close(context.Background()); err != nil || rec.Code != 200 ||
		!strings.Contains(rec.Body.String(), `"enabled":false`) {
		t.Errorf("nil shipper: %v, %d %s", err, rec.Code, rec.Body)
	}
}
