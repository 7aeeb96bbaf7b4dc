package policy

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/open-policy-agent/opa/v1/tester"
)

// TestResult is the outcome of one Rego test rule.
type TestResult struct {
	Package  string        // "vigil_test"
	Name     string        // "test_delete_in_cte_denied"
	File     string        // file and line of the rule, "dir/vigil_test.rego:12"
	Pass     bool          //
	Skip     bool          // a todo_test_ rule
	Err      error         // evaluation error, if any
	Duration time.Duration //
}

// RunTests runs the Rego unit tests (rules named test_* in *.rego files,
// usually *_test.rego) of the bundle in dir, or of the embedded bundle when
// dir is empty, against the bundle's data.json. It returns one result per
// test; an error means the bundle could not be loaded or compiled.
func RunTests(ctx context.Context, dir string) ([]TestResult, error) {
	fsys, display := openBundle(dir)
	src, err := readBundle(fsys, display, true)
	if err != nil {
		return nil, err
	}
	ch, err := tester.NewRunner().SetStore(src.store()).Run(ctx, src.modules)
	if err != nil {
		return nil, fmt.Errorf("policy: run tests: %w", err)
	}
	var out []TestResult
	for r := range ch {
		t := TestResult{Package: r.Package, Name: r.Name, Pass: r.Pass(), Skip: r.Skip,
			Err: r.Error, Duration: r.Duration}
		if r.Location != nil {
			t.File = fmt.Sprintf("%s:%d", r.Location.File, r.Location.Row)
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Package != out[j].Package {
			return out[i].Package < out[j].Package
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}
