package es

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vigilaudit/vigil/audit"
)

// Cursor is a position in the journal: the segment file and the byte
// offset of the next record to ship. The zero Cursor is the journal's
// start.
type Cursor struct {
	Segment string `json:"segment"`
	Offset  int64  `json:"offset"`
}

// Record is one line of the journal, an event record or a checkpoint,
// with the position just after it, so the cursor can stop between any two
// lines.
type Record struct {
	// Record is the event record; zero for a checkpoint.
	audit.Record
	// Checkpoint is set when the line is a signed checkpoint (Raw holds
	// the signed bytes verbatim).
	Checkpoint *audit.Checkpoint
	// Err is set when the line is damaged: not a record, or a hash that
	// does not match its bytes. The Shipper stops in front of it.
	Err  error
	Next Cursor
}

// Source is the journal as the Shipper reads it. JournalSource reads the
// segment files; tests use an in-memory one.
type Source interface {
	// ReadFrom returns up to max whole lines starting at pos, in journal
	// order, with Next set. It returns no records (and no error) when
	// nothing follows pos yet. A line the writer is still writing is not
	// returned.
	ReadFrom(pos Cursor, max int) ([]Record, error)
}

// cursorFile is the durable cursor: where the next unshipped record starts.
type cursorFile struct {
	DataStream string    `json:"data_stream"`
	Cursor     Cursor    `json:"cursor"`
	Shipped    uint64    `json:"shipped"` // events acknowledged under this file, ever
	Updated    time.Time `json:"updated"`
}

// cursorPath is the cursor file of one data stream in dir.
func cursorPath(dir, dataStream string) string {
	return filepath.Join(dir, "es-cursor-"+strings.ReplaceAll(dataStream, "/", "_")+".json")
}

// loadCursor reads the cursor file; a missing file is the journal's start.
func loadCursor(path string) (cursorFile, error) {
	var c cursorFile
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("es: read cursor: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("es: cursor file %s is damaged (delete it to re-ship the "+
			"journal; duplicates are refused by Elasticsearch): %w", path, err)
	}
	return c, nil
}

// saveCursor writes the cursor file atomically and durably: a temporary
// file in the same directory, fsync, rename over the old one, fsync of the
// directory.
func saveCursor(path string, c cursorFile) error {
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("es: encode cursor: %w", err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".es-cursor-*")
	if err != nil {
		return fmt.Errorf("es: write cursor: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(append(b, '\n'))
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("es: write cursor: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("es: write cursor: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("es: write cursor: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("es: write cursor: %w", err)
	}
	return nil
}
