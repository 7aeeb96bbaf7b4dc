package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrJournalUnavailable is wrapped by every error a Journal returns once it
// can no longer write durably (disk full, permission, I/O error, closed).
// The journal fails closed: after the first failure every Record, Sync, End
// and Begin fails too, so the caller can refuse new commands.
var ErrJournalUnavailable = errors.New("audit: journal unavailable")

// ErrSessionEnded is wrapped by Record and End when the session's End was
// already called.
var ErrSessionEnded = errors.New("audit: session already ended")

// Defaults for Options.
const (
	DefaultMaxSegmentSize = 64 << 20
	DefaultMaxPending     = 16 << 20
)

// Preallocation of the segment being written: the writer keeps at least
// preallocLow (a quarter of the chunk) zero-filled, fsynced bytes ahead of
// the write position, extending the file by a chunk of preallocChunk
// (less for segments smaller than that) whenever it comes closer, but
// never past MaxSegmentSize plus one chunk. A record written there with
// fdatasync then needs no metadata commit (the file's size does not
// change).
const preallocChunk = 4 << 20

// zeros is what preallocation writes.
var zeros = make([]byte, 256<<10)

// Options tune a Journal. The zero value is usable.
type Options struct {
	// Log receives lifecycle lines and anomalies (a torn tail cut back, a
	// write failure). Nil means slog.Default().
	Log *slog.Logger
	// MaxSegmentSize is the size at which the writer starts a new segment
	// file (DefaultMaxSegmentSize when zero). A segment may exceed it by
	// one batch: a batch is never split across segments.
	MaxSegmentSize int64
	// MaxPending caps the bytes recorded but not yet written; Record blocks
	// while the queue is over it (DefaultMaxPending when zero).
	MaxPending int
	// CheckpointInterval is how often the journal writes a signed
	// checkpoint, also when nothing happened (DefaultCheckpointInterval
	// when zero; a negative value writes only the one of a clean Close and
	// those Checkpoint asks for, for tests).
	CheckpointInterval time.Duration
	// Key signs the checkpoints. Nil means the key in dir/KeyFile, created
	// with mode 0600 by the first Open.
	Key ed25519.PrivateKey
}

// Journal is the append-only journal in one directory. One process writes
// it (Open takes an exclusive flock); any number may read it with
// ReadSessions and ReadSession. A Journal is safe for concurrent use.
type Journal struct {
	dir  string
	log  *slog.Logger
	opts Options
	lock *os.File
	// dangling are the sessions Open ended for a crash or a stop.
	dangling []string
	// unclean is set by Open when the journal held records and did not end
	// in a final checkpoint; cut is what Open cut from the newest segment.
	// recovery is then put in the next checkpoint.
	unclean  bool
	cut      int64
	recovery *Recovery

	mu      sync.Mutex
	wake    *sync.Cond    // the writer waits for work; Record waits for room
	pending []byte        // whole record lines, not yet handed to the writer
	queued  uint64        // records enqueued since Open (the last ticket)
	durable uint64        // records written and fsynced since Open
	notify  chan struct{} // closed and replaced whenever durable or err changes
	err     error         // the first write failure, wrapping ErrJournalUnavailable
	closed  bool
	batches int           // batches written, for tests of group commit
	done    chan struct{} // closed when the writer goroutine has returned

	closeOnce sync.Once
	closeErr  error

	// testHookWrite, when set, runs in the writer before each batch.
	testHookWrite func()

	// Checkpoint state, guarded by mu: the sessions to name in the next
	// checkpoint, and the chain of checkpoints so far.
	key    ed25519.PrivateKey
	keyID  string // base64 of the public key
	heads  map[string]*headState
	dirty  map[string]struct{} // sessions with an event since the last checkpoint
	cpSeq  uint64
	cpPrev [sha256.Size]byte // SHA-256 of the last checkpoint's signed bytes
	stop   chan struct{}     // closed by Close to stop the checkpoint ticker

	// Owned by the writer goroutine after Open.
	seg      *os.File
	segNum   int
	segSize  int64 // the logical end: bytes of whole records written
	segAlloc int64 // the file's size: segSize, then zeros
	noAlloc  bool  // preallocation failed in this segment; write without
}

