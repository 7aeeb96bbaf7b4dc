package audit

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
)

// Segment files are named segment-NNNNNNNN.jsonl, numbered from 1.
const (
	segmentPrefix = "segment-"
	segmentSuffix = ".jsonl"
)

func segmentName(num int) string {
	return fmt.Sprintf("%s%08d%s", segmentPrefix, num, segmentSuffix)
}

// listSegments returns the segment numbers in dir, in order. Other files
// are ignored.
func listSegments(dir string) ([]int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: list segments: %w", err)
	}
	var nums []int
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, segmentPrefix) ||
			!strings.HasSuffix(name, segmentSuffix) {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, segmentPrefix),
			segmentSuffix))
		if err != nil || n <= 0 {
			continue
		}
		nums = append(nums, n)
	}
	slices.Sort(nums)
	return nums, nil
}

// Record is one line of the journal as stored: the event's canonical bytes,
// verbatim, and its place in the session's hash chain.
type Record struct {
	// Hash is hex SHA-256 over the bytes of Prev (decoded) followed by Event.
	Hash string `json:"hash"`
	// Prev is the hex hash of the session's previous event; 64 zeros for
	// seq 1 (the genesis).
	Prev string `json:"prev"`
	// Event is the event's JSON encoding exactly as it was written.
	Event json.RawMessage `json:"event"`

	// Segment and Offset say where the record starts.
	Segment string `json:"-"`
	Offset  int64  `json:"-"`
}

// CorruptError reports a record that is not what the journal wrote: a line
// that is not a record, followed by whole records, or a record whose hash
// does not match its bytes.
type CorruptError struct {
	Segment string // file name inside the journal directory
	Offset  int64  // byte offset of the line in the segment
	Err     error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("audit: corrupt record in %s at offset %d: %v (not the torn tail a "+
		"crash leaves: run `vigil audit verify` for every problem, keep the journal as "+
		"evidence, and see docs/operations.md)", e.Segment, e.Offset, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }

// errTear marks a line that is not a whole record: the kind of damage a
// crash in the middle of a write leaves at the end of a segment.
var errTear = errors.New("not a whole record")

// checkpointPrefix starts every checkpoint line; event records start with
// {"hash":.
var checkpointPrefix = []byte(`{"checkpoint":`)

func isCheckpointLine(line []byte) bool { return bytes.HasPrefix(line, checkpointPrefix) }

// parseRecord decodes one line (without its newline) and, unless lenient,
// checks its hash. An error wrapping errTear means the line is not a record
// at all.
func parseRecord(line []byte, lenient bool) (Record, error) {
	var rec Record
	if err := json.Unmarshal(line, &rec); err != nil {
		return rec, fmt.Errorf("%w: %w", errTear, err)
	}
	if len(rec.Event) == 0 || rec.Event[0] != '{' {
		return rec, errors.New("the record holds no event")
	}
	if lenient {
		return rec, nil
	}
	prev, err := decodeHash(rec.Prev)
	if err != nil {
		return rec, fmt.Errorf("prev: %w", err)
	}
	hash, err := decodeHash(rec.Hash)
	if err != nil {
		return rec, fmt.Errorf("hash: %w", err)
	}
	if chainHash(prev, rec.Event) != hash {
		return rec, errors.New("the hash does not match the event's bytes")
	}
	return rec, nil
}

// parseCheckpoint decodes one checkpoint line (without its newline). The
// signature is not checked here; Verify does that.
func parseCheckpoint(line []byte) (Checkpoint, error) {
	var outer struct {
		Checkpoint json.RawMessage `json:"checkpoint"`
		Sig        string          `json:"sig"`
	}
	var cp Checkpoint
	if err := json.Unmarshal(line, &outer); err != nil {
		return cp, fmt.Errorf("%w: %w", errTear, err)
	}
	if err := json.Unmarshal(outer.Checkpoint, &cp); err != nil {
		return cp, fmt.Errorf("checkpoint: %w", err)
	}
	cp.Raw, cp.Signature = outer.Checkpoint, outer.Sig
	return cp, nil
}

func decodeHash(s string) ([sha256.Size]byte, error) {
	var h [sha256.Size]byte
	if len(s) != hex.EncodedLen(sha256.Size) {
		return h, fmt.Errorf("want %d hex digits, have %d", hex.EncodedLen(sha256.Size), len(s))
	}
	_, err := hex.Decode(h[:], []byte(s))
	return h, err
}

// scanResult is what scanSegment found.
type scanResult struct {
	size   int64 // bytes in the file
	tornAt int64 // start of the torn tail, or -1
}

// visitor says what scanSegment hands back.
type visitor struct {
	// want selects event record lines by their raw bytes; nil takes all.
	want func(line []byte) bool
	// record is called with every wanted event record; nil skips them.
	record func(Record) error
	// checkpoint is called with every checkpoint; nil skips them.
	checkpoint func(Checkpoint) error
	// lenient leaves a record whose hash does not match its bytes to the
	// caller (Verify reports it) instead of failing with a *CorruptError.
	lenient bool
}

// wants reports whether v takes the whole line (with its newline).
func (v *visitor) wants(line []byte) bool {
	if isCheckpointLine(line) {
		return v.checkpoint != nil
	}
	return v.record != nil && (v.want == nil || v.want(line))
}

// scanSegment reads one segment line by line and hands v every whole
// record and checkpoint it wants. Lines v does not want are not decoded
// unless damage was seen before them. Damage that runs to the end of the
// file is a torn tail, reported in the result; damage followed by a whole
// line, or a record with a wrong hash (unless v.lenient), is a
// *CorruptError.
func scanSegment(path string, v visitor) (scanResult, error) {
	res := scanResult{tornAt: -1}
	name := filepath.Base(path)
	f, err := os.Open(path)
	if err != nil {
		return res, fmt.Errorf("audit: read %s: %w", name, err)
	}
	defer f.Close()

	br := bufio.NewReaderSize(f, 256<<10)
	var tearErr error
	for {
		line, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return res, fmt.Errorf("audit: read %s: %w", name, err)
		}
		if len(line) == 0 {
			break
		}
		off := res.size
		res.size += int64(len(line))
		if line[len(line)-1] != '\n' { // the last line, cut short
			if res.tornAt < 0 {
				res.tornAt = off
			}
			break
		}
		if res.tornAt < 0 && !v.wants(line) {
			continue
		}
		perr, verr := scanLine(line[:len(line)-1], name, off, &v,
			res.tornAt < 0 && v.wants(line))
		switch {
		case verr != nil:
			return res, verr
		case errors.Is(perr, errTear):
			if res.tornAt < 0 {
				res.tornAt, tearErr = off, perr
			}
			continue
		case perr != nil:
			return res, &CorruptError{Segment: name, Offset: off, Err: perr}
		case res.tornAt >= 0:
			return res, &CorruptError{Segment: name, Offset: res.tornAt, Err: tearErr}
		}
	}
	return res, nil
}

