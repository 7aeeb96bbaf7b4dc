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

// SegmentNames returns the file names of the journal's segments in dir,
// oldest first, for readers that follow the journal by position (the
// Elasticsearch shipper).
func SegmentNames(dir string) ([]string, error) {
	nums, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(nums))
	for i, n := range nums {
		names[i] = segmentName(n)
	}
	return names, nil
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

// ParseLine decodes one journal line without its newline: an event record,
// its hash checked against its bytes, or a checkpoint (its signature is
// Verify's to check). Exactly one of rec and cp is set when err is nil.
func ParseLine(line []byte) (rec *Record, cp *Checkpoint, err error) {
	if isCheckpointLine(line) {
		c, err := parseCheckpoint(line)
		if err != nil {
			return nil, nil, err
		}
		return nil, &c, nil
	}
	r, err := parseRecord(line, false)
	if err != nil {
		return nil, nil, err
	}
	return &r, nil, nil
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

// maxWriteSize bounds the bytes the writer hands the kernel between two
// fdatasyncs (a larger batch is written in pieces, each made durable before
// the next). The active segment is written in place, inside a zero-filled
// preallocated region, so a power loss during a write can keep any subset
// of that write's pages: the damage a crash can leave lies within
// maxWriteSize of the end of the last whole record. Non-zero bytes further
// on, after zeros, are not a crash's doing but corruption.
const maxWriteSize = 1 << 20

// scanResult is what scanSegment found.
type scanResult struct {
	size int64 // bytes in the file
	// end is the logical end: the end of the last whole record before any
	// damage, a zero byte where a record would start, or the end of file.
	end int64
	// tornAt is the start of a torn tail (non-zero bytes after end that are
	// not whole records), or -1.
	tornAt int64
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

// ReadLine reads one line with its newline (without one at the end of the
// file). zero reports that the line holds a 0 byte: no record does (JSON
// escapes it), so it is the zero-filled tail of a preallocated segment, or
// a record not (yet) wholly written into it. The line is then not read
// past the buffered bytes holding that 0, so a zero tail is never read
// into memory as a line.
func ReadLine(br *bufio.Reader) (line []byte, zero bool, err error) {
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

// scanSegment reads one segment line by line and hands v every whole
// record and checkpoint it wants. Lines v does not want are not decoded
// unless damage was seen before them. Damage that runs to the end of the
// file is a torn tail, reported in the result; damage followed by a whole
// line, or a record with a wrong hash (unless v.lenient), is a
// *CorruptError. A line holding a 0 byte is the logical end (see
// checkZeroTail): the zero-filled tail of the segment being written.
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
	var pos int64 // bytes read as lines
	for {
		line, zero, err := ReadLine(br)
		if err != nil && !errors.Is(err, io.EOF) {
			return res, fmt.Errorf("audit: read %s: %w", name, err)
		}
		off := pos
		if zero {
			return checkZeroTail(f, name, off, res)
		}
		if len(line) == 0 {
			break
		}
		pos += int64(len(line))
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
	res.size, res.end = pos, pos
	if res.tornAt >= 0 {
		res.end = res.tornAt
	}
	return res, nil
}

// checkZeroTail judges what follows the line at off that holds a 0 byte.
// Let z be the first 0 byte from off. Whole records are never written
// with a 0 in them, and the writer makes each piece of at most
// maxWriteSize durable before it writes the next, so whatever a crash
// tore lies before z+maxWriteSize: non-zero bytes from off up to there
// are a torn write, reported as res.tornAt for Open to cut (a reader
// leaves them, as not yet written). Non-zero bytes at or after
// z+maxWriteSize are a *CorruptError, unless the writer wrote on while we
// read (the byte at z is no longer 0, or the file shrank in a rotation):
// then the scan ends at off, as if it had run a moment earlier.
func checkZeroTail(f *os.File, name string, off int64, res scanResult) (scanResult, error) {
	fi, err := f.Stat()
	if err != nil {
		return res, fmt.Errorf("audit: read %s: %w", name, err)
	}
	res.size, res.end = fi.Size(), off
	if res.tornAt >= 0 {
		res.end = res.tornAt
	}
	buf := make([]byte, 64<<10)
	z, far, junk := int64(-1), int64(-1), false
	for p := off; p < res.size && far < 0; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), res.size-p)], p)
		if n == 0 && err != nil {
			if errors.Is(err, io.EOF) { // the file shrank: the writer rotated
				break
			}
			return res, fmt.Errorf("audit: read %s: %w", name, err)
		}
		for i, c := range buf[:n] {
			at := p + int64(i)
			switch {
			case c == 0:
				if z < 0 {
					z = at
				}
			case z < 0 || at < z+maxWriteSize:
				junk = true
			default:
				far = at
			}
			if far >= 0 {
				break
			}
		}
		p += int64(n)
	}
	if far >= 0 {
		var b [1]byte
		if n, _ := f.ReadAt(b[:], z); n == 0 || b[0] != 0 {
			return scanResult{size: off, end: off, tornAt: -1}, nil
		}
		return res, &CorruptError{Segment: name, Offset: z,
			Err: fmt.Errorf("zeros followed by data at offset %d", far)}
	}
	if junk && res.tornAt < 0 {
		res.tornAt = off
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
// may end in a torn record or a zero-filled tail (the writer may be in the
// middle of it, or a crash left it for the next Open to cut); it is
// skipped.
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
		// A zero tail (res.end < res.size, nothing torn) in a closed
		// segment loses nothing; the writer truncates it on rotation.
		if res.tornAt >= 0 && i < len(nums)-1 {
			return &CorruptError{Segment: segmentName(n), Offset: res.tornAt,
				Err: errors.New("a closed segment ends in a partial record")}
		}
	}
	return nil
}
