package es

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"
	"github.com/elastic/go-elasticsearch/v8/esutil"

	"github.com/vigilaudit/vigil/audit"
)

// DefaultDataStream is where events go unless configured otherwise.
const DefaultDataStream = "logs-vigil.audit-default"

// Defaults for Options.
const (
	DefaultBatchSize      = 500
	DefaultReadAhead      = 10000
	DefaultMinBackoff     = 200 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultPollInterval   = time.Second
	DefaultLagLogInterval = 30 * time.Second
)

// Options configure a Shipper. Client, Source and Dir are required.
type Options struct {
	// Client talks to the cluster. Build it with NewClient: its own retries
	// are off, the Shipper retries (a client that also retries is only
	// slower to report).
	Client *elasticsearch.Client
	// Source is the journal.
	Source Source
	// Dir is audit.dir; the cursor file es-cursor-<data stream>.json lives
	// there.
	Dir string
	// DataStream is the target (DefaultDataStream when empty).
	DataStream string
	// Log receives lifecycle lines, lag reports and failures. Nil means
	// slog.Default().
	Log *slog.Logger
	// BatchSize is the most events sent in one bulk request.
	BatchSize int
	// ReadAhead is the most events held in memory beyond the cursor; it
	// bounds Stats.Behind.
	ReadAhead int
	// MinBackoff and MaxBackoff bound the wait between retries; the wait
	// doubles per failed attempt, with jitter. A blocked cursor (see
	// ItemError) is retried every MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// PollInterval is how often Run looks for new journal records.
	PollInterval time.Duration
	// LagLogInterval is how often lag and ongoing failures are logged.
	LagLogInterval time.Duration
	// OnRetry, when set, is called before each backoff wait with the
	// attempt number (from 1) and the failure being retried. It runs on the
	// shipping goroutine and must not block.
	OnRetry func(attempt int, err error)
	// Include, when set, selects the events to ship; the cursor moves over
	// the others without sending them. Checkpoints are always shipped.
	Include func(ev *audit.Event) bool
}

// Stats is the export's progress, as Lag reports it.
type Stats struct {
	// Cursor is the durable position: everything before it is stored.
	Cursor Cursor
	// Shipped counts events and checkpoints acknowledged (201, or 409
	// already stored) since the Shipper started.
	Shipped uint64
	// Skipped counts events Options.Include left out since the Shipper
	// started.
	Skipped uint64
	// Behind counts events read from the journal and not yet acknowledged.
	// When More is set the read-ahead is full and more are waiting.
	Behind int
	More   bool
	// Oldest is the time of the oldest unacknowledged event; zero when
	// Behind is 0.
	Oldest time.Time
	// Retries counts retried bulk attempts since the Shipper started.
	Retries uint64
	// LastError is the latest failure, retried or not; "" after a success.
	LastError string
	// Blocked is the failure the cursor is stopped at: an *ItemError or a
	// *RequestError that retrying cannot fix. Nil while events move.
	Blocked error
}

// Age is how long the oldest unacknowledged event has waited at now.
func (s Stats) Age(now time.Time) time.Duration {
	if s.Oldest.IsZero() {
		return 0
	}
	return now.Sub(s.Oldest)
}

// ItemError is an event Elasticsearch refused for a reason retrying cannot
// fix (a 400 mapping error, a 403). The cursor stays in front of it.
//
// Operator action: read Type and Reason. A mapping error (400
// document_parsing_exception or mapper_parsing_exception) means the index
// template does not fit the event: run `vigil elasticsearch setup` with the
// current vigil to install its template, then roll the data stream over
// (POST <data stream>/_rollover) so a new backing index takes the mapping.
// A 403 means the API key lacks the create_doc privilege on the data
// stream. The Shipper retries the event every MaxBackoff, so shipping
// resumes by itself once the cause is fixed; nothing is skipped.
type ItemError struct {
	ID     string // document id, session_id:seq
	Status int
	Type   string
	Reason string
}

func (e *ItemError) Error() string {
	return fmt.Sprintf("es: elasticsearch refused event %s: %d %s: %s", e.ID, e.Status, e.Type,
		e.Reason)
}

// RequestError is a whole bulk request refused for a reason retrying
// cannot fix: 401 (the API key is missing, wrong or expired), 403, or
// another 4xx. Operator action: fix audit.elasticsearch.api_key_file or the
// key's privileges; the Shipper retries every MaxBackoff.
type RequestError struct {
	Status int
	Body   string // the start of the response
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("es: elasticsearch refused the bulk request: %d: %s", e.Status, e.Body)
}