// Open opens the journal in dir, creating dir (mode 0700) when needed, and
// starts its writer. It takes an exclusive lock on dir/journal.lock, so a
// second process (or a second Open in this one) fails. A torn last record
// of the newest segment, left by a crash in the middle of a write, is cut
// back to the last whole record with a Warn log line; a corrupt record
// followed by whole ones is an error (a *CorruptError).
func Open(dir string, opts Options) (*Journal, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.MaxSegmentSize <= 0 {
		opts.MaxSegmentSize = DefaultMaxSegmentSize
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.CheckpointInterval == 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: open journal: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	j := &Journal{dir: dir, log: opts.Log, opts: opts, lock: lock,
		notify: make(chan struct{}), done: make(chan struct{}), stop: make(chan struct{}),
		heads: map[string]*headState{}, dirty: map[string]struct{}{}}
	j.wake = sync.NewCond(&j.mu)
	if err := j.setKey(opts.Key); err != nil {
		lock.Close()
		return nil, err
	}
	stopped, err := j.openTail()
	if err != nil {
		lock.Close()
		return nil, err
	}
	go j.run()
	if err := j.endDangling(stopped); err != nil {
		j.Close()
		return nil, err
	}
	if opts.CheckpointInterval > 0 {
		go j.ticker(opts.CheckpointInterval)
	}
	j.log.Info("audit journal open", "dir", dir, "segment", segmentName(j.segNum),
		"size", j.segSize, "checkpoint", j.cpSeq, "key", j.keyID)
	return j, nil
}

// setKey takes the checkpoint key from the options or from dir/KeyFile.
func (j *Journal) setKey(k ed25519.PrivateKey) error {
	if k == nil {
		var created bool
		var err error
		if k, created, err = loadOrCreateKey(j.dir); err != nil {
			return err
		}
		if created {
			j.log.Info("audit journal: created the checkpoint signing key",
				"file", filepath.Join(j.dir, KeyFile))
		}
	}
	j.key = k
	j.keyID = base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
	return nil
}

// lockDir takes the journal's exclusive flock, without waiting.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "journal.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open journal: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: journal %s is in use by another writer: %w", dir, err)
	}
	return f, nil
}

// openTail recovers the newest segment and opens it for appending, or
// creates the first one, and loads the checkpoint state (see loadState).
func (j *Journal) openTail() (stopped bool, err error) {
	segs, err := listSegments(j.dir)
	if err != nil {
		return false, err
	}
	if len(segs) == 0 {
		return false, j.createSegment(1)
	}
	last := segs[len(segs)-1]
	size, err := j.recover(last)
	if err != nil {
		return false, err
	}
	if stopped, err = j.loadState(segs); err != nil {
		return false, err
	}
	if !stopped && (len(segs) > 1 || size > 0 || j.cut > 0) {
		j.unclean = true
	}
	f, err := os.OpenFile(filepath.Join(j.dir, segmentName(last)), os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Errorf("audit: open journal: %w", err)
	}
	j.seg, j.segNum, j.segSize, j.segAlloc, j.noAlloc = f, last, size, size, false
	return stopped, nil
}

