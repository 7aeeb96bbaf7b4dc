package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
	binaryOut  []byte
)

// TestMain removes the binary vigilBinary built.
func TestMain(m *testing.M) {
	code := m.Run()
	if binaryPath != "" {
		os.RemoveAll(filepath.Dir(binaryPath))
	}
	os.Exit(code)
}

// vigilBinary builds cmd/vigil once per test run and returns its path, for
// tests that run vigil as people and scripts do: as a process.
func vigilBinary(t testing.TB) string {
	t.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vigil-bin-")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "vigil")
		cmd := exec.Command("go", "build", "-o", binaryPath,
			"github.com/vigilaudit/vigil/cmd/vigil")
		binaryOut, binaryErr = cmd.CombinedOutput()
	})
	if binaryErr != nil {
		t.Fatalf("go build ./cmd/vigil: %v\n%s", binaryErr, binaryOut)
	}
	return binaryPath
}
