package proto_test

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestGeneratedCodeIsCurrent regenerates the Go code into a temporary
// directory, as proto/gen.sh does, and compares it with the committed
// files. It needs protoc on PATH and the plugins in bin/ (make deps puts
// them there); it skips without them unless PROTO_REQUIRE is set, as
// make test sets it.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	bin, err := filepath.Abs(filepath.Join("..", "bin"))
	if err != nil {
		t.Fatal(err)
	}
	protoc, err := exec.LookPath("protoc")
	genGo := filepath.Join(bin, "protoc-gen-go")
	genGRPC := filepath.Join(bin, "protoc-gen-go-grpc")
	for _, p := range []string{genGo, genGRPC} {
		if _, serr := os.Stat(p); err == nil && serr != nil {
			err = serr
		}
	}
	if err != nil {
		if os.Getenv("PROTO_REQUIRE") != "" {
			t.Fatalf("protoc or a plugin is missing (run make deps): %v", err)
		}
		t.Skipf("protoc or a plugin is missing (make deps installs them): %v", err)
	}

	// The same command as proto/gen.sh's, run from this directory.
	sources := files(t, ".", ".proto")
	out := t.TempDir()
	args := append([]string{"-I", ".",
		"--plugin=protoc-gen-go=" + genGo, "--plugin=protoc-gen-go-grpc=" + genGRPC,
		"--go_out=" + out, "--go_opt=paths=source_relative",
		"--go-grpc_out=" + out, "--go-grpc_opt=paths=source_relative"}, sources...)
	if b, err := exec.Command(protoc, args...).CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, b)
	}

	want, have := files(t, out, ".go"), files(t, ".", ".pb.go")
	if !slices.Equal(want, have) {
		t.Fatalf("generated files %q, committed %q: run make proto", want, have)
	}
	for _, name := range want {
		fresh := readNormalized(t, filepath.Join(out, name))
		if committed := readNormalized(t, name); !bytes.Equal(fresh, committed) {
			t.Errorf("%s is stale: run make proto", name)
		}
	}
}

// files lists the files under dir whose names end in suffix, relative to
// dir, sorted.
func files(t *testing.T, dir, suffix string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, suffix) {
			rel, rerr := filepath.Rel(dir, path)
			out = append(out, rel)
			return rerr
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// protocVersion matches the header line naming protoc's version, the one
// line that may differ between machines without the code differing.
var protocVersion = regexp.MustCompile(`(?m)^//\s+(- )?protoc\s+\S+$`)

func readNormalized(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return protocVersion.ReplaceAll(b, []byte("// protoc (version)"))
}