// recover checks the newest segment and cuts it back to its logical end:
// a torn tail, and the zero-filled tail a crash leaves in a preallocated
// segment. It returns the segment's size afterwards.
func (j *Journal) recover(num int) (int64, error) {
	path := filepath.Join(j.dir, segmentName(num))
	res, err := scanSegment(path, visitor{
		record:     func(Record) error { return nil },
		checkpoint: func(Checkpoint) error { return nil }})
	if err != nil {
		return 0, err
	}
	if res.end == res.size {
		return res.size, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return 0, fmt.Errorf("audit: recover %s: %w", segmentName(num), err)
	}
	defer f.Close()
	if err := f.Truncate(res.end); err != nil {
		return 0, fmt.Errorf("audit: recover %s: %w", segmentName(num), err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("audit: recover %s: %w", segmentName(num), err)
	}
	j.cut = res.size - res.end
	if res.tornAt >= 0 {
		j.log.Warn("audit journal: cut a torn record at the end of a segment",
			"segment", segmentName(num), "offset", res.end, "bytes", res.size-res.end)
	} else {
		j.log.Warn("audit journal: cut the preallocated zero tail of a segment left by a crash",
			"segment", segmentName(num), "offset", res.end, "bytes", res.size-res.end)
	}
	return res.end, nil
}

// createSegment creates segment num, makes its directory entry durable and
// makes it the current segment.
func (j *Journal) createSegment(num int) error {
	path := filepath.Join(j.dir, segmentName(num))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("audit: create segment: %w", err)
	}
	if err := syncDir(j.dir); err != nil {
		f.Close()
		return fmt.Errorf("audit: create segment: %w", err)
	}
	j.seg, j.segNum, j.segSize, j.segAlloc, j.noAlloc = f, num, 0, 0, false
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Close writes and fsyncs everything recorded so far, stops the writer and
// releases the lock. Later calls on the Journal or its Recorders fail with
// ErrJournalUnavailable. Close returns the journal's write failure, if any.
func (j *Journal) Close() error {
	j.closeOnce.Do(j.close)
	return j.closeErr
}

func (j *Journal) close() {
	close(j.stop)
	j.mu.Lock()
	if j.unavailable() == nil {
		if err := j.queueCheckpoint(true); err != nil {
			j.log.Error("audit journal: final checkpoint not written", "err", err)
		}
	}
	j.closed = true
	j.wake.Broadcast()
	j.mu.Unlock()
	<-j.done

	var errs []error
	j.mu.Lock()
	if j.err != nil {
		errs = append(errs, j.err)
	}
	failed := j.err != nil
	j.mu.Unlock()
	if !failed { // after a failure the next Open cuts the tail
		if err := j.trim(); err != nil {
			errs = append(errs, fmt.Errorf("audit: close journal: %w", err))
		}
	}
	if err := j.seg.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		errs = append(errs, fmt.Errorf("audit: close journal: %w", err))
	}
	if err := j.lock.Close(); err != nil {
		errs = append(errs, fmt.Errorf("audit: close journal: %w", err))
	}
	j.closeErr = errors.Join(errs...)
	j.log.Info("audit journal closed", "dir", j.dir)
}

// enqueue hands one record line, of event ev with hash, to the writer and
// returns its ticket, which wait compares with the durable count.
func (j *Journal) enqueue(line []byte, ev *Event, hash [sha256.Size]byte) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.err == nil && !j.closed && len(j.pending) > j.opts.MaxPending {
		j.wake.Wait()
	}
	if err := j.unavailable(); err != nil {
		return 0, err
	}
	j.pending = append(j.pending, line...)
	j.queued++
	j.noteHead(ev, hash)
	j.wake.Broadcast()
	return j.queued, nil
}

// unavailable returns why the journal cannot take records; j.mu is held.
func (j *Journal) unavailable() error {
	if j.err != nil {
		return j.err
	}
	if j.closed {
		return fmt.Errorf("%w: closed", ErrJournalUnavailable)
	}
	return nil
}

// run is the writer goroutine: it takes everything queued, writes it in one
// write, fsyncs once for the whole batch (group commit) and wakes the
// waiters.
func (j *Journal) run() {
	defer close(j.done)
	var batch []byte
	for {
		j.mu.Lock()
		for len(j.pending) == 0 && !j.closed && j.err == nil {
			j.wake.Wait()
		}
		if j.err != nil || len(j.pending) == 0 {
			j.mu.Unlock()
			return
		}
		batch, j.pending = j.pending, batch[:0]
		upto, hook := j.queued, j.testHookWrite
		j.wake.Broadcast() // room for blocked Record calls
		j.mu.Unlock()

		if hook != nil {
			hook()
		}
		err := j.write(batch)

		j.mu.Lock()
		if err != nil {
			j.err = fmt.Errorf("%w: %w", ErrJournalUnavailable, err)
			j.log.Error("audit journal cannot be written; refusing new records",
				"alert", true, "dir", j.dir, "segment", segmentName(j.segNum), "err", err)
		} else {
			j.durable = upto
			j.batches++
		}
		close(j.notify)
		j.notify = make(chan struct{})
		j.wake.Broadcast()
		j.mu.Unlock()
	}
}

// write writes batch at the logical end of the current segment, rotating
// first when the batch would take it over MaxSegmentSize, into the
// preallocated zeros, and fdatasyncs: in pieces of at most maxWriteSize,
// each made durable before the next, so that a crash can tear only the
// last piece (see checkZeroTail).
func (j *Journal) write(batch []byte) error {
	if j.segSize > 0 && j.segSize+int64(len(batch)) > j.opts.MaxSegmentSize {
		if err := j.rotate(); err != nil {
			return err
		}
	}
	j.preallocate(j.segSize + int64(len(batch)))
	for len(batch) > 0 {
		piece := batch[:min(len(batch), maxWriteSize)]
		n, err := j.seg.WriteAt(piece, j.segSize)
		j.segSize += int64(n)
		j.segAlloc = max(j.segAlloc, j.segSize)
		if err != nil {
			return fmt.Errorf("write %s: %w", segmentName(j.segNum), err)
		}
		// fdatasync also commits the size when the write went past the
		// preallocated end.
		if err := unix.Fdatasync(int(j.seg.Fd())); err != nil {
			return fmt.Errorf("fdatasync %s: %w", segmentName(j.segNum), err)
		}
		batch = batch[n:]
	}
	return nil
}

