// Command vigil is the audit gateway for AI agents: an Envoy external
// processor (`vigil extproc`), a standalone gateway (`vigil gateway`), and
// the tools auditors, approvers and developers use around them.
//
// Each subcommand lives in its own file and adds itself to the root
// command in an init function.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
)

// root is the top command; subcommands register themselves on it.
var root = &cobra.Command{
	Use:   "vigil",
	Short: "vigil records, checks and attributes what AI agents do over database connections",
	Long: `vigil is an Envoy external processor that validates the agent's Microsoft Entra
token, logs in upstream with the connection's own credential, decodes the wire
protocol, judges every statement with a Rego policy (allow, deny, mask, hold for
approval), and records every command in a tamper-evident journal.

  vigil gateway --config vigil.yaml    standalone listeners + processor + journal
  vigil extproc --config vigil.yaml    gRPC service for Envoy
  vigil audit sessions | show | verify read the journal (or Elasticsearch)
  vigil approvals list | approve | deny decide commands held for approval
  vigil policy test [DIR]              run a policy bundle's Rego tests
  vigil elasticsearch setup            index template, ILM policy, Kibana objects
  vigil dev issuer | token             a local Entra-shaped issuer for trials and tests`,
	SilenceUsage:  true,
	SilenceErrors: true,
	// Every subcommand checks the shared flags before it does anything.
	PersistentPreRunE: func(*cobra.Command, []string) error { return parseLogLevel() },
}

// Flags shared by every subcommand.
var (
	flagConfig   string
	flagLogLevel string
)

// logLevel is flagLogLevel once parseLogLevel has checked it.
var logLevel = slog.LevelInfo

func init() {
	root.PersistentFlags().StringVar(&flagConfig, "config", "vigil.yaml",
		"configuration file")
	root.PersistentFlags().StringVar(&flagLogLevel, "log-level", "info",
		"log level: debug, info, warn or error")
}

// parseLogLevel checks --log-level and sets logLevel.
func parseLogLevel() error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(flagLogLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", flagLogLevel)
	}
	logLevel = lvl
	return nil
}

// logger returns the process logger, writing text lines to stderr at the
// level --log-level names.
func logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
}

func main() {
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vigil:", err)
		os.Exit(1)
	}
}
