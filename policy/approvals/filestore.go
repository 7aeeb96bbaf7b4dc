package approvals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"
)

// fileRetention is how long a FileStore keeps a request after it ended
// (beyond an open approval window). The session's audit keeps every step
// for good; the store only needs recent ones.
const fileRetention = 7 * 24 * time.Hour

// FileStore keeps requests in one JSON file, approvals.json, in a
// directory (normally audit.dir), for one machine. Every change takes an
// exclusive flock(2) on approvals.lock beside it, reads the file, and
// replaces it atomically (write, fsync, rename), so goroutines and
// processes sharing the directory never lose each other's changes; reads
// see either the old or the new file. Requests that ended more than seven
// days ago (and whose window has closed) are dropped on the next change.
//
// FileStore does not tell about changes: processes sharing it find them by
// polling (Options.PollInterval). It suits the handful of requests a
// machine has at a time; it rewrites the whole file on each change.
type FileStore struct {
	path string
	lock string
	mu   sync.Mutex // serialises this process's writers before flock
}

// fileRecord is one request and its steps, as stored.
type fileRecord struct {
	Request *Request `json:"request"`
	Steps   []Step   `json:"steps"`
}

// fileData is the whole file.
type fileData struct {
	Requests map[string]*fileRecord `json:"requests"`
}

// NewFileStore returns a store in dir, creating dir (mode 0700) when it
// does not exist.
func NewFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("approvals: file store: %w", err)
	}
	return &FileStore{
		path: filepath.Join(dir, "approvals.json"),
		lock: filepath.Join(dir, "approvals.lock"),
	}, nil
}

// Create implements Store.
func (f *FileStore) Create(_ context.Context, r *Request, first Step) error {
	return f.update(func(d *fileData) error {
		if _, ok := d.Requests[r.ID]; ok {
			return fmt.Errorf("approvals: file store: request %s exists", r.ID)
		}
		d.Requests[r.ID] = &fileRecord{Request: r.clone(), Steps: []Step{first}}
		return nil
	})
}

// Get implements Store.
func (f *FileStore) Get(_ context.Context, id string) (*Request, []Step, error) {
	d, err := f.read()
	if err != nil {
		return nil, nil, err
	}
	rec, ok := d.Requests[id]
	if !ok {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return rec.Request, rec.Steps, nil
}

// List implements Store.
func (f *FileStore) List(_ context.Context, status string) ([]*Request, error) {
	d, err := f.read()
	if err != nil {
		return nil, err
	}
	var out []*Request
	for _, rec := range d.Requests {
		if status == "" || rec.Request.Status == status {
			out = append(out, rec.Request)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// AddStep implements Store.
func (f *FileStore) AddStep(_ context.Context, id string, s Step) error {
	return f.update(func(d *fileData) error {
		rec, ok := d.Requests[id]
		if !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		rec.Steps = append(rec.Steps, s)
		return nil
	})
}

// Decide implements Store.
func (f *FileStore) Decide(_ context.Context, id string, dec Decision) (*Request, error) {
	var out *Request
	err := f.update(func(d *fileData) error {
		rec, ok := d.Requests[id]
		if !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if !rec.Request.Pending() {
			return fmt.Errorf("%w: %s is %s", ErrNotPending, id, rec.Request.Status)
		}
		dec.apply(rec.Request)
		rec.Steps = append(rec.Steps, dec.step())
		out = rec.Request.clone()
		return nil
	})
	return out, err
}

// Covered implements Store.
func (f *FileStore) Covered(_ context.Context, key, connection, sql string,
	now time.Time) (bool, error) {
	d, err := f.read()
	if err != nil {
		return false, err
	}
	for _, rec := range d.Requests {
		if covers(rec.Request, key, connection, sql, now) {
			return true, nil
		}
	}
	return false, nil
}

// Close implements Store; a FileStore holds nothing open.
func (f *FileStore) Close() error { return nil }

// read returns the file's contents; a missing file is an empty store.
func (f *FileStore) read() (*fileData, error) {
	d := &fileData{Requests: map[string]*fileRecord{}}
	b, err := os.ReadFile(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return nil, fmt.Errorf("approvals: file store: %w", err)
	}
	if err := json.Unmarshal(b, d); err != nil {
		return nil, fmt.Errorf("approvals: file store %s: %w", f.path, err)
	}
	if d.Requests == nil {
		d.Requests = map[string]*fileRecord{}
	}
	return d, nil
}

// update runs change on the file's contents under the lock and writes the
// result, unless change fails.
func (f *FileStore) update(change func(*fileData) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	lk, err := os.OpenFile(f.lock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("approvals: file store: %w", err)
	}
	defer lk.Close()
	if err := flock(lk); err != nil {
		return fmt.Errorf("approvals: file store: lock %s: %w", f.lock, err)
	}

	d, err := f.read()
	if err != nil {
		return err
	}
	if err := change(d); err != nil {
		return err
	}
	prune(d, time.Now())
	return f.write(d)
}

// flock takes an exclusive lock on f, retrying when a signal interrupts
// the wait. Closing f releases it.
func flock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// write replaces the file with d: a temporary file, fsync, rename, and
// fsync of the directory.
func (f *FileStore) write(d *fileData) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return fmt.Errorf("approvals: file store: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.path), ".approvals-*.json")
	if err != nil {
		return fmt.Errorf("approvals: file store: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("approvals: file store: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("approvals: file store: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("approvals: file store: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("approvals: file store: %w", err)
	}
	if dir, err := os.Open(filepath.Dir(f.path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}

// prune drops requests that ended more than fileRetention ago and whose
// approval window has closed.
func prune(d *fileData, now time.Time) {
	for id, rec := range d.Requests {
		r := rec.Request
		if r.Pending() {
			continue
		}
		end := r.Decided.Add(r.Window)
		if now.Sub(end) > fileRetention {
			delete(d.Requests, id)
		}
	}
}
