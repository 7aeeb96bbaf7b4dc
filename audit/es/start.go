package es

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
)

// Start ships the journal in cfg.Audit.Dir to audit.elasticsearch in the
// background until ctx ends or Close is called. It ships the events of the
// sessions of connections with export: siem, and every checkpoint. It
// returns nil and no error when there is nothing to export (no
// audit.elasticsearch, or no connection with export: siem); Close and
// Handler accept that nil.
//
// Start does not contact the cluster: an unreachable cluster is retried
// in the background and reported by Lag, the log and Handler.
func Start(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Shipper, error) {
	export := map[string]bool{}
	for _, cn := range cfg.Connections {
		if cn.Export == "siem" {
			export[cn.Name] = true
		}
	}
	ec := cfg.Audit.Elasticsearch
	if ec == nil || len(export) == 0 {
		return nil, nil
	}
	cc, err := ConfigFrom(ec)
	if err != nil {
		return nil, err
	}
	c, err := NewClient(cc)
	if err != nil {
		return nil, err
	}
	s, err := NewShipper(Options{Client: c, Source: JournalSource(cfg.Audit.Dir),
		Dir: cfg.Audit.Dir, DataStream: ec.DataStream, Log: log,
		Include: func(ev *audit.Event) bool { return export[ev.Connection] }})
	if err != nil {
		return nil, err
	}
	ctx, s.stop = context.WithCancel(ctx)
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		_ = s.Run(ctx)
	}()
	return s, nil
}

// lagReport is Handler's JSON body.
type lagReport struct {
	Enabled    bool    `json:"enabled"`
	DataStream string  `json:"data_stream,omitempty"`
	Cursor     *Cursor `json:"cursor,omitempty"`
	Shipped    uint64  `json:"shipped"`
	Skipped    uint64  `json:"skipped"`
	Behind     int     `json:"behind"`
	More       bool    `json:"more_waiting,omitempty"`
	// OldestAge is how long the oldest unshipped event has waited, in
	// seconds: the export lag.
	OldestAge float64 `json:"oldest_age_seconds"`
	Retries   uint64  `json:"retries"`
	LastError string  `json:"last_error,omitempty"`
	Blocked   string  `json:"blocked,omitempty"`
	Action    string  `json:"action,omitempty"`
}

// Handler reports the export's progress as JSON, for a health or metrics
// endpoint: cursor, events shipped and behind, the age of the oldest
// unshipped event (the lag), retries and the last error. It answers 503
// while the cursor is blocked at an event Elasticsearch refuses, 200
// otherwise (an outage is lag, not ill health: events wait in the
// journal). A nil *Shipper reports {"enabled":false}.
func (s *Shipper) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if s == nil {
			_ = json.NewEncoder(w).Encode(lagReport{})
			return
		}
		st := s.Lag()
		rep := lagReport{Enabled: true, DataStream: s.opts.DataStream, Cursor: &st.Cursor,
			Shipped: st.Shipped, Skipped: st.Skipped, Behind: st.Behind, More: st.More,
			OldestAge: st.Age(time.Now()).Seconds(), Retries: st.Retries,
			LastError: st.LastError}
		if st.Blocked != nil {
			rep.Blocked, rep.Action = st.Blocked.Error(), operatorAction(st.Blocked)
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(rep)
	})
}
