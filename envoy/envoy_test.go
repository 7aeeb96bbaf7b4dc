package envoy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"gopkg.in/yaml.v3"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	// Every type a typed_config may name in these files. An Any whose type
	// is not registered here fails the test, as Envoy would reject it.
	_ "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/network/postgres_proxy/v3alpha"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/starttls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// load parses one bootstrap from YAML: unknown fields and unregistered
// types are errors, and every message, including those inside Any values,
// must pass its validation rules.
func load(src []byte) (*bootstrapv3.Bootstrap, error) {
	var doc any
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("yaml to json: %w", err)
	}
	var b bootstrapv3.Bootstrap
	opts := protojson.UnmarshalOptions{DiscardUnknown: false}
	if err := opts.Unmarshal(js, &b); err != nil {
		return nil, fmt.Errorf("protojson: %w", err)
	}
	if err := validate(b.ProtoReflect(), "bootstrap"); err != nil {
		return nil, err
	}
	return &b, nil
}

// validate runs ValidateAll on m and on the content of every Any below it;
// protoc-gen-validate stops at an Any's boundary, so the walk goes through
// them itself.
func validate(m protoreflect.Message, path string) error {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		return validate(inner.ProtoReflect(), path+"("+a.TypeUrl+")")
	}
	if v, ok := m.Interface().(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil {
			return true
		}
		p := path + "." + string(fd.Name())
		switch {
		case fd.IsList():
			for i := 0; i < v.List().Len() && err == nil; i++ {
				err = validate(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))
			}
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				err = validate(mv.Message(), fmt.Sprintf("%s[%v]", p, k.Interface()))
				return err == nil
			})
		default:
			err = validate(v.Message(), p)
		}
		return err == nil
	})
	return err
}

func TestConfigs(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no Envoy configs found")
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := load(src); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPostgresChain checks what the postgres config promises beyond
// parsing: filter order and the ext_proc settings vigil relies on.
func TestPostgresChain(t *testing.T) {
	src, err := os.ReadFile("postgres.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := load(src)
	if err != nil {
		t.Fatal(err)
	}
	chain := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0]
	var names []string
	for _, f := range chain.GetFilters() {
		names = append(names, f.GetName())
	}
	want := "envoy.filters.network.postgres_proxy envoy.filters.network.ext_proc " +
		"envoy.filters.network.tcp_proxy"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("filters = %s, want %s", got, want)
	}

	msg, err := chain.GetFilters()[1].GetTypedConfig().UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	js, err := protojson.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	var ext struct {
		GrpcService struct {
			EnvoyGrpc       struct{ ClusterName string }
			InitialMetadata []struct{ Key, Value string }
		}
		FailureModeAllow bool
		MessageTimeout   string
	}
	if err := json.Unmarshal(js, &ext); err != nil {
		t.Fatal(err)
	}
	if ext.FailureModeAllow {
		t.Error("ext_proc must fail closed")
	}
	if ext.MessageTimeout != "3600s" {
		t.Errorf("message_timeout = %q, want 3600s for approval holds", ext.MessageTimeout)
	}
	if ext.GrpcService.EnvoyGrpc.ClusterName != "vigil" {
		t.Errorf("ext_proc cluster = %q", ext.GrpcService.EnvoyGrpc.ClusterName)
	}
	md := ext.GrpcService.InitialMetadata
	if len(md) != 1 || md[0].Key != "x-vigil-connection" || md[0].Value != "customer-db" {
		t.Errorf("initial_metadata = %+v", md)
	}
}

// TestRejects proves the check can fail: each edit of postgres.yaml must
// make load return an error mentioning what is wrong.
func TestRejects(t *testing.T) {
	src, err := os.ReadFile("postgres.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"misspelled field in a typed_config", "failure_mode_allow:", "failure_mode_alow:",
			"failure_mode_alow"},
		{"misspelled field in the bootstrap", "connect_timeout: 1s", "connect_timeot: 1s",
			"connect_timeot"},
		{"unknown type", "tcp_proxy.v3.TcpProxy", "tcp_proxy.v3.TcpProxi", "TcpProxi"},
		{"bad enum", "downstream_ssl: REQUIRE", "downstream_ssl: REQUIRED", "REQUIRED"},
		{"validation rule inside an Any", "message_timeout: 3600s", "message_timeout: 7200s",
			"MessageTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Contains(src, []byte(tc.old)) {
				t.Fatalf("postgres.yaml no longer contains %q", tc.old)
			}
			bad := bytes.Replace(src, []byte(tc.old), []byte(tc.new), 1)
			_, err := load(bad)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("load = %v, want an error about %s", err, tc.want)
			}
		})
	}
}

// The registry must know the types the configs name; a missing blank import
// would otherwise show up only as a confusing parse error.
func TestTypesRegistered(t *testing.T) {
	for _, name := range []string{
		"envoy.extensions.filters.network.postgres_proxy.v3alpha.PostgresProxy",
		"envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor",
		"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
		"envoy.extensions.transport_sockets.starttls.v3.StartTlsConfig",
		"envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
	} {
		if _, err := protoregistry.GlobalTypes.FindMessageByName(
			protoreflect.FullName(name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
