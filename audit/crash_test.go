package audit

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
)

const crashDirEnv = "VIGIL_AUDIT_CRASH_DIR"

// TestCrashChild is the process TestCrashKeepsSyncedEvents kills: sessions
// record and sync without pause, printing "ack SESSION SEQ" after each Sync.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run by TestCrashKeepsSyncedEvents")
	}
	j, err := Open(dir, Options{Log: quietLog(), MaxSegmentSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := j.Begin(startEvent("db", fmt.Sprintf("g%d@x", g)))
			if err != nil {
				t.Error(err)
				return
			}
			for i := range 20000 { // bounded; the parent kills us long before
				seq, err := r.Record(command(fmt.Sprintf("SELECT %d -- %s", i,
					strings.Repeat("x", i%300))))
				if err == nil {
					err = r.Sync(context.Background())
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				fmt.Printf("ack %s %d\n", r.ID(), seq)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestCrashKeepsSyncedEvents kills a writing process with SIGKILL and
// checks that the reopened journal holds every event it acknowledged, with
// whole chains.
func TestCrashKeepsSyncedEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]uint64{}
	sc := bufio.NewScanner(out)
	for n := 0; n < 2000 && sc.Scan(); {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "ack" {
			continue
		}
		seq, _ := strconv.ParseUint(f[2], 10, 64)
		acked[f[1]] = max(acked[f[1]], seq)
		n++
	}
	cmd.Process.Kill()
	cmd.Wait()
	if len(acked) == 0 {
		t.Fatal("the child acknowledged nothing")
	}

	j := openTest(t, dir, Options{})
	for id, seq := range acked {
		recs, err := ReadRecords(dir, id)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(recs)) < seq {
			t.Fatalf("session %s: %d events after the crash, %d acknowledged",
				id, len(recs), seq)
		}
		if err := VerifyChain(recs); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := j.Begin(startEvent("db", "after@x")); err != nil {
		t.Fatal(err)
	}
}
