package es

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vigilaudit/vigil/audit"
)

// Journal segment files, as package audit names them: segment-NNNNNNNN.jsonl.
const (
	segmentPrefix = "segment-"
	segmentSuffix = ".jsonl"
)

// checkpointPrefix starts a checkpoint line; event lines start {"hash":.
var checkpointPrefix = []byte(`{"checkpoint":`)

// JournalSource returns the Source that reads the journal in dir: segment
// files read in order from a Cursor, without the writer's lock. A line the
// writer has not finished (no newline yet, or a 0 byte: the zero-filled
// preallocated tail of the segment being written) is left for a later call.
//
// TODO(es): this reads package audit's line format itself because audit
// has no positional reader; an audit.ReadFrom(dir, pos, max) would let
// this file go.
func JournalSource(dir string) Source { return journalSource{dir: dir} }

type journalSource struct{ dir string }

// segments returns the segment file names in dir, oldest first.
func (j journalSource) segments() ([]string, error) {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("es: journal: %w", err)
	}
	type seg struct {
		num  int
		name string
	}
	var segs []seg
	for _, e := range ents {
		name := e.Name()
		num, ok := strings.CutPrefix(name, segmentPrefix)
		if !ok || e.IsDir() {
			continue
		}
		num, ok = strings.CutSuffix(num, segmentSuffix)
		if n, err := strconv.Atoi(num); ok && err == nil && n > 0 {
			segs = append(segs, seg{n, name})
		}
	}
	slices.SortFunc(segs, func(a, b seg) int { return a.num - b.num })
	names := make([]string, len(segs))
	for i, s := range segs {
		names[i] = s.name
	}
	return names, nil
}

// ReadFrom implements Source.
func (j journalSource) ReadFrom(pos Cursor, max int) ([]Record, error) {
	// List first: a segment followed by another one is complete, so a
	// partial line can only be the newest segment's tail.
	segs, err := j.segments()
	if err != nil || len(segs) == 0 {
		return nil, err
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
		line, zero, err := nextLine(br)
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

// nextLine reads one line with its newline. zero reports a 0 byte in it:
// package audit preallocates the segment it writes with zeros, and no
// record holds one, so that is the segment's end for now. The zeros are
// not read on as part of the line.
func nextLine(br *bufio.Reader) (line []byte, zero bool, err error) {
	for {
		frag, err := br.ReadSlice('\n')
		if bytes.IndexByte(frag, 0) >= 0 {
			return line, true, nil
		}
		line = append(line, frag...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			return line, false, err
		}
	}
}

// parseLine decodes one journal line (without its newline): an event
// record, its hash checked against its bytes, or a checkpoint. A line
// that is neither comes back with Err set.
func parseLine(line []byte) Record {
	if bytes.HasPrefix(line, checkpointPrefix) {
		var outer struct {
			Checkpoint json.RawMessage `json:"checkpoint"`
			Sig        string          `json:"sig"`
		}
		var cp audit.Checkpoint
		if err := json.Unmarshal(line, &outer); err != nil {
			return Record{Err: fmt.Errorf("checkpoint line: %w", err)}
		}
		if err := json.Unmarshal(outer.Checkpoint, &cp); err != nil {
			return Record{Err: fmt.Errorf("checkpoint: %w", err)}
		}
		cp.Raw, cp.Signature = outer.Checkpoint, outer.Sig
		return Record{Checkpoint: &cp}
	}
	var r Record
	if err := json.Unmarshal(line, &r.Record); err != nil {
		return Record{Err: fmt.Errorf("record line: %w", err)}
	}
	if err := checkHash(r.Record); err != nil {
		r.Err = err
	}
	return r
}

// checkHash checks that a record's hash is SHA-256 over prev and its bytes.
func checkHash(rec audit.Record) error {
	prev, err := hex.DecodeString(rec.Prev)
	if err != nil || len(prev) != sha256.Size {
		return errors.New("record prev is not a SHA-256 in hex")
	}
	h := sha256.New()
	h.Write(prev)
	h.Write(rec.Event)
	if hex.EncodeToString(h.Sum(nil)) != rec.Hash {
		return errors.New("record hash does not match its bytes")
	}
	return nil
}
