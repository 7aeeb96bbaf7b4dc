package policy

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/util"
)

//go:embed bundle
var embedded embed.FS

// Bundle returns the default policy bundle compiled into vigil: Rego files,
// their tests and data.json, at the root of the returned file system.
func Bundle() fs.FS {
	sub, err := fs.Sub(embedded, "bundle")
	if err != nil {
		panic("policy: embedded bundle missing: " + err.Error())
	}
	return sub
}

// ErrEmptyBundle is returned when a policy directory holds no Rego module.
var ErrEmptyBundle = errors.New("policy: no .rego files")

// source is a policy bundle read from files: parsed modules, data and the
// revision of the content.
type source struct {
	modules  map[string]*ast.Module // by display name
	data     map[string]any
	revision string
}

// Source locates a bundle: a directory on disk, or the embedded bundle when
// dir is empty.
func openBundle(dir string) (fs.FS, string) {
	if dir == "" {
		return Bundle(), "bundle"
	}
	return os.DirFS(dir), dir
}

// readBundle parses every .rego file under fsys (tests only when withTests)
// and merges every data.json into the data document at the path of its
// directory, as OPA bundles do. Parse errors name the file and line. The
// revision hashes the files that decide, tests excluded.
func readBundle(fsys fs.FS, display string, withTests bool) (*source, error) {
	var files []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != "." && strings.HasPrefix(d.Name(), ".") {
				return fs.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(p, ".rego") || path.Base(p) == "data.json" {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policy: read %s: %w", display, err)
	}
	sort.Strings(files)

	src := &source{modules: map[string]*ast.Module{}, data: map[string]any{}}
	h := sha256.New()
	for _, p := range files {
		isTest := strings.HasSuffix(p, "_test.rego")
		if isTest && !withTests {
			continue
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil, fmt.Errorf("policy: read %s: %w", p, err)
		}
		name := filepath.Join(display, filepath.FromSlash(p))
		if !isTest {
			fmt.Fprintf(h, "%s\x00%d\x00", p, len(b))
			h.Write(b)
		}
		if strings.HasSuffix(p, ".rego") {
			m, err := ast.ParseModuleWithOpts(name, string(b),
				ast.ParserOptions{RegoVersion: ast.RegoV1})
			if err != nil {
				return nil, fmt.Errorf("policy: %w", err)
			}
			src.modules[name] = m
			continue
		}
		if err := mergeData(src.data, path.Dir(p), b); err != nil {
			return nil, fmt.Errorf("policy: %s: %w", name, err)
		}
	}
	if len(src.modules) == 0 {
		return nil, fmt.Errorf("%w in %s", ErrEmptyBundle, display)
	}
	src.revision = hex.EncodeToString(h.Sum(nil))[:16]
	return src, nil
}

// mergeData places a data.json document at the path of its directory.
func mergeData(root map[string]any, dir string, b []byte) error {
	var doc any
	if err := util.UnmarshalJSON(b, &doc); err != nil {
		return err
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return fmt.Errorf("data.json holds %T, want an object", doc)
	}
	node := root
	if dir != "." {
		for _, part := range strings.Split(dir, "/") {
			next, ok := node[part].(map[string]any)
			if !ok {
				next = map[string]any{}
				node[part] = next
			}
			node = next
		}
	}
	for k, v := range obj {
		if _, dup := node[k]; dup {
			return fmt.Errorf("key %q defined twice", k)
		}
		node[k] = v
	}
	return nil
}

// compile compiles the modules; errors carry file and line.
func (s *source) compile() (*ast.Compiler, error) {
	c := ast.NewCompiler()
	c.Compile(s.modules)
	if c.Failed() {
		return nil, fmt.Errorf("policy: %w", c.Errors)
	}
	return c, nil
}

// store returns an in-memory store holding the bundle's data.
func (s *source) store() storage.Store {
	return inmem.NewFromObject(s.data)
}

// location returns the file and line of the first error in err, when the
// error is a Rego parse or compile error.
func location(err error) (string, int) {
	var errs ast.Errors
	if errors.As(err, &errs) && len(errs) > 0 && errs[0].Location != nil {
		return errs[0].Location.File, errs[0].Location.Row
	}
	var one *ast.Error
	if errors.As(err, &one) && one.Location != nil {
		return one.Location.File, one.Location.Row
	}
	return "", 0
}
