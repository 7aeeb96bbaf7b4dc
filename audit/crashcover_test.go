package audit

import (
	"context"
	"testing"
)

// TestCrashRecoveryCoversEndedSessions: sessions that ended after the
// last checkpoint before a crash are vouched for by the checkpoint the
// restart writes, so the recovered journal verifies clean.
func TestCrashRecoveryCoversEndedSessions(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{CheckpointInterval: -1})
	if err := j.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	ended, err := j.Begin(startEvent("db", "a@x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ended.Record(command("SELECT 1")); err != nil {
		t.Fatal(err)
	}
	if err := ended.End(Event{}); err != nil {
		t.Fatal(err)
	}
	open, err := j.Begin(startEvent("db", "b@x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := open.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	crashed := t.TempDir()
	copyJournal(t, dir, crashed)

	j2 := openTest(t, crashed, Options{CheckpointInterval: -1})
	if err := j2.Close(); err != nil {
		t.Fatal(err)
	}
	if rep := verifyDir(t, crashed, VerifyOptions{}); !onlyRecovered(rep) {
		t.Fatalf("recovered journal: %s", dumpProblems(rep))
	}
}
