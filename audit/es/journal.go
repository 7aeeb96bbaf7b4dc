package es

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/vigilaudit/vigil/audit"
)

// JournalSource returns the Source that reads the journal in dir: segment
// files read in order from a Cursor, without the writer's lock. A line the
// writer has not finished (no newline yet, or a 0 byte: the zero-filled
// preallocated tail of the segment being written) is left for a later call.
// Lines are read and decoded by package audit (ReadLine, ParseLine).
func JournalSource(dir string) Source { return journalSource{dir: dir} }

type journalSource struct{ dir string }

// ReadFrom implements Source.
func (j journalSource) ReadFrom(pos Cursor, max int) ([]Record, error) {
	// List first: a segment followed by another one is complete, so a
	// partial line can only be the newest segment's tail.
	segs, err := audit.SegmentNames(j.dir)
	if err != nil {
		return nil, fmt.Errorf("es: journal: %w", err)
	}
	if len(segs) == 0 {
		return nil, nil
	}
	i := 0
	if pos.Segment != "" {
		i = slices.Index(segs, pos.Segment)
		if i < 0 {
			return nil, fmt.Errorf("es: journal segment %s of the cursor is gone", pos.Segment)
		}
	} else {
		pos.Segment = segs[0]
	}
	var out []Record
	for ; i < len(segs) && len(out) < max; i++ {
		if segs[i] != pos.Segment {
			pos = Cursor{Segment: segs[i]}
		}
		recs, err := j.readSegment(pos, max-len(out))
		if err != nil {
			return out, err
		}
		out = append(out, recs...)
	}
	return out, nil
}

// readSegment reads up to max whole lines of one segment from pos.
func (j journalSource) readSegment(pos Cursor, max int) ([]Record, error) {
	f, err := os.Open(filepath.Join(j.dir, pos.Segment))
	if err != nil {
		return nil, fmt.Errorf("es: journal: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(pos.Offset, io.SeekStart); err != nil {
		return nil, fmt.Errorf("es: journal: %w", err)
	}
	br := bufio.NewReaderSize(f, 256<<10)
	off := pos.Offset
	var out []Record
	for len(out) < max {
		line, zero, err := audit.ReadLine(br)
		if zero || len(line) == 0 || line[len(line)-1] != '\n' {
			// The end, or a line still being written: the zero-filled
			// tail of the segment being written, or a record not yet
			// wholly written into it, is not yet written.
			if err != nil && !errors.Is(err, io.EOF) {
				return out, fmt.Errorf("es: journal %s: %w", pos.Segment, err)
			}
			return out, nil
		}
		r := parseLine(line[:len(line)-1])
		r.Segment, r.Offset = pos.Segment, off
		if r.Checkpoint != nil {
			r.Checkpoint.Segment, r.Checkpoint.Offset = pos.Segment, off
		}
		off += int64(len(line))
		r.Next = Cursor{Segment: pos.Segment, Offset: off}
		out = append(out, r)
	}
	return out, nil
}

// parseLine decodes one journal line (without its newline): an event
// record, its hash checked against its bytes, or a checkpoint. A line
// that is neither comes back with Err set.
func parseLine(line []byte) Record {
	rec, cp, err := audit.ParseLine(line)
	switch {
	case err != nil:
		return Record{Err: err}
	case cp != nil:
		return Record{Checkpoint: cp}
	}
	return Record{Record: *rec}
}
