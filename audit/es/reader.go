package es

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/elastic/go-elasticsearch/v8"

	"github.com/vigilaudit/vigil/audit"
)

// Reader reads audit events back from the data stream, with the audit
// package's types, so `vigil audit sessions | show | verify` work the same
// against Elasticsearch as against the journal. It is safe for concurrent
// use.
//
// Events are decoded from event.original (the canonical bytes), never from
// the ECS fields, and a record's Hash and Prev come from event.hash and
// vigil.prev_hash, so audit.VerifyChain checks what was journaled. Search
// sees what the data stream has refreshed (about a second behind).
type Reader struct {
	c        *elasticsearch.Client
	ds       string
	pageSize int
}

// NewReader reads dataStream (DefaultDataStream when empty) through c.
func NewReader(c *elasticsearch.Client, dataStream string) *Reader {
	if dataStream == "" {
		dataStream = DefaultDataStream
	}
	return &Reader{c: c, ds: dataStream, pageSize: 1000}
}

// storedDoc is the part of a stored document the reader needs.
type storedDoc struct {
	Event struct {
		Hash     string `json:"hash"`
		Original string `json:"original"`
	} `json:"event"`
	Vigil struct {
		SessionID  string `json:"session_id"`
		PrevHash   string `json:"prev_hash"`
		Checkpoint struct {
			Signature string `json:"signature"`
		} `json:"checkpoint"`
	} `json:"vigil"`
}

// A search: its sort (unique per document, for search_after) and the
// source fields it needs.
var (
	bySessionSeq = []any{map[string]any{"vigil.session_id": "asc"},
		map[string]any{"event.sequence": "asc"}}
	byCheckpoint = []any{map[string]any{"@timestamp": "asc"},
		map[string]any{"vigil.checkpoint.key": "asc"}, map[string]any{"event.sequence": "asc"}}
	eventFields = []string{"event.hash", "event.original", "vigil.session_id",
		"vigil.prev_hash"}
)

// The Reader is the Elasticsearch side of `vigil audit verify`.
var _ audit.Source = (*Reader)(nil)

// Sessions returns the id of every session with a stored event, sorted.
//
// TODO(es): this pages through every event's session id; a composite
// aggregation on vigil.session_id would return only the ids (the test
// double does not answer aggregations yet).
func (r *Reader) Sessions(ctx context.Context) ([]string, error) {
	var ids []string
	q := map[string]any{"exists": map[string]any{"field": "vigil.session_id"}}
	err := r.scan(ctx, q, bySessionSeq, []string{"vigil.session_id"},
		func(_ string, d *storedDoc) error {
			if n := len(ids); n == 0 || ids[n-1] != d.Vigil.SessionID {
				ids = append(ids, d.Vigil.SessionID)
			}
			return nil
		})
	return ids, err
}

// Records returns one session's records in seq order (ReadRecords).
func (r *Reader) Records(ctx context.Context, session string) ([]audit.Record, error) {
	return r.ReadRecords(ctx, session)
}

// Checkpoints returns every stored checkpoint, oldest first, decoded from
// the signed bytes in event.original (Raw holds them verbatim) with the
// signature from vigil.checkpoint.signature. Segment and Offset stay
// empty: the order of documents in the data stream is not the journal's
// (retries and rollovers reorder them), so Verify must not compare places.
func (r *Reader) Checkpoints(ctx context.Context) ([]audit.Checkpoint, error) {
	var out []audit.Checkpoint
	q := map[string]any{"term": map[string]any{"event.action": "checkpoint"}}
	err := r.scan(ctx, q, byCheckpoint, []string{"event.original",
		"vigil.checkpoint.signature"}, func(index string, d *storedDoc) error {
		raw := json.RawMessage(d.Event.Original)
		var cp audit.Checkpoint
		if err := json.Unmarshal(raw, &cp); err != nil {
			return fmt.Errorf("es: checkpoint in %s: %w", index, err)
		}
		cp.Raw, cp.Signature = raw, d.Vigil.Checkpoint.Signature
		out = append(out, cp)
		return nil
	})
	return out, err
}

