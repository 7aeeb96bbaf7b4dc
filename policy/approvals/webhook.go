package approvals

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Webhook delivery limits.
const (
	webhookQueue    = 256
	webhookAttempts = 3
	webhookTimeout  = 5 * time.Second
	webhookSQLMax   = 500 // characters of the statement in the text
)

// webhookBackoff is the wait before each retry.
var webhookBackoff = []time.Duration{500 * time.Millisecond, 2 * time.Second}

// WebhookPayload is the JSON body POSTed to Options.Webhook. Text is what
// Slack and Teams incoming webhooks show; Vigil carries the same facts for
// programs. Bound parameters are left out: chat channels are no place for
// them.
type WebhookPayload struct {
	Text  string       `json:"text"`
	Vigil WebhookEvent `json:"vigil"`
}

// WebhookEvent is the structured part of a webhook.
type WebhookEvent struct {
	// Event is "approval.requested" or "approval." + the final status
	// (approved, denied, expired, cancelled).
	Event   string   `json:"event"`
	Request *Request `json:"request"`
	// URL is the approvals page (Options.PublicURL), when configured.
	URL string `json:"url,omitempty"`
}

// webhook delivers payloads in order on one goroutine.
type webhook struct {
	url    string
	page   string
	client *http.Client
	log    *slog.Logger
	wg     sync.WaitGroup

	mu     sync.Mutex // guards queue against sends after close
	closed bool
	queue  chan WebhookPayload
}

func newWebhook(url, page string, client *http.Client, log *slog.Logger) *webhook {
	if client == nil {
		client = &http.Client{Timeout: webhookTimeout}
	}
	w := &webhook{url: url, page: page, client: client, log: log,
		queue: make(chan WebhookPayload, webhookQueue)}
	w.wg.Add(1)
	go w.run()
	return w
}

// send queues the payload for r; it never blocks. When the queue is full
// the payload is dropped with a warning.
func (w *webhook) send(r *Request) {
	p := payload(r, w.page)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		w.log.Warn("approvals: service closed; notification dropped", "id", r.ID,
			"event", p.Vigil.Event)
		return
	}
	select {
	case w.queue <- p:
	default:
		w.log.Warn("approvals: webhook queue full; notification dropped",
			"id", r.ID, "event", p.Vigil.Event)
	}
}

// close delivers what is queued and stops.
func (w *webhook) close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
	w.mu.Unlock()
	w.wg.Wait()
}

func (w *webhook) run() {
	defer w.wg.Done()
	for p := range w.queue {
		w.deliver(p)
	}
}

// deliver POSTs p, retrying on network errors and 5xx or 429 answers.
func (w *webhook) deliver(p WebhookPayload) {
	body, err := json.Marshal(p)
	if err != nil {
		w.log.Error("approvals: webhook payload", "err", err)
		return
	}
	for attempt := 0; attempt < webhookAttempts; attempt++ {
		if attempt > 0 {
			time.Sleep(webhookBackoff[attempt-1])
		}
		retry, err := w.post(body)
		if err == nil {
			w.log.Debug("approvals: webhook delivered", "id", p.Vigil.Request.ID,
				"event", p.Vigil.Event)
			return
		}
		if !retry || attempt == webhookAttempts-1 {
			w.log.Warn("approvals: webhook failed", "id", p.Vigil.Request.ID,
				"event", p.Vigil.Event, "attempts", attempt+1, "err", err)
			return
		}
	}
}

// post sends one attempt and says whether a failure is worth retrying.
func (w *webhook) post(body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), webhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("approvals: webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return true, fmt.Errorf("approvals: webhook: %w", err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		return false, nil
	}
	retry = resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests
	return retry, fmt.Errorf("approvals: webhook: answered %s", resp.Status)
}

// payload describes r as it is now.
func payload(r *Request, page string) WebhookPayload {
	c := r.clone()
	c.Parameters = nil
	ev := "approval." + r.Status
	if r.Pending() {
		ev = "approval.requested"
	}
	return WebhookPayload{Text: text(r, page),
		Vigil: WebhookEvent{Event: ev, Request: c, URL: page}}
}

// text is the one message a chat channel shows.
func text(r *Request, page string) string {
	var b strings.Builder
	who := r.Requester.Principal()
	switch r.Status {
	case StatusPending:
		fmt.Fprintf(&b, "vigil: %s asks to run on %s (request %s, approvers %s, waits %s):\n",
			who, r.Connection, r.ID, strings.Join(r.Approvers, ", "), r.Timeout)
		b.WriteString("```\n" + clipText(r.SQL, webhookSQLMax) + "\n```")
		if len(r.Reasons) > 0 {
			b.WriteString("\nreasons: " + strings.Join(r.Reasons, "; "))
		}
		if page != "" {
			b.WriteString("\ndecide at " + page)
		}
	case StatusApproved, StatusDenied:
		fmt.Fprintf(&b, "vigil: request %s by %s on %s was %s by %s", r.ID, who,
			r.Connection, r.Status, r.Decider.Principal())
		if r.Reason != "" {
			b.WriteString(": " + r.Reason)
		}
	default:
		fmt.Fprintf(&b, "vigil: request %s by %s on %s %s: %s", r.ID, who, r.Connection,
			r.Status, r.Reason)
	}
	return b.String()
}

// clipText cuts s to n runes, marking the cut.
func clipText(s string, n int) string {
	rs := []rune(s)
	if len(rs) <= n {
		return s
	}
	return string(rs[:n]) + "…"
}