// Shipper follows the journal into Elasticsearch. Lag is safe to call from
// any goroutine; Run, ShipAvailable and Close must not run concurrently
// with each other.
type Shipper struct {
	opts Options
	log  *slog.Logger
	path string
	tr   *statusTransport
	bi   esutil.BulkIndexer

	mu    sync.Mutex // guards stats
	stats Stats

	// Set by Start: stop ends Run, done is closed when it has returned.
	stop context.CancelFunc
	done chan struct{}

	// Owned by the shipping goroutine.
	cur     cursorFile
	readPos Cursor
	buf     []pending
	lastLog time.Time
}

// pending is a read record waiting for its acknowledgement.
type pending struct {
	rec  Record
	id   string
	body []byte
	time time.Time
	skip bool  // left out by Options.Include
	err  error // the line is damaged or not a valid event
}

// outcome is what one attempt made of one item.
type outcome struct {
	state int
	err   error
}

const (
	unsent = iota
	retry
	done
	fatal
)

// NewShipper loads the cursor from opts.Dir and prepares the bulk indexer.
func NewShipper(opts Options) (*Shipper, error) {
	if opts.Client == nil || opts.Source == nil || opts.Dir == "" {
		return nil, errors.New("es: shipper needs a client, a source and a directory")
	}
	if opts.DataStream == "" {
		opts.DataStream = DefaultDataStream
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	setDefault(&opts.BatchSize, DefaultBatchSize)
	setDefault(&opts.ReadAhead, DefaultReadAhead)
	opts.ReadAhead = max(opts.ReadAhead, opts.BatchSize)
	setDefault(&opts.MinBackoff, DefaultMinBackoff)
	setDefault(&opts.MaxBackoff, DefaultMaxBackoff)
	setDefault(&opts.PollInterval, DefaultPollInterval)
	setDefault(&opts.LagLogInterval, DefaultLagLogInterval)

	s := &Shipper{opts: opts, log: opts.Log.With("data_stream", opts.DataStream),
		path: cursorPath(opts.Dir, opts.DataStream), tr: &statusTransport{next: opts.Client}}
	cur, err := loadCursor(s.path)
	if err != nil {
		return nil, err
	}
	cur.DataStream = opts.DataStream
	s.cur, s.readPos, s.stats.Cursor = cur, cur.Cursor, cur.Cursor
	s.bi, err = esutil.NewBulkIndexer(esutil.BulkIndexerConfig{
		Client:        s.tr,
		Index:         opts.DataStream,
		NumWorkers:    1,
		FlushBytes:    8 << 20,
		FlushInterval: time.Hour, // batches are flushed explicitly
		OnError: func(_ context.Context, err error) {
			s.log.Debug("elasticsearch bulk flush failed", "err", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("es: bulk indexer: %w", err)
	}
	return s, nil
}

func setDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Lag returns the export's progress.
func (s *Shipper) Lag() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Close stops the shipping goroutine Start began, waiting for it, and
// stops the bulk indexer. The cursor is already durable. Close on a nil
// *Shipper (export not configured) does nothing.
func (s *Shipper) Close(ctx context.Context) error {
	if s == nil {
		return nil
	}
	if s.stop != nil {
		s.stop()
		<-s.done
	}
	if err := s.bi.Close(ctx); err != nil {
		return fmt.Errorf("es: close bulk indexer: %w", err)
	}
	return nil
}

// Run ships until ctx ends, polling the journal every PollInterval. A
// blocked cursor, and a failure to read the journal or write the cursor
// file, is logged at Error and retried every MaxBackoff. Run returns nil
// when ctx ends.
func (s *Shipper) Run(ctx context.Context) error {
	s.log.Info("elasticsearch export started", "segment", s.cur.Cursor.Segment,
		"offset", s.cur.Cursor.Offset)
	defer s.log.Info("elasticsearch export stopped")
	for {
		err := s.ShipAvailable(ctx)
		wait := s.opts.PollInterval
		var ie *ItemError
		var re *RequestError
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.As(err, &ie), errors.As(err, &re):
			s.log.Error("elasticsearch export is stopped at an event it cannot store; "+
				"fix the cause, shipping resumes by itself", "err", err,
				"action", operatorAction(err))
			wait = s.opts.MaxBackoff
		case err != nil:
			s.log.Error("elasticsearch export cannot read the journal or write its cursor; "+
				"retrying", "err", err)
			wait = s.opts.MaxBackoff
		}
		s.maybeLogLag(false)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// operatorAction says what to do about a blocking failure.
func operatorAction(err error) string {
	var ie *ItemError
	var re *RequestError
	switch {
	case errors.As(err, &ie) && ie.Status == http.StatusForbidden:
		return "grant the API key create_doc on the data stream"
	case errors.As(err, &ie) && ie.Type == "":
		return "the journal record is damaged: run vigil audit verify"
	case errors.As(err, &ie):
		return "run vigil elasticsearch setup, then POST <data stream>/_rollover"
	case errors.As(err, &re) && re.Status == http.StatusUnauthorized:
		return "check audit.elasticsearch.api_key_file"
	}
	return "check the Elasticsearch cluster and the API key's privileges"
}

// ShipAvailable ships every record the journal holds now, retrying 429,
// 5xx and connection failures with backoff until they succeed or ctx ends.
// It returns nil when it has caught up, ctx's error, an *ItemError or
// *RequestError when the cursor is blocked, or a cursor-file error.
func (s *Shipper) ShipAvailable(ctx context.Context) error {
	for {
		if err := s.fill(); err != nil {
			return err
		}
		if len(s.buf) == 0 {
			return nil
		}
		if err := s.shipBatch(ctx); err != nil {
			return err
		}
	}
}

// fill tops the read-ahead buffer up from the journal.
func (s *Shipper) fill() error {
	room := s.opts.ReadAhead - len(s.buf)
	if room <= 0 {
		s.updateBehind(true)
		return nil
	}
	recs, err := s.opts.Source.ReadFrom(s.readPos, room)
	if err != nil {
		return fmt.Errorf("es: read journal: %w", err)
	}
	for _, r := range recs {
		s.buf = append(s.buf, s.prepare(r))
		s.readPos = r.Next
	}
	s.updateBehind(len(recs) == room)
	return nil
}

// prepare builds the document of one journal line.
func (s *Shipper) prepare(r Record) pending {
	p := pending{rec: r, id: fmt.Sprintf("%s@%d", r.Segment, r.Offset)}
	var doc *Document
	switch {
	case r.Err != nil:
		p.err = fmt.Errorf("journal line %s: %w", p.id, r.Err)
		return p
	case r.Checkpoint != nil:
		p.id, p.time = CheckpointID(r.Checkpoint), r.Checkpoint.Time
		doc, p.err = NewCheckpointDocument(r.Checkpoint)
	default:
		var ev *audit.Event
		doc, ev, p.err = NewDocument(r.Record)
		if p.err == nil {
			p.id, p.time = DocumentID(ev.SessionID, ev.Seq), ev.Time
			p.skip = s.opts.Include != nil && !s.opts.Include(ev)
		}
	}
	if p.err == nil && !p.skip {
		p.body, p.err = json.Marshal(doc)
	}
	return p
}

func (s *Shipper) updateBehind(more bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Behind, s.stats.More = len(s.buf), more
	s.stats.Oldest = time.Time{}
	if len(s.buf) > 0 {
		s.stats.Oldest = s.buf[0].time
	}
}

// shipBatch ships the first BatchSize buffered records, retrying what can
// be retried, and moves the cursor over every acknowledged prefix.
func (s *Shipper) shipBatch(ctx context.Context) error {
	n := min(len(s.buf), s.opts.BatchSize)
	state := make([]outcome, n)
	for i := range state {
		switch p := &s.buf[i]; {
		case p.err != nil:
			state[i] = outcome{fatal, &ItemError{ID: p.id, Reason: p.err.Error()}}
		case p.skip:
			state[i] = outcome{state: done}
		}
	}
	attempt := 0
	for {
		if err := s.send(ctx, s.buf[:n], state); err != nil {
			return err
		}
		k := 0
		for k < n && state[k].state == done {
			k++
		}
		if k > 0 {
			if err := s.commit(k); err != nil {
				return err
			}
			state, n, attempt = state[k:], n-k, 0
		}
		if n == 0 {
			s.setError(nil, nil)
			return nil
		}
		first := state[0]
		if first.state == fatal {
			s.setError(first.err, first.err)
			return first.err
		}
		attempt++
		s.setError(first.err, nil)
		if s.opts.OnRetry != nil {
			s.opts.OnRetry(attempt, first.err)
		}
		s.maybeLogLag(true)
		if err := sleep(ctx, s.backoff(attempt)); err != nil {
			return err
		}
		if err := s.fill(); err != nil {
			return err
		}
	}
}

// send offers every item not yet stored or refused to the indexer and
// waits for their outcomes.
func (s *Shipper) send(ctx context.Context, items []pending, state []outcome) error {
	var mu sync.Mutex
	set := func(i int, o outcome) {
		mu.Lock()
		state[i] = o
		mu.Unlock()
	}
	sent := false
	for i := range items {
		if state[i].state == done || state[i].state == fatal {
			continue
		}
		sent = true
		state[i] = outcome{retry, errors.New("es: no answer for the item")}
		err := s.bi.Add(ctx, esutil.BulkIndexerItem{
			Action:     "create",
			DocumentID: items[i].id,
			Body:       bytes.NewReader(items[i].body),
			OnSuccess: func(context.Context, esutil.BulkIndexerItem,
				esutil.BulkIndexerResponseItem) {
				set(i, outcome{state: done})
			},
			OnFailure: func(_ context.Context, it esutil.BulkIndexerItem,
				res esutil.BulkIndexerResponseItem, err error) {
				set(i, s.classify(it.DocumentID, res, err))
			},
		})
		if err != nil {
			return fmt.Errorf("es: queue event %s: %w", items[i].id, err)
		}
	}
	if !sent {
		return nil
	}
	if err := s.bi.Flush(ctx); err != nil {
		return fmt.Errorf("es: flush: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	return ctx.Err()
}

// classify turns a failed item into done (409: already stored), retry or
// fatal.
func (s *Shipper) classify(id string, res esutil.BulkIndexerResponseItem, err error) outcome {
	if err != nil {
		// The whole request failed: no answer, or a non-2xx answer.
		status := int(s.tr.last.Load())
		switch {
		case status == 0 || status == http.StatusTooManyRequests || status >= 500:
			return outcome{retry, fmt.Errorf("es: bulk request: %w", err)}
		default:
			return outcome{fatal, &RequestError{Status: status, Body: cut(err.Error(), 300)}}
		}
	}
	ie := &ItemError{ID: id, Status: res.Status, Type: res.Error.Type, Reason: res.Error.Reason}
	switch {
	case res.Status == http.StatusConflict && res.Error.Type == "version_conflict_engine_exception":
		// TODO(es): compare the stored event.hash with ours (mget) so a
		// document planted under our id is reported instead of accepted.
		return outcome{state: done}
	case res.Status == http.StatusTooManyRequests || res.Status >= 500:
		return outcome{retry, ie}
	}
	return outcome{fatal, ie}
}

// commit moves the durable cursor over the first k buffered records.
func (s *Shipper) commit(k int) error {
	var skipped uint64
	for _, p := range s.buf[:k] {
		if p.skip {
			skipped++
		}
	}
	shipped := uint64(k) - skipped
	s.cur.Cursor = s.buf[k-1].rec.Next
	s.cur.Shipped += shipped
	s.cur.Updated = time.Now().UTC()
	if err := saveCursor(s.path, s.cur); err != nil {
		// Elasticsearch has the events; a later replay gets 409s.
		return err
	}
	s.buf = s.buf[k:]
	s.mu.Lock()
	s.stats.Cursor = s.cur.Cursor
	s.stats.Shipped += shipped
	s.stats.Skipped += skipped
	s.mu.Unlock()
	s.updateBehind(s.stats.More)
	return nil
}

func (s *Shipper) setError(last, blocked error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.LastError = ""
	if last != nil {
		s.stats.LastError = last.Error()
		if blocked == nil {
			s.stats.Retries++
		}
	}
	s.stats.Blocked = blocked
}

// maybeLogLag logs the lag at most once per LagLogInterval: Info while
// events wait, Warn while requests are being retried.
func (s *Shipper) maybeLogLag(retrying bool) {
	now := time.Now()
	if now.Sub(s.lastLog) < s.opts.LagLogInterval {
		return
	}
	st := s.Lag()
	if st.Behind == 0 && st.LastError == "" {
		return
	}
	s.lastLog = now
	attrs := []any{"behind", st.Behind, "more_waiting", st.More,
		"oldest_age", st.Age(now).Round(time.Millisecond), "retries", st.Retries}
	if retrying {
		s.log.Warn("elasticsearch export retrying", append(attrs, "err", st.LastError)...)
		return
	}
	s.log.Info("elasticsearch export lag", attrs...)
}

// backoff is MinBackoff doubled per attempt, capped at MaxBackoff, with
// the upper half jittered.
func (s *Shipper) backoff(attempt int) time.Duration {
	d := s.opts.MaxBackoff
	if attempt < 30 {
		d = min(s.opts.MinBackoff<<(attempt-1), s.opts.MaxBackoff)
	}
	half := d / 2
	return half + rand.N(half+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// statusTransport remembers the HTTP status of the latest bulk request, so
// that a whole-request failure (which the indexer reports only as text)
// can be told apart: 429 and 5xx are retried, 401 is not. The indexer runs
// one worker, so the latest request is the one being reported.
type statusTransport struct {
	next esapi.Transport
	last atomic.Int64
}

func (t *statusTransport) Perform(r *http.Request) (*http.Response, error) {
	res, err := t.next.Perform(r)
	if err != nil {
		t.last.Store(0)
		return res, err
	}
	t.last.Store(int64(res.StatusCode))
	return res, nil
}
