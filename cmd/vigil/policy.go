package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/policy"
)

func init() {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Work with Rego policy bundles",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "test [DIR]",
		Short: "run the Rego unit tests of a policy bundle",
		Long: `Runs the test_ rules of the bundle in DIR against its data.json and prints
one line per test. DIR defaults to policy.dir of the configuration file, or the
bundle built into vigil when there is no configuration. Exits non-zero when a
test fails or the bundle does not compile.`,
		Args: cobra.MaximumNArgs(1),
		RunE: runPolicyTest,
	})
	root.AddCommand(cmd)
}

func runPolicyTest(cmd *cobra.Command, args []string) error {
	dir, err := policyDir(args)
	if err != nil {
		return err
	}
	results, err := policy.RunTests(cmd.Context(), dir)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	failed := 0
	for _, r := range results {
		status := "PASS"
		switch {
		case r.Skip:
			status = "SKIP"
		case !r.Pass:
			status = "FAIL"
			failed++
		}
		fmt.Fprintf(out, "%s  %s.%s  (%s)\n", status, r.Package, r.Name, r.File)
		if r.Err != nil {
			fmt.Fprintf(out, "      %v\n", r.Err)
		}
	}
	where := dir
	if where == "" {
		where = "the built-in bundle"
	}
	fmt.Fprintf(out, "%d tests, %d failed, in %s\n", len(results), failed, where)
	switch {
	case len(results) == 0:
		return fmt.Errorf("policy test: no tests in %s", where)
	case failed > 0:
		return fmt.Errorf("policy test: %d of %d tests failed", failed, len(results))
	}
	return nil
}

// policyDir picks the bundle to test: the argument, else policy.dir of the
// configuration, else "" for the embedded bundle. A configuration file that
// does not exist is not an error here; one that does not load is.
func policyDir(args []string) (string, error) {
	if len(args) == 1 {
		return args[0], nil
	}
	if _, err := os.Stat(flagConfig); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	cfg, err := config.Load(flagConfig)
	if err != nil {
		return "", err
	}
	return cfg.Policy.Dir, nil
}
