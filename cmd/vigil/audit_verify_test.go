package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runVerifyCmd runs vigil with args and returns its output and error.
func runVerifyCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	auditFlags, verifyFlags = auditOptions{}, verifyOptions{}
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	defer root.SetArgs(nil)
	err := root.Execute()
	return out.String(), err
}

func TestAuditVerify(t *testing.T) {
	dir, id := buildJournal(t)

	// The public key, in both forms, verifies the untouched journal.
	pem, err := runVerifyCmd(t, "audit", "pubkey", "--data", dir)
	if err != nil || !strings.HasPrefix(pem, "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("pubkey: %v\n%s", err, pem)
	}
	b64, err := runVerifyCmd(t, "audit", "pubkey", "--data", dir, "--base64")
	if err != nil || len(strings.TrimSpace(b64)) != 44 {
		t.Fatalf("pubkey --base64: %v %q", err, b64)
	}
	for i, key := range []string{pem, b64} {
		file := filepath.Join(t.TempDir(), "pub")
		if err := os.WriteFile(file, []byte(key), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := runVerifyCmd(t, "audit", "verify", "--data", dir, "--pubkey", file)
		if err != nil || !strings.HasPrefix(out, "ok: 1 sessions") {
			t.Fatalf("verify with key form %d: %v\n%s", i, err, out)
		}
	}

	// An edited statement fails, named with its session and seq.
	seg := filepath.Join(dir, "segment-00000001.jsonl")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	edited := bytes.Replace(b, []byte("FROM invoices"), []byte("FROM invoicez"), 1)
	if bytes.Equal(edited, b) {
		t.Fatal("nothing to edit")
	}
	if err := os.WriteFile(seg, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runVerifyCmd(t, "audit", "verify", "--data", dir)
	if !errors.Is(err, errVerifyFailed) ||
		!strings.Contains(out, "FAIL  session "+id+" seq 2  hash_mismatch") {
		t.Fatalf("verify of an edited journal: %v\n%s", err, out)
	}
	out, err = runVerifyCmd(t, "audit", "verify", "--data", dir, "--json")
	if !errors.Is(err, errVerifyFailed) || !strings.Contains(out, `"kind": "hash_mismatch"`) {
		t.Fatalf("verify --json: %v\n%s", err, out)
	}
}
