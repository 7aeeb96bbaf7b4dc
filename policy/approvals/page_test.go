package approvals

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

// TestPageInChromium loads the approvals page in headless Chromium, pastes
// the DBA's token, finds the pending request with its statement shown as
// text, clicks Approve, and checks that the hold is released approved.
func TestPageInChromium(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: run `make deps` (Debian package chromium)")
	}
	a := newAPI(t, Options{})
	req := newRequest()
	req.SQL = `DROP TABLE "<img src=x onerror=alert(1)>"`
	h := startHold(context.Background(), a.svc, req)
	h.step(t)
	id := onlyPending(t, a.svc)

	// The DevTools protocol over a websocket on a loopback debugging port.
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		remote.WebSocket,
		chromedp.Flag("remote-debugging-address", "127.0.0.1"),
		chromedp.Flag("remote-debugging-port", "0"),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(profileDir(t)),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()

	// Paste the token, find the row.
	row := chromedp.CSS(`tr.request[data-id="` + id + `"]`)
	err = chromedp.Do(bctx,
		chromedp.Navigate(a.srv.URL+"/approvals/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SetValue(chromedp.ID("token"), a.dba),
		chromedp.Click(chromedp.ID("save")),
		chromedp.WaitVisible(row),
	)
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	sql := run(t, bctx, chromedp.Text(chromedp.CSS(`tr.request pre.sql`)))
	who := run(t, bctx, chromedp.Text(chromedp.CSS(`tr.request td`)))
	images := run(t, bctx, chromedp.Evaluate[int](`document.querySelectorAll("img").length`))
	if sql != req.SQL || images != 0 {
		t.Errorf("statement shown as %q with %d img elements; want the text, no markup",
			sql, images)
	}
	if !strings.Contains(who, agentOID) {
		t.Errorf("requester cell %q lacks the agent's oid", who)
	}

	// Approve.
	approve := chromedp.CSS(`tr.request[data-id="` + id + `"] button.approve`)
	if err := chromedp.Do(bctx, chromedp.Click(approve)); err != nil {
		t.Fatalf("chromium: click approve: %v", err)
	}
	r := h.wait(t)
	if r.Status != StatusApproved || r.Decider.UPN != "dba@example.test" {
		t.Errorf("Hold returned %s by %v, want approved by the DBA", r.Status, r.Decider)
	}

	// The page shows the outcome and no longer lists the request.
	if err := chromedp.Do(bctx, chromedp.WaitNotPresent(row)); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if status := run(t, bctx, chromedp.Text(chromedp.ID("status"))); !strings.Contains(
		status, "approved") {
		t.Errorf("status line %q, want the approval", status)
	}
}

// run runs one chromedp action and returns its value, failing the test on
// error.
func run[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return v
}

// profileDir is Chromium's user data directory. Chromium's helper processes
// may still write to it briefly after the browser exits, so its removal is
// retried a few times instead of using t.TempDir.
func profileDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "vigil-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 20; i++ {
			if err = os.RemoveAll(dir); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("chromium profile %s left behind: %v", dir, err)
	})
	return dir
}