// scanLine decodes one line and, when deliver is set, hands it to v. It
// returns the decoding error and, apart, the error of v's function.
func scanLine(line []byte, seg string, off int64, v *visitor, deliver bool) (perr, verr error) {
	if isCheckpointLine(line) {
		cp, err := parseCheckpoint(line)
		if err != nil || !deliver {
			return err, nil
		}
		cp.Segment, cp.Offset = seg, off
		return nil, v.checkpoint(cp)
	}
	rec, err := parseRecord(line, v.lenient)
	if err != nil || !deliver {
		return err, nil
	}
	rec.Segment, rec.Offset = seg, off
	return nil, v.record(rec)
}

// scanJournal scans every segment of dir in order. Only the newest segment
// may end in a torn record (the writer may be in the middle of it, or a
// crash left it for the next Open to cut); it is skipped.
func scanJournal(dir string, v visitor) error {
	nums, err := listSegments(dir)
	if err != nil {
		return err
	}
	return scanSegments(dir, nums, v)
}

// scanSegments scans the given segments of dir in order; the last one may
// end in a torn record.
func scanSegments(dir string, nums []int, v visitor) error {
	for i, n := range nums {
		res, err := scanSegment(filepath.Join(dir, segmentName(n)), v)
		if err != nil {
			return err
		}
		if res.tornAt >= 0 && i < len(nums)-1 {
			return &CorruptError{Segment: segmentName(n), Offset: res.tornAt,
				Err: errors.New("a closed segment ends in a partial record")}
		}
	}
	return nil
}
