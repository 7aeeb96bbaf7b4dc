package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/policy/approvals"
)

// approvalsCmd groups the commands approvers use. They call the approvals
// HTTP API of a running vigil as the person whose token they send.
var approvalsCmd = &cobra.Command{
	Use:   "approvals",
	Short: "List, approve and deny commands held for approval",
	Long: `List, approve and deny commands that policy holds for approval, through the
approvals API of a running vigil (server.http of the configuration, or --server).

You act as yourself: your Entra access token for vigil's API is read from
--token-file, or else from the VIGIL_TOKEN environment variable, for example
  export VIGIL_TOKEN=$(az account get-access-token --resource api://vigil \
      --query accessToken -o tsv)

  vigil approvals list [--json]           requests waiting for you (and your own)
  vigil approvals approve ID [--reason R]
  vigil approvals deny ID --reason R`,
}

// approvalsOptions holds the flags of the approvals commands.
type approvalsOptions struct {
	server    string
	tokenFile string
	json      bool
	status    string
	reason    string
}

var approvalsFlags approvalsOptions

var approvalsListCmd = &cobra.Command{
	Use:   "list",
	Short: "List your requests and those you may decide (pending ones unless --status)",
	Args:  cobra.NoArgs,
	RunE: func(cmd *cobra.Command, _ []string) error {
		status := approvalsFlags.status
		if status == "all" {
			status = ""
		}
		var out approvals.ListResponse
		path := "/api/approvals?status=" + url.QueryEscape(status)
		if err := approvalsCall(http.MethodGet, path, nil, &out); err != nil {
			return err
		}
		if approvalsFlags.json {
			return writeJSON(cmd.OutOrStdout(), out)
		}
		return writeApprovals(cmd.OutOrStdout(), out.Requests)
	},
}

var approvalsApproveCmd = &cobra.Command{
	Use:   "approve ID",
	Short: "Approve a held command; it runs at once",
	Args:  cobra.ExactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		return approvalsDecide(cmd.OutOrStdout(), args[0], "approve")
	},
}

var approvalsDenyCmd = &cobra.Command{
	Use:   "deny ID --reason R",
	Short: "Deny a held command; the client gets your reason",
	Args:  cobra.ExactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		if strings.TrimSpace(approvalsFlags.reason) == "" {
			return errors.New("deny needs --reason")
		}
		return approvalsDecide(cmd.OutOrStdout(), args[0], "deny")
	},
}

func init() {
	pf := approvalsCmd.PersistentFlags()
	pf.StringVar(&approvalsFlags.server, "server", "",
		"vigil's HTTP address (default http:// + server.http of the configuration)")
	pf.StringVar(&approvalsFlags.tokenFile, "token-file", "",
		"file holding your access token (default: $VIGIL_TOKEN)")
	approvalsListCmd.Flags().BoolVar(&approvalsFlags.json, "json", false, "print JSON")
	approvalsListCmd.Flags().StringVar(&approvalsFlags.status, "status", "pending",
		"pending, approved, denied, expired, cancelled or all")
	approvalsApproveCmd.Flags().StringVar(&approvalsFlags.reason, "reason", "",
		"why (recorded in the audit)")
	approvalsDenyCmd.Flags().StringVar(&approvalsFlags.reason, "reason", "",
		"why (required; the client sees it)")
	approvalsCmd.AddCommand(approvalsListCmd, approvalsApproveCmd, approvalsDenyCmd)
	root.AddCommand(approvalsCmd)
}

// approvalsDecide approves or denies request id and prints the outcome.
func approvalsDecide(w io.Writer, id, verb string) error {
	body, err := json.Marshal(approvals.DecisionBody{Reason: approvalsFlags.reason})
	if err != nil {
		return err
	}
	var v approvals.View
	path := "/api/approvals/" + url.PathEscape(id) + "/" + verb
	if err := approvalsCall(http.MethodPost, path, body, &v); err != nil {
		return fmt.Errorf("%s %s: %w", verb, id, err)
	}
	_, err = fmt.Fprintf(w, "%s %s\n", v.Request.ID, v.Request.Status)
	return err
}

// approvalsCall sends one API request with the person's token and decodes
// the JSON answer into out; an error answer becomes an error naming its
// cause.
func approvalsCall(method, path string, body []byte, out any) error {
	base, err := approvalsServer()
	if err != nil {
		return err
	}
	tok, err := approvalsToken()
	if err != nil {
		return err
	}
	req, err := http.NewRequest(method, base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e approvals.ErrorResponse
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s (%s, HTTP %d)", e.Error, e.Cause, resp.StatusCode)
		}
		return fmt.Errorf("%s answered %s", base, resp.Status)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s: unexpected answer: %w", base, err)
	}
	return nil
}

// approvalsServer is --server, or http:// + server.http of the
// configuration (a wildcard host becomes 127.0.0.1).
func approvalsServer() (string, error) {
	if approvalsFlags.server != "" {
		return strings.TrimRight(approvalsFlags.server, "/"), nil
	}
	cfg, err := config.Load(flagConfig)
	if err != nil {
		return "", fmt.Errorf("%w (or name vigil's address with --server URL)", err)
	}
	if cfg.Server.HTTP == "" {
		return "", fmt.Errorf("%s sets no server.http; name vigil's address with --server URL",
			flagConfig)
	}
	host, port, err := net.SplitHostPort(cfg.Server.HTTP)
	if err != nil {
		return "", fmt.Errorf("server.http %q: %w", cfg.Server.HTTP, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// approvalsToken reads the person's token from --token-file, or else from
// $VIGIL_TOKEN.
func approvalsToken() (string, error) {
	if approvalsFlags.tokenFile != "" {
		b, err := os.ReadFile(approvalsFlags.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		if tok := strings.TrimSpace(string(b)); tok != "" {
			return tok, nil
		}
		return "", fmt.Errorf("--token-file %s is empty", approvalsFlags.tokenFile)
	}
	if tok := strings.TrimSpace(os.Getenv("VIGIL_TOKEN")); tok != "" {
		return tok, nil
	}
	return "", errors.New("no token: set VIGIL_TOKEN or pass --token-file")
}

// writeApprovals prints requests as a table, one line each.
func writeApprovals(w io.Writer, vs []approvals.View) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tWAITED\tREQUESTER\tCONNECTION\tAPPROVERS\tSTATEMENT")
	for _, v := range vs {
		r := v.Request
		waited := (time.Duration(v.WaitedSeconds) * time.Second).String()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Status, waited,
			r.Requester.Principal(), r.Connection, strings.Join(r.Approvers, ","),
			oneLine(r.SQL, 60))
	}
	return tw.Flush()
}

// oneLine folds s onto one line and cuts it to n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if rs := []rune(s); len(rs) > n {
		return string(rs[:n-1]) + "…"
	}
	return s
}
