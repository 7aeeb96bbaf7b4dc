package test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/remote"
)

// TestApprovalPageInChromium: an agent's DROP TABLE waits; a DBA opens
// the approvals page the gateway serves, in headless Chromium, sees the
// request with its statement, clicks Approve, and the DROP runs.
func TestApprovalPageInChromium(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: run `make deps` (Debian package chromium)")
	}
	e := startApprovalsEnv(t, "", "")
	dba := e.approverToken(t, dbaOID, "dba")

	done := e.startAgentPsql(t, "DROP TABLE victims")
	req := waitPending(t, e.http, dba, "DROP TABLE victims")

	profile, err := os.MkdirTemp("", "vigil-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Chromium's helpers may write briefly after it exits.
		for i := 0; i < 20 && os.RemoveAll(profile) != nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(bin), remote.WebSocket,
		chromedp.Flag("remote-debugging-address", "127.0.0.1"),
		chromedp.Flag("remote-debugging-port", "0"),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.UserDataDir(profile),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true))
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()

	row := chromedp.CSS(`tr.request[data-id="` + req.ID + `"]`)
	if err := chromedp.Do(bctx,
		chromedp.Navigate("http://"+e.http+"/approvals/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SetValue(chromedp.ID("token"), dba),
		chromedp.Click(chromedp.ID("save")),
		chromedp.WaitVisible(row),
	); err != nil {
		t.Fatalf("chromium: the page does not list request %s: %v", req.ID, err)
	}
	sql, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(
		`tr.request[data-id="`+req.ID+`"] pre.sql`)))
	if err != nil || sql != "DROP TABLE victims" {
		t.Errorf("the page shows the statement as %q (%v)", sql, err)
	}
	select {
	case r := <-done:
		t.Fatalf("psql finished before the approval: %v\n%s", r.err, r.out)
	default:
	}
	if err := chromedp.Do(bctx, chromedp.Click(chromedp.CSS(
		`tr.request[data-id="`+req.ID+`"] button.approve`))); err != nil {
		t.Fatalf("chromium: click approve: %v", err)
	}
	select {
	case r := <-done:
		if r.err != nil || !strings.Contains(r.out, "DROP TABLE") {
			t.Fatalf("psql after approval from the page: %v\n%s", r.err, r.out)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("psql still waiting 60s after the page's approval")
	}
	if n := tableCount(t, e.pg); n != -1 {
		t.Errorf("victims still exists after the approved DROP (%d rows)", n)
	}
	steps := approvalSteps(t, e, "DROP TABLE victims")
	if got := stepKinds(steps); got != "requested,approved" || steps[1].Actor.OID != dbaOID {
		t.Errorf("approval steps %q by %+v; want requested,approved by the DBA", got,
			steps[len(steps)-1].Actor)
	}
}
