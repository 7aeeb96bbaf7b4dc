package app

import (
	"context"
	"log/slog"

	"github.com/vigilaudit/vigil/audit/es"
	"github.com/vigilaudit/vigil/config"
)

// startExport starts the Elasticsearch export of the journal in
// cfg.Audit.Dir (audit.elasticsearch, the sessions of connections with
// export: siem, every checkpoint). It runs until ctx ends or the returned
// shipper's Close; it returns nil when nothing is exported. The shipper's
// Handler reports the export lag as JSON for server.http.
func startExport(ctx context.Context, cfg *config.Config, log *slog.Logger) (*es.Shipper,
	error) {
	return es.Start(ctx, cfg, log)
}
