package approvals

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// childEnv names the store directory when the test binary runs as the
// second process of TestFileStoreTwoProcesses.
const childEnv = "VIGIL_APPROVALS_CHILD_DIR"

const stepsPerProcess = 40

// TestFileStoreTwoProcesses appends steps to one request from this process
// and from a child process at the same time; flock must keep every one.
func TestFileStoreTwoProcesses(t *testing.T) {
	if dir := os.Getenv(childEnv); dir != "" {
		appendSteps(t, dir, "child")
		return
	}
	dir := t.TempDir()
	st, err := NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := newRequest()
	r.ID, r.Created, r.Status = newID(), time.Now(), StatusPending
	if err := st.Create(context.Background(), r, Step{Kind: StepRequested}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/id", []byte(r.ID), 0o600); err != nil {
		t.Fatal(err)
	}

	child := exec.Command(os.Args[0], "-test.run=^TestFileStoreTwoProcesses$")
	child.Env = append(os.Environ(), childEnv+"="+dir)
	out := make(chan error, 1)
	go func() {
		b, err := child.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, b)
		}
		out <- err
	}()
	appendSteps(t, dir, "parent")
	if err := <-out; err != nil {
		t.Fatalf("child: %v", err)
	}

	_, steps, err := st.Get(context.Background(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1 + 2*stepsPerProcess; len(steps) != want {
		t.Errorf("%d steps stored, want %d: updates were lost", len(steps), want)
	}
}

func appendSteps(t *testing.T, dir, who string) {
	st, err := NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	id, err := os.ReadFile(dir + "/id")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < stepsPerProcess; i++ {
		s := Step{Kind: StepRefused, Reason: fmt.Sprintf("%s %d", who, i), Time: time.Now()}
		if err := st.AddStep(context.Background(), string(id), s); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStaleRequestExpires: a pending request whose hold went away (its
// process died) is expired when approvers list requests, and cannot be
// approved.
func TestStaleRequestExpires(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)}
	st := mustFileStore(t)
	s := newService(t, st, Options{Clock: clock.Now})
	r := newRequest()
	r.ID, r.Created, r.Status, r.Scope = newID(), clock.Now(), StatusPending, ScopeOnce
	if err := st.Create(context.Background(), r, Step{Kind: StepRequested}); err != nil {
		t.Fatal(err)
	}
	if got := onlyPending(t, s); got != r.ID {
		t.Fatalf("pending %s, want %s", got, r.ID)
	}
	clock.Add(r.Timeout + time.Minute)
	if rs, err := s.pending(context.Background()); err != nil || len(rs) != 0 {
		t.Errorf("pending after the timeout: %v, %v", rs, err)
	}
	got, _, err := st.Get(context.Background(), r.ID)
	if err != nil || got.Status != StatusExpired {
		t.Errorf("stored %v (%v), want expired", got, err)
	}
}
