package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/audit/es"
	"github.com/vigilaudit/vigil/config"
)

// esFlags holds the flags of `vigil elasticsearch setup`.
var esFlags struct {
	retention  string
	skipKibana bool
}

var elasticsearchCmd = &cobra.Command{
	Use:   "elasticsearch",
	Short: "Prepare Elasticsearch and Kibana for vigil's audit export",
	Long: `Commands for the Elasticsearch export configured in audit.elasticsearch.

  vigil elasticsearch setup   install the ILM policy, index template and data stream,
                              and import the Kibana saved objects`,
}

var elasticsearchSetupCmd = &cobra.Command{
	Use:   "setup",
	Short: "Install the ILM policy, index template and data stream; import Kibana objects",
	Long: `Install, in the cluster of audit.elasticsearch:

  - the ILM policy vigil-audit: roll over at 30 days or 50 GB per primary shard,
    delete a backing index audit.elasticsearch.retention (default 90d) after
    its rollover;
  - the index template vigil-audit for the data stream (ECS fields @timestamp,
    event.*, user.*, source.*, destination.*, plus vigil.*);
  - the data stream audit.elasticsearch.data_stream, unless it exists;

then, when audit.elasticsearch.kibana is set, import the Kibana saved objects
(a data view, the saved searches "commands by identity" and "denied or masked
commands", and the dashboard "vigil audit") through Kibana's import API,
replacing earlier versions of them.

Running it again is safe. A changed template applies to the next backing
index: roll the data stream over (POST <data stream>/_rollover) to use it now.`,
	Args: cobra.NoArgs,
	RunE: runElasticsearchSetup,
}

func init() {
	f := elasticsearchSetupCmd.Flags()
	f.StringVar(&esFlags.retention, "retention", "",
		"retention for the ILM policy (default: audit.elasticsearch.retention)")
	f.BoolVar(&esFlags.skipKibana, "skip-kibana", false, "do not import the Kibana objects")
	elasticsearchCmd.AddCommand(elasticsearchSetupCmd)
	root.AddCommand(elasticsearchCmd)

	auditCmd.PersistentFlags().BoolVar(&auditFlags.elasticsearch, "elasticsearch", false,
		"read the events from audit.elasticsearch of --config instead of the journal")
}

// esSettings loads --config and returns its audit.elasticsearch.
func esSettings() (*config.Elasticsearch, error) {
	cfg, err := config.Load(flagConfig)
	if err != nil {
		return nil, err
	}
	if cfg.Audit.Elasticsearch == nil {
		return nil, fmt.Errorf("%s: audit.elasticsearch: not set; it names the cluster",
			cfg.Path)
	}
	return cfg.Audit.Elasticsearch, nil
}

func runElasticsearchSetup(cmd *cobra.Command, _ []string) error {
	ec, err := esSettings()
	if err != nil {
		return err
	}
	cc, err := es.ConfigFrom(ec)
	if err != nil {
		return err
	}
	c, err := es.NewClient(cc)
	if err != nil {
		return err
	}
	retention := ec.Retention
	if esFlags.retention != "" {
		retention = esFlags.retention
	}
	ctx, cancel := context.WithTimeout(cmdContext(cmd), 2*time.Minute)
	defer cancel()
	out := cmd.OutOrStdout()
	err = es.Setup(ctx, c, es.SetupOptions{DataStream: ec.DataStream, Retention: retention,
		Log: logger()})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "installed ILM policy %s (retention %s), index template %s, "+
		"data stream %s\n", es.DefaultPolicyName, retention, es.DefaultTemplateName,
		ec.DataStream)

	k, ok, err := es.KibanaFrom(ec)
	switch {
	case err != nil:
		return err
	case esFlags.skipKibana:
		return nil
	case !ok:
		fmt.Fprintln(out, "audit.elasticsearch.kibana is not set: Kibana objects not imported")
		return nil
	}
	if err := es.ImportSavedObjects(ctx, k, ec.DataStream); err != nil {
		return err
	}
	fmt.Fprintf(out, "imported Kibana saved objects into %s: data view, 2 saved searches, "+
		"dashboard \"vigil audit\"\n", k.URL)
	return nil
}

// cmdContext is the command's context, or Background.
func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// esReader returns the Elasticsearch reader of --config's settings.
func esReader() (*es.Reader, error) {
	ec, err := esSettings()
	if err != nil {
		return nil, err
	}
	cc, err := es.ConfigFrom(ec)
	if err != nil {
		return nil, err
	}
	c, err := es.NewClient(cc)
	if err != nil {
		return nil, err
	}
	return es.NewReader(c, ec.DataStream), nil
}

// readSessions is audit.ReadSessions, or its Elasticsearch twin with
// --elasticsearch.
func readSessions(cmd *cobra.Command, dir string, f audit.Filter) (
	[]audit.SessionSummary, error) {
	if !auditFlags.elasticsearch {
		return audit.ReadSessions(dir, f)
	}
	r, err := esReader()
	if err != nil {
		return nil, err
	}
	return r.ReadSessions(cmdContext(cmd), f)
}

// readRecords is audit.ReadRecords, or its Elasticsearch twin with
// --elasticsearch.
func readRecords(cmd *cobra.Command, dir, session string) ([]audit.Record, error) {
	if !auditFlags.elasticsearch {
		return audit.ReadRecords(dir, session)
	}
	r, err := esReader()
	if err != nil {
		return nil, err
	}
	return r.ReadRecords(cmdContext(cmd), session)
}

// readSession is audit.ReadSession, or its Elasticsearch twin with
// --elasticsearch.
func readSession(cmd *cobra.Command, dir, session string) ([]audit.Event, error) {
	if !auditFlags.elasticsearch {
		return audit.ReadSession(dir, session)
	}
	r, err := esReader()
	if err != nil {
		return nil, err
	}
	return r.ReadSession(cmdContext(cmd), session)
}

// esSource is the audit.Source of --elasticsearch, for `vigil audit verify`.
func esSource() (audit.Source, error) {
	r, err := esReader()
	if err != nil {
		return nil, err
	}
	return r, nil
}