// preallocate makes sure the current segment holds zeros, fsynced, up to
// need plus a quarter chunk, extending it a chunk at a time but not past
// MaxSegmentSize plus a chunk. A failure (a full disk, a file size limit)
// only turns preallocation off for this segment: the write that follows
// then extends the file itself, and fails on its own if it must.
func (j *Journal) preallocate(need int64) {
	chunk := min(int64(preallocChunk), max(j.opts.MaxSegmentSize, 4096))
	limit := j.opts.MaxSegmentSize + chunk
	if j.noAlloc || need+chunk/4 <= j.segAlloc || j.segAlloc >= limit {
		return
	}
	target := j.segAlloc + chunk
	for target < need+chunk/4 {
		target += chunk
	}
	target = min(target, limit)
	err := j.fillZeros(j.segAlloc, target)
	if err == nil {
		err = j.seg.Sync()
	}
	if err != nil {
		j.noAlloc = true
		j.seg.Truncate(j.segAlloc) // best effort: zeros past it are harmless
		j.log.Warn("audit journal: cannot preallocate; writing without",
			"segment", segmentName(j.segNum), "err", err)
		return
	}
	j.segAlloc = target
}

// fillZeros writes zeros into the current segment from off to end.
func (j *Journal) fillZeros(off, end int64) error {
	for off < end {
		n, err := j.seg.WriteAt(zeros[:min(int64(len(zeros)), end-off)], off)
		off += int64(n)
		if err != nil {
			return err
		}
	}
	return nil
}

// trim cuts the current segment's zero tail, so that a finished segment
// ends in its last record, and fsyncs it.
func (j *Journal) trim() error {
	if j.segAlloc > j.segSize {
		if err := j.seg.Truncate(j.segSize); err != nil {
			return fmt.Errorf("truncate %s: %w", segmentName(j.segNum), err)
		}
		j.segAlloc = j.segSize
	}
	if err := j.seg.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", segmentName(j.segNum), err)
	}
	return nil
}

// rotate trims and closes the current segment and starts the next one.
func (j *Journal) rotate() error {
	old := j.segNum
	if err := j.trim(); err != nil {
		return err
	}
	if err := j.seg.Close(); err != nil {
		return fmt.Errorf("close %s: %w", segmentName(old), err)
	}
	if err := j.createSegment(old + 1); err != nil {
		return err
	}
	j.log.Debug("audit journal: new segment", "segment", segmentName(j.segNum))
	return nil
}

// wait returns when the record with the given ticket is durable, when the
// journal fails, or when ctx ends.
func (j *Journal) wait(ctx context.Context, ticket uint64) error {
	for {
		j.mu.Lock()
		if j.err != nil {
			err := j.err
			j.mu.Unlock()
			return err
		}
		if j.durable >= ticket {
			j.mu.Unlock()
			return nil
		}
		ch := j.notify
		j.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("audit: waiting for the journal: %w", ctx.Err())
		}
	}
}

// waitTicket is wait without a deadline.
func (j *Journal) waitTicket(ticket uint64) error {
	return j.wait(context.Background(), ticket)
}

// encodeRecord returns one journal line:
// {"hash":"<hex>","prev":"<hex>","event":<canonical>}\n
func encodeRecord(prev [sha256.Size]byte, canonical []byte) (line []byte, hash [sha256.Size]byte) {
	hash = chainHash(prev, canonical)
	line = make([]byte, 0, len(canonical)+160)
	line = append(line, `{"hash":"`...)
	line = hex.AppendEncode(line, hash[:])
	line = append(line, `","prev":"`...)
	line = hex.AppendEncode(line, prev[:])
	line = append(line, `","event":`...)
	line = append(line, canonical...)
	line = append(line, "}\n"...)
	return line, hash
}

// chainHash is SHA-256 over the previous hash and the canonical bytes.
func chainHash(prev [sha256.Size]byte, canonical []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write(prev[:])
	h.Write(canonical)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}
