package audit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// JournalSource returns a Source reading the journal in dir, also while
// vigil writes it. Records come in the order stored, with their Segment and
// Offset, so Verify can report records out of order and records stored
// before a checkpoint that does not name them. Records whose hash does not
// match their bytes are returned as they are, for Verify to report.
//
// The first call reads every segment once to index where each session's
// records are; later calls read only those records. It also implements
// LiveSource.
func JournalSource(dir string) Source { return &journalSource{dir: dir} }

type journalSource struct {
	dir string

	once  sync.Once
	err   error
	index map[string][]place // each session's records, in the order stored
	ids   []string           // session ids in the order first stored
	cps   []Checkpoint
}

// place is where a record line starts.
type place struct {
	seg int32
	off int64
}

func (s *journalSource) load() error {
	s.once.Do(func() {
		s.index = map[string][]place{}
		s.err = scanJournal(s.dir, visitor{lenient: true,
			record: func(rec Record) error {
				id := lineSession(rec.Event)
				if _, ok := s.index[id]; !ok {
					s.ids = append(s.ids, id)
				}
				n, err := strconv.Atoi(strings.TrimSuffix(
					strings.TrimPrefix(rec.Segment, segmentPrefix), segmentSuffix))
				if err != nil {
					return fmt.Errorf("audit: segment name %s: %w", rec.Segment, err)
				}
				s.index[id] = append(s.index[id], place{seg: int32(n), off: rec.Offset})
				return nil
			},
			checkpoint: func(cp Checkpoint) error {
				s.cps = append(s.cps, cp)
				return nil
			},
		})
	})
	return s.err
}

func (s *journalSource) Sessions(ctx context.Context) ([]string, error) {
	if err := s.load(); err != nil {
		return nil, err
	}
	return slices.Clone(s.ids), nil
}

func (s *journalSource) Checkpoints(ctx context.Context) ([]Checkpoint, error) {
	if err := s.load(); err != nil {
		return nil, err
	}
	return slices.Clone(s.cps), nil
}

func (s *journalSource) Records(ctx context.Context, session string) ([]Record, error) {
	if err := s.load(); err != nil {
		return nil, err
	}
	places := s.index[session]
	if len(places) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrSessionNotFound, session)
	}
	out := make([]Record, 0, len(places))
	var f *os.File
	cur := int32(0)
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for _, p := range places {
		if f == nil || p.seg != cur {
			if f != nil {
				f.Close()
			}
			var err error
			if f, err = os.Open(filepath.Join(s.dir, segmentName(int(p.seg)))); err != nil {
				return nil, fmt.Errorf("audit: read journal: %w", err)
			}
			cur = p.seg
		}
		line, err := bufio.NewReader(io.NewSectionReader(f, p.off, 1<<62)).ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("audit: read %s at %d: %w", segmentName(int(p.seg)), p.off, err)
		}
		rec, err := parseRecord(line[:len(line)-1], true)
		if err != nil {
			return nil, &CorruptError{Segment: segmentName(int(p.seg)), Offset: p.off, Err: err}
		}
		rec.Segment, rec.Offset = segmentName(int(p.seg)), p.off
		out = append(out, rec)
	}
	return out, nil
}

// Live reports whether a process holds the journal's writer lock. It tries
// a shared flock on journal.lock and releases it at once; a writer starting
// in that instant would find the journal busy and fail to start, so do not
// run verify in a loop against a journal being (re)started.
func (s *journalSource) Live(ctx context.Context) (bool, error) {
	f, err := os.Open(filepath.Join(s.dir, "journal.lock"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("audit: journal lock: %w", err)
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("audit: journal lock: %w", err)
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false, nil
}
