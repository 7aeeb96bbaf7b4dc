package es

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
)

// fakeSource is an in-memory journal: records in order, the cursor's
// Offset is the index of the next record.
type fakeSource struct {
	mu   sync.Mutex
	recs []Record
	prev map[string][sha256.Size]byte
	seq  map[string]uint64
}

func newFakeSource() *fakeSource {
	return &fakeSource{prev: map[string][sha256.Size]byte{}, seq: map[string]uint64{}}
}

// add appends ev as the next event of its session, chained as the journal
// chains it.
func (f *fakeSource) add(t *testing.T, ev audit.Event) Record {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq[ev.SessionID]++
	ev.Seq = f.seq[ev.SessionID]
	canonical, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	prev := f.prev[ev.SessionID]
	h := sha256.New()
	h.Write(prev[:])
	h.Write(canonical)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	f.prev[ev.SessionID] = sum
	i := len(f.recs)
	r := Record{Record: audit.Record{Hash: hex.EncodeToString(sum[:]),
		Prev: hex.EncodeToString(prev[:]), Event: canonical, Segment: "fake", Offset: int64(i)},
		Next: Cursor{Segment: "fake", Offset: int64(i + 1)}}
	f.recs = append(f.recs, r)
	return r
}

func (f *fakeSource) ReadFrom(pos Cursor, max int) ([]Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pos.Segment != "" && pos.Segment != "fake" {
		return nil, fmt.Errorf("fake source: bad cursor %+v", pos)
	}
	start := min(int(pos.Offset), len(f.recs))
	end := min(start+max, len(f.recs))
	return append([]Record(nil), f.recs[start:end]...), nil
}

// ids returns the document ids of every record.
func (f *fakeSource) ids(t *testing.T) []string {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.recs))
	for i, r := range f.recs {
		var ev audit.Event
		if err := json.Unmarshal(r.Event, &ev); err != nil {
			t.Fatal(err)
		}
		out[i] = DocumentID(ev.SessionID, ev.Seq)
	}
	return out
}

var testStart = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

// session appends a whole session of n commands (each with its result)
// and returns its id.
func (f *fakeSource) session(t *testing.T, id, conn, upn string, n int) string {
	t.Helper()
	who := &identity.Identity{OID: "oid-" + id, TID: "72f988bf-86f1-41af-91ab-2d7cd011db47",
		AppID: "app-" + id, IDType: "app", UPN: upn, Roles: []string{"Db.Read"}}
	base := audit.Event{SessionID: id, Connection: conn, Protocol: "postgres", Identity: who,
		Grant: "role:Db.Read", Client: "10.1.2.3:51234", Upstream: "127.0.0.1:5432",
		UpstreamUser: "billing_ro"}
	at := testStart.Add(time.Duration(len(f.recs)) * time.Second)
	ev := base
	ev.Kind, ev.Time = audit.KindSessionStart, at
	ev.Session = &audit.Session{Opened: at, Application: "agent", ClientUser: "agent"}
	f.add(t, ev)
	for i := 1; i <= n; i++ {
		ev := base
		ev.Kind, ev.Time = audit.KindCommand, at.Add(time.Duration(i)*time.Millisecond)
		ev.Command = &audit.Command{Message: "query", SQL: fmt.Sprintf("SELECT %d", i)}
		c := f.add(t, ev)
		var cev audit.Event
		_ = json.Unmarshal(c.Event, &cev)
		ev = base
		ev.Kind, ev.Time = audit.KindResult, at.Add(time.Duration(i)*time.Millisecond+1)
		ev.Result = &audit.Result{Command: cev.Seq, Status: audit.StatusOK, Tag: "SELECT 1",
			Rows: 1, Duration: 0.25}
		f.add(t, ev)
	}
	ev = base
	ev.Kind, ev.Time = audit.KindSessionEnd, at.Add(time.Second/2)
	ev.Session = &audit.Session{Opened: at, Closed: at.Add(time.Second / 2), Commands: n}
	f.add(t, ev)
	return id
}