// ReadRecords returns one session's records in seq order, as
// audit.ReadRecords does for the journal; Segment holds the backing index
// and Offset the seq. A session with no stored event is an error wrapping
// audit.ErrSessionNotFound.
func (r *Reader) ReadRecords(ctx context.Context, sessionID string) ([]audit.Record, error) {
	q := map[string]any{"term": map[string]any{"vigil.session_id": sessionID}}
	var out []audit.Record
	err := r.scan(ctx, q, bySessionSeq, eventFields, func(index string, d *storedDoc) error {
		out = append(out, audit.Record{Hash: d.Event.Hash, Prev: d.Vigil.PrevHash,
			Event: json.RawMessage(d.Event.Original), Segment: index,
			Offset: int64(len(out) + 1)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s (in %s)", audit.ErrSessionNotFound, sessionID, r.ds)
	}
	return out, nil
}

// ReadSession returns one session's events in seq order.
func (r *Reader) ReadSession(ctx context.Context, sessionID string) ([]audit.Event, error) {
	recs, err := r.ReadRecords(ctx, sessionID)
	if err != nil {
		return nil, err
	}
	evs := make([]audit.Event, len(recs))
	for i, rec := range recs {
		if err := json.Unmarshal(rec.Event, &evs[i]); err != nil {
			return nil, fmt.Errorf("es: event %s in %s: %w",
				DocumentID(sessionID, uint64(i+1)), rec.Segment, err)
		}
	}
	return evs, nil
}

// ReadSessions summarises the sessions f selects, ordered by opening time,
// with the same meaning as audit.ReadSessions. It finds the sessions with
// an event matching f's connection and identity, then reads all their
// events.
//
// TODO(es): this reads every event of the selected sessions; for large
// windows a composite aggregation on vigil.session_id would summarise in
// the cluster.
func (r *Reader) ReadSessions(ctx context.Context, f audit.Filter) ([]audit.SessionSummary,
	error) {
	ids := map[string]bool{}
	err := r.scan(ctx, sessionQuery(f), bySessionSeq, []string{"vigil.session_id"},
		func(_ string, d *storedDoc) error {
			ids[d.Vigil.SessionID] = true
			return nil
		})
	if err != nil {
		return nil, err
	}
	list := make([]string, 0, len(ids))
	for id := range ids {
		list = append(list, id)
	}
	slices.Sort(list)
	byID := map[string]*audit.SessionSummary{}
	for chunk := range slices.Chunk(list, 500) {
		q := map[string]any{"terms": map[string]any{"vigil.session_id": chunk}}
		err := r.scan(ctx, q, bySessionSeq, eventFields, func(_ string, d *storedDoc) error {
			var ev audit.Event
			if err := json.Unmarshal([]byte(d.Event.Original), &ev); err != nil {
				return fmt.Errorf("es: session %s: %w", d.Vigil.SessionID, err)
			}
			s := byID[ev.SessionID]
			if s == nil {
				s = &audit.SessionSummary{ID: ev.SessionID}
				byID[ev.SessionID] = s
			}
			s.Add(&ev)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	out := make([]audit.SessionSummary, 0, len(byID))
	for _, s := range byID {
		if !s.Closed.IsZero() {
			s.DurationMS = float64(s.Closed.Sub(s.Opened).Microseconds()) / 1000
		}
		if f.Match(s) {
			out = append(out, *s)
		}
	}
	slices.SortFunc(out, func(a, b audit.SessionSummary) int {
		return cmp.Or(a.Opened.Compare(b.Opened), strings.Compare(a.ID, b.ID))
	})
	return out, nil
}

// sessionQuery narrows the search to events of possibly selected sessions.
func sessionQuery(f audit.Filter) map[string]any {
	var filter []any
	if f.Connection != "" {
		filter = append(filter, map[string]any{"term": map[string]any{
			"vigil.connection": f.Connection}})
	}
	if f.Identity != "" {
		var should []any
		for _, field := range []string{"user.name", "user.id", "vigil.identity.oid",
			"vigil.identity.appid", "vigil.identity.upn", "vigil.identity.name",
			"vigil.identity.sub"} {
			should = append(should, map[string]any{"term": map[string]any{field: map[string]any{
				"value": f.Identity, "case_insensitive": true}}})
		}
		filter = append(filter, map[string]any{"bool": map[string]any{"should": should,
			"minimum_should_match": 1}})
	}
	if !f.Until.IsZero() {
		filter = append(filter, map[string]any{"range": map[string]any{"@timestamp": map[string]any{
			"lte": f.Until.UTC().Format("2006-01-02T15:04:05.000Z07:00")}}})
	}
	if len(filter) == 0 {
		return map[string]any{"match_all": map[string]any{}}
	}
	return map[string]any{"bool": map[string]any{"filter": filter}}
}

// scan runs query over the data stream in the order of sort, page by page
// with search_after, and calls fn for every hit with the fields named. A
// data stream that does not exist yet holds nothing.
func (r *Reader) scan(ctx context.Context, query map[string]any, sort []any, fields []string,
	fn func(index string, d *storedDoc) error) error {
	var after []any
	for {
		body := map[string]any{
			"query":   query,
			"size":    r.pageSize,
			"sort":    sort,
			"_source": fields,
		}
		if after != nil {
			body["search_after"] = after
		}
		b, _ := json.Marshal(body)
		res, err := r.c.Search(r.c.Search.WithContext(ctx), r.c.Search.WithIndex(r.ds),
			r.c.Search.WithBody(bytes.NewReader(b)))
		if err != nil {
			return fmt.Errorf("es: search %s: %w", r.ds, err)
		}
		var page struct {
			Hits struct {
				Hits []struct {
					Index  string    `json:"_index"`
					Source storedDoc `json:"_source"`
					Sort   []any     `json:"sort"`
				} `json:"hits"`
			} `json:"hits"`
		}
		if res.StatusCode == 404 {
			res.Body.Close()
			return nil
		}
		if res.IsError() {
			return check("search "+r.ds, res, nil)
		}
		err = json.NewDecoder(res.Body).Decode(&page)
		res.Body.Close()
		if err != nil {
			return fmt.Errorf("es: search %s: %w", r.ds, err)
		}
		for i := range page.Hits.Hits {
			h := &page.Hits.Hits[i]
			if err := fn(h.Index, &h.Source); err != nil {
				return err
			}
		}
		if len(page.Hits.Hits) < r.pageSize {
			return nil
		}
		after = page.Hits.Hits[len(page.Hits.Hits)-1].Sort
		if after == nil {
			return errors.New("es: search returned no sort values to page on")
		}
	}
}
