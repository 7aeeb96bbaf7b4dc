package es

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/internal/es8double"
)

func newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request,
	error) {
	req, err := http.NewRequestWithContext(ctx, method, path, body)
	if err == nil && body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, err
}

// newShipper returns a shipper on tg with fast backoff and its cursor in
// dir.
func newShipper(t *testing.T, tg *target, src Source, dir string,
	onRetry func(int, error)) *Shipper {
	t.Helper()
	s, err := NewShipper(Options{Client: tg.client, Source: src, Dir: dir,
		DataStream: tg.ds, BatchSize: 7, MinBackoff: time.Millisecond,
		MaxBackoff: 20 * time.Millisecond, OnRetry: onRetry})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func shipCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func sorted(ids []string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

func readCursor(t *testing.T, dir, ds string) cursorFile {
	t.Helper()
	c, err := loadCursor(cursorPath(dir, ds))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestShipAll ships three sessions and reads them back: every id stored
// once, the cursor at the end, the records byte for byte, the chains
// verifying.
func TestShipAll(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *target) {
		src := newFakeSource()
		a := src.session(t, "0195a1b2-0000-7000-8000-00000000000a", "customer-db",
			"Agent.One@contoso.example", 3)
		src.session(t, "0195a1b2-0000-7000-8000-00000000000b", "orders-db",
			"agent.two@contoso.example", 2)
		src.session(t, "0195a1b2-0000-7000-8000-00000000000c", "customer-db",
			"agent.two@contoso.example", 1)
		dir := t.TempDir()
		s := newShipper(t, tg, src, dir, nil)
		if err := s.ShipAvailable(shipCtx(t)); err != nil {
			t.Fatal(err)
		}
		if got, want := tg.storedIDs(t), sorted(src.ids(t)); !slices.Equal(got, want) {
			t.Fatalf("stored ids\n%v\nwant\n%v", got, want)
		}
		st := s.Lag()
		if st.Behind != 0 || st.Shipped != uint64(len(src.recs)) || st.Blocked != nil {
			t.Errorf("stats %+v, want nothing behind and %d shipped", st, len(src.recs))
		}
		if c := readCursor(t, dir, tg.ds); c.Cursor != src.recs[len(src.recs)-1].Next {
			t.Errorf("cursor %+v, want %+v", c.Cursor, src.recs[len(src.recs)-1].Next)
		}

		// Read back through the Reader.
		tg.refresh(t)
		r := NewReader(tg.client, tg.ds)
		recs, err := r.ReadRecords(shipCtx(t), a)
		if err != nil {
			t.Fatal(err)
		}
		var want []audit.Record
		for _, rec := range src.recs {
			if bytes.Contains(rec.Event, []byte(a)) {
				want = append(want, rec.Record)
			}
		}
		if len(recs) != len(want) {
			t.Fatalf("read %d records of %s, want %d", len(recs), a, len(want))
		}
		for i := range recs {
			if !bytes.Equal(recs[i].Event, want[i].Event) || recs[i].Hash != want[i].Hash ||
				recs[i].Prev != want[i].Prev {
				t.Errorf("record %d differs:\n%s\nwant\n%s", i+1, recs[i].Event, want[i].Event)
			}
		}
		if err := audit.VerifyChain(recs); err != nil {
			t.Errorf("verify against elasticsearch: %v", err)
		}
		evs, err := r.ReadSession(shipCtx(t), a)
		if err != nil || len(evs) != len(want) || evs[len(evs)-1].Kind != audit.KindSessionEnd {
			t.Errorf("ReadSession: %d events, %v", len(evs), err)
		}
		if _, err := r.ReadSession(shipCtx(t), "no-such-session"); !errors.Is(err,
			audit.ErrSessionNotFound) {
			t.Errorf("missing session: %v, want ErrSessionNotFound", err)
		}

		sums, err := r.ReadSessions(shipCtx(t), audit.Filter{Identity: "agent.one@CONTOSO.example"})
		if err != nil {
			t.Fatal(err)
		}
		if len(sums) != 1 || sums[0].ID != a || sums[0].Commands != 3 || sums[0].Closed.IsZero() {
			t.Errorf("sessions by identity: %+v", sums)
		}
		sums, err = r.ReadSessions(shipCtx(t), audit.Filter{Connection: "customer-db"})
		if err != nil || len(sums) != 2 {
			t.Errorf("sessions by connection: %d, %v", len(sums), err)
		}
	})
}

// TestOutage takes the cluster away (refused connections, then 503 no
// master, then whole-request 429s) while events wait and the journal keeps
// growing, and checks that everything arrives exactly once when it is
// back.
func TestOutage(t *testing.T) {
	tg := doubleTarget(t, es8double.Options{})
	src := newFakeSource()
	src.session(t, "0195a1b2-0000-7000-8000-0000000000d1", "customer-db", "a@x.example", 4)
	src.session(t, "0195a1b2-0000-7000-8000-0000000000d2", "customer-db", "b@x.example", 4)
	before := len(src.recs)
	dir := t.TempDir()

	// The hook must not block the shipper: a full channel drops the report,
	// and the test only needs to see that retries keep coming.
	retries := make(chan error, 16)
	s := newShipper(t, tg, src, dir, func(_ int, err error) {
		select {
		case retries <- err:
		default:
		}
	})
	if err := tg.server.Down(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ShipAvailable(shipCtx(t)) }()

	// Phase 1: connection refused, while the journal grows.
	for i := range 3 {
		if err := <-retries; err == nil {
			t.Fatal("retry without an error")
		}
		src.session(t, fmt.Sprintf("0195a1b2-0000-7000-8000-0000000000e%d", i),
			"customer-db", "c@x.example", 2)
	}
	if st := s.Lag(); st.Behind < before || st.Oldest.IsZero() || st.LastError == "" {
		t.Errorf("lag during the outage: %+v", st)
	}
	if got := tg.double.IDs(tg.ds); len(got) != 0 {
		t.Fatalf("stored %d events while down", len(got))
	}
	// Phase 2: the node is back without a master (503), then overloaded.
	tg.double.SetUnavailable(true)
	if err := tg.server.Up(); err != nil {
		t.Fatal(err)
	}
	bulks := tg.double.BulkRequests()
	for tg.double.BulkRequests() < bulks+2 {
		<-retries
	}
	tg.double.RejectRequests(2)
	tg.double.SetUnavailable(false)

	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// What the journal gained during the outage and was not read yet goes
	// with the next round.
	if err := s.ShipAvailable(shipCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got, want := tg.storedIDs(t), sorted(src.ids(t)); !slices.Equal(got, want) {
		t.Fatalf("stored ids\n%v\nwant\n%v", got, want)
	}
	if st := s.Lag(); st.Behind != 0 || st.LastError != "" || st.Retries < 3 {
		t.Errorf("stats after recovery: %+v", st)
	}
	if c := readCursor(t, dir, tg.ds); c.Shipped != uint64(len(src.recs)) {
		t.Errorf("cursor counts %d shipped, want %d", c.Shipped, len(src.recs))
	}
}

// TestReplayAfterCrash loses the cursor write after Elasticsearch
// acknowledged (a crash in between): the replay gets 409s, takes them as
// stored, and nothing is duplicated.
func TestReplayAfterCrash(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *target) {
		src := newFakeSource()
		src.session(t, "0195a1b2-0000-7000-8000-0000000000e1", "customer-db", "a@x.example", 5)
		dir := t.TempDir()
		s := newShipper(t, tg, src, dir, nil)
		if err := s.ShipAvailable(shipCtx(t)); err != nil {
			t.Fatal(err)
		}
		// The crash: the cursor on disk is older than what ES holds.
		if err := saveCursor(cursorPath(dir, tg.ds), cursorFile{DataStream: tg.ds,
			Cursor: src.recs[2].Next}); err != nil {
			t.Fatal(err)
		}
		src.session(t, "0195a1b2-0000-7000-8000-0000000000e2", "customer-db", "b@x.example", 1)

		s2 := newShipper(t, tg, src, dir, nil)
		if err := s2.ShipAvailable(shipCtx(t)); err != nil {
			t.Fatal(err)
		}
		if got, want := tg.storedIDs(t), sorted(src.ids(t)); !slices.Equal(got, want) {
			t.Fatalf("stored ids after replay\n%v\nwant\n%v", got, want)
		}
		if st := s2.Lag(); st.Shipped != uint64(len(src.recs)-3) || st.Behind != 0 {
			t.Errorf("replay stats %+v, want %d shipped", st, len(src.recs)-3)
		}
	})
}

