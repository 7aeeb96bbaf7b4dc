package config

import (
	"path/filepath"
	"strings"
	"testing"
)

// withES is the good config with an audit.elasticsearch block.
const withES = good + `  elasticsearch:
    addresses: [https://127.0.0.1:9200]
    api_key_file: es-key
    kibana: {url: "https://127.0.0.1:5601", api_key_file: kb-key}
`

func TestElasticsearchDefaultsAndPaths(t *testing.T) {
	c, err := Parse([]byte(withES))
	if err != nil {
		t.Fatal(err)
	}
	es := c.Audit.Elasticsearch
	if es.DataStream != "logs-vigil.audit-default" || es.Retention != "90d" {
		t.Errorf("defaults: data_stream %q, retention %q", es.DataStream, es.Retention)
	}
	c.resolvePaths("/etc/vigil")
	if es.APIKeyFile != filepath.Join("/etc/vigil", "es-key") ||
		es.Kibana.APIKeyFile != filepath.Join("/etc/vigil", "kb-key") {
		t.Errorf("paths not resolved: %q %q", es.APIKeyFile, es.Kibana.APIKeyFile)
	}
}

func TestElasticsearchErrorsNameTheKey(t *testing.T) {
	cases := []struct{ name, from, to, want string }{
		{"no addresses", "addresses: [https://127.0.0.1:9200]", "addresses: []",
			"audit.elasticsearch.addresses"},
		{"address not a URL", "https://127.0.0.1:9200", "127.0.0.1:9200",
			"audit.elasticsearch.addresses"},
		{"bad retention", "    api_key_file: es-key\n", "    api_key_file: es-key\n" +
			"    retention: 3 months\n", "audit.elasticsearch.retention"},
		{"bad data stream", "    api_key_file: es-key\n", "    api_key_file: es-key\n" +
			"    data_stream: Logs/Vigil\n", "audit.elasticsearch.data_stream"},
		{"key and username", "    api_key_file: es-key\n", "    api_key_file: es-key\n" +
			"    username: vigil\n", "api_key_file or username"},
		{"username without password", "    api_key_file: es-key\n", "    username: vigil\n",
			"audit.elasticsearch.password_file"},
		{"bad kibana url", `url: "https://127.0.0.1:5601"`, "url: kibana",
			"audit.elasticsearch.kibana.url"},
		{"unknown key", "    api_key_file: es-key\n", "    api_key_fil: es-key\n",
			"api_key_fil"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := strings.Replace(withES, c.from, c.to, 1)
			if src == withES {
				t.Fatal("the case does not change the config")
			}
			_, err := Parse([]byte(src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one containing %q", err, c.want)
			}
		})
	}
}
