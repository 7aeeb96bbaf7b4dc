package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"
)

// TestLogLevel checks that --log-level takes the levels --help names and
// refuses anything else before the subcommand runs.
func TestLogLevel(t *testing.T) {
	saved := devTokenFlags
	defer func() { flagLogLevel, logLevel, devTokenFlags = "info", slog.LevelInfo, saved }()
	for _, c := range []struct {
		arg  string
		want slog.Level
		err  string
	}{
		{arg: "debug", want: slog.LevelDebug},
		{arg: "WARN", want: slog.LevelWarn},
		{arg: "error", want: slog.LevelError},
		{arg: "loud", err: `--log-level "loud": want debug, info, warn or error`},
	} {
		t.Run(c.arg, func(t *testing.T) {
			logLevel = slog.LevelInfo
			root.SetOut(io.Discard)
			root.SetErr(io.Discard)
			// dev token with a bad --version fails in its RunE, after the
			// shared flags were checked, and needs no issuer.
			root.SetArgs([]string{"--log-level", c.arg, "dev", "token", "--issuer", "x",
				"--version", "v9"})
			defer root.SetArgs(nil)
			err := root.Execute()
			if c.err != "" {
				if err == nil || err.Error() != c.err {
					t.Fatalf("err = %v, want %q", err, c.err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "--version") {
				t.Fatalf("err = %v, want the subcommand's own error", err)
			}
			if logLevel != c.want {
				t.Errorf("level %v, want %v", logLevel, c.want)
			}
		})
	}
}

// TestGatewayHelpDescribesTLS keeps `vigil gateway --help` true to what
// the relay does with a connection's tls block.
func TestGatewayHelpDescribesTLS(t *testing.T) {
	cmd, _, err := root.Find([]string{"gateway"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tls block", "answers S", "terminates TLS", "answers N"} {
		if !strings.Contains(cmd.Long, want) {
			t.Errorf("gateway --help does not say %q:\n%s", want, cmd.Long)
		}
	}
	if strings.Contains(cmd.Long, "not configured") {
		t.Errorf("gateway --help still says client TLS is not configured:\n%s", cmd.Long)
	}
}