// TestItem429Retried rejects single items (shard-level 429 and the
// flood-stage block) and checks only they are retried.
func TestItem429Retried(t *testing.T) {
	tg := doubleTarget(t, es8double.Options{})
	src := newFakeSource()
	src.session(t, "0195a1b2-0000-7000-8000-0000000000f1", "customer-db", "a@x.example", 6)
	tg.double.RejectItems(3, "")
	var n int
	s := newShipper(t, tg, src, t.TempDir(), func(_ int, err error) {
		var ie *ItemError
		if n++; !errors.As(err, &ie) || ie.Status != 429 {
			t.Errorf("retry for %v, want a 429 item", err)
		}
		if n == 1 {
			tg.double.SetReadOnly(true)
		} else {
			tg.double.SetReadOnly(false)
		}
	})
	if err := s.ShipAvailable(shipCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n < 2 {
		t.Errorf("%d retries, want at least 2", n)
	}
	if got, want := tg.storedIDs(t), sorted(src.ids(t)); !slices.Equal(got, want) {
		t.Fatalf("stored ids\n%v\nwant\n%v", got, want)
	}
}

// TestItem400StopsCursor ships an event the mapping refuses: the cursor
// stops in front of it, the failure is reported, and trying again neither
// skips it nor moves on.
func TestItem400StopsCursor(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *target) {
		// A template that maps vigil.database as a number: the one event
		// carrying a database name cannot be indexed.
		tpl, err := IndexTemplate(tg.ds, tg.tpl)
		if err != nil {
			t.Fatal(err)
		}
		tpl = bytes.Replace(tpl, []byte(`"database":{"type":"keyword"}`),
			[]byte(`"database":{"type":"long"}`), 1)
		ctx := shipCtx(t)
		tg.do(ctx, "DELETE", "/_data_stream/"+tg.ds, nil)
		if st, b := tg.do(ctx, "PUT", "/_index_template/"+tg.tpl,
			jsonRaw(tpl)); st != 200 {
			t.Fatalf("template: %d %s", st, b)
		}

		src := newFakeSource()
		id := "0195a1b2-0000-7000-8000-0000000000a4"
		src.session(t, id, "customer-db", "a@x.example", 1) // 4 events
		bad := src.add(t, audit.Event{SessionID: id, Kind: audit.KindCommand,
			Time: testStart.Add(time.Hour), Connection: "customer-db", Database: "billing",
			Command: &audit.Command{Message: "query", SQL: "SELECT 2"}})
		src.add(t, audit.Event{SessionID: id, Kind: audit.KindCommand,
			Time: testStart.Add(time.Hour), Connection: "customer-db",
			Command: &audit.Command{Message: "query", SQL: "SELECT 3"}})
		dir := t.TempDir()
		s := newShipper(t, tg, src, dir, nil)

		for range 2 {
			err := s.ShipAvailable(ctx)
			var ie *ItemError
			if !errors.As(err, &ie) {
				t.Fatalf("ShipAvailable: %v, want an *ItemError", err)
			}
			if ie.ID != id+":5" || ie.Status != 400 || !strings.Contains(ie.Type, "parsing") {
				t.Errorf("item error %+v", ie)
			}
			if c := readCursor(t, dir, tg.ds); c.Cursor != src.recs[3].Next {
				t.Errorf("cursor %+v, want it in front of the refused event %+v",
					c.Cursor, bad.Record.Offset)
			}
			st := s.Lag()
			if !errors.As(st.Blocked, &ie) || st.Behind != 2 {
				t.Errorf("stats %+v, want blocked with 2 behind", st)
			}
		}
		if op := operatorAction(s.Lag().Blocked); !strings.Contains(op, "setup") {
			t.Errorf("operator action %q does not say to run setup", op)
		}
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/export", nil))
		if rec.Code != 503 || !strings.Contains(rec.Body.String(), `"blocked":`) {
			t.Errorf("handler while blocked: %d %s", rec.Code, rec.Body)
		}
	})
}

// TestAPIKeyRequired checks a cluster that wants an API key: without it the
// shipper is blocked with a 401 RequestError, with it everything ships.
func TestAPIKeyRequired(t *testing.T) {
	const key = "dmlnaWwtdGVzdDpzZWNyZXQ="
	tg := doubleTarget(t, es8double.Options{APIKey: key})
	src := newFakeSource()
	src.session(t, "0195a1b2-0000-7000-8000-0000000000b1", "customer-db", "a@x.example", 1)

	anon, err := NewClient(ClientConfig{Addresses: tg.cfg.Addresses})
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewShipper(Options{Client: anon, Source: src, Dir: t.TempDir(),
		DataStream: tg.ds})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	err = s.ShipAvailable(shipCtx(t))
	var re *RequestError
	if !errors.As(err, &re) || re.Status != 401 {
		t.Fatalf("without a key: %v, want a 401 RequestError", err)
	}
	if got := tg.storedIDs(t); len(got) != 0 {
		t.Errorf("stored %v without a key", got)
	}
	ok := newShipper(t, tg, src, t.TempDir(), nil)
	if err := ok.ShipAvailable(shipCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := tg.storedIDs(t); len(got) != len(src.recs) {
		t.Errorf("stored %d, want %d", len(got), len(src.recs))
	}
}

// TestCursorFileAtomic checks the cursor file is replaced whole and no
// temporary file is left behind.
func TestCursorFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := cursorPath(dir, "logs-vigil.audit-default")
	for i := range 3 {
		if err := saveCursor(p, cursorFile{Cursor: Cursor{"segment-1", int64(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	c := readCursor(t, dir, "logs-vigil.audit-default")
	if c.Cursor.Offset != 2 {
		t.Errorf("cursor %+v", c)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != filepath.Base(p) {
		t.Errorf("directory holds %v", ents)
	}
}

// jsonRaw lets do send pre-encoded JSON.
type jsonRaw []byte

func (j jsonRaw) MarshalJSON() ([]byte, error) { return j, nil }
