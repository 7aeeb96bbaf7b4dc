package proto_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/policy/approvals"
	approvalsv1 "github.com/vigilaudit/vigil/proto/vigil/approvals/v1"
	auditv1 "github.com/vigilaudit/vigil/proto/vigil/audit/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestSchemasMatchGoTypes compares each message with the Go type whose
// JSON it describes, field by field and recursively: the same JSON keys,
// compatible types. It catches a field added on one side even when no
// test value sets it.
func TestSchemasMatchGoTypes(t *testing.T) {
	for _, c := range []struct {
		goType any
		msg    proto.Message
		skip   []string // JSON keys of the Go type that are not on the wire
	}{
		{audit.Record{}, &auditv1.Record{}, nil},
		{audit.Event{}, &auditv1.Event{}, nil},
		// The signature sits beside the signed object on a checkpoint line.
		{audit.Checkpoint{}, &auditv1.Checkpoint{}, []string{"signature"}},
		{approvals.View{}, &approvalsv1.View{}, nil},
		{approvals.ListResponse{}, &approvalsv1.ListResponse{}, nil},
		{approvals.DecisionBody{}, &approvalsv1.DecisionBody{}, nil},
		{approvals.ErrorResponse{}, &approvalsv1.ErrorResponse{}, nil},
	} {
		md := c.msg.ProtoReflect().Descriptor()
		t.Run(string(md.Name()), func(t *testing.T) {
			compareType(t, reflect.TypeOf(c.goType), md, c.skip)
		})
	}
}

// extraKeys are JSON keys a type's MarshalJSON writes beyond its tagged
// fields; all of them are strings.
var extraKeys = map[reflect.Type][]string{
	reflect.TypeFor[approvals.Request](): {"timeout", "window"},
}

var (
	timeType = reflect.TypeFor[time.Time]()
	rawType  = reflect.TypeFor[json.RawMessage]()
)

func compareType(t *testing.T, gt reflect.Type, md protoreflect.MessageDescriptor,
	skip []string) {
	t.Helper()
	seen := map[string]bool{}
	for f := range gt.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" || slices.Contains(skip, name) {
			continue
		}
		if f.Anonymous || name == "" {
			t.Fatalf("%s.%s: untagged or embedded fields are not handled here", gt, f.Name)
		}
		seen[name] = true
		fd := md.Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			t.Errorf("%s: JSON key %q (%s.%s) missing", md.FullName(), name, gt, f.Name)
			continue
		}
		compareField(t, gt.String()+"."+f.Name, f.Type, fd)
	}
	for _, name := range extraKeys[gt] {
		seen[name] = true
		if fd := md.Fields().ByName(protoreflect.Name(name)); fd == nil {
			t.Errorf("%s: JSON key %q (written by %s.MarshalJSON) missing",
				md.FullName(), name, gt)
		} else if fd.Kind() != protoreflect.StringKind {
			t.Errorf("%s: %q is %s, want string", md.FullName(), name, fd.Kind())
		}
	}
	for i := range md.Fields().Len() {
		if fd := md.Fields().Get(i); !seen[string(fd.Name())] {
			t.Errorf("%s: field %q has no JSON key in %s", md.FullName(), fd.Name(), gt)
		}
	}
}

// goKinds says which protobuf kind holds each Go scalar kind. Go int is
// 64 bits on every platform vigil builds for.
var goKinds = map[reflect.Kind]protoreflect.Kind{
	reflect.String:  protoreflect.StringKind,
	reflect.Bool:    protoreflect.BoolKind,
	reflect.Int:     protoreflect.Int64Kind,
	reflect.Int64:   protoreflect.Int64Kind,
	reflect.Uint32:  protoreflect.Uint32Kind,
	reflect.Uint64:  protoreflect.Uint64Kind,
	reflect.Float64: protoreflect.DoubleKind,
}

func compareField(t *testing.T, where string, ft reflect.Type,
	fd protoreflect.FieldDescriptor) {
	t.Helper()
	if ft.Kind() == reflect.Pointer {
		ft = ft.Elem()
	}
	if ft.Kind() == reflect.Slice && ft != rawType {
		if !fd.IsList() {
			t.Errorf("%s: %s is not repeated", where, fd.FullName())
			return
		}
		ft = ft.Elem()
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
	} else if fd.IsList() {
		t.Errorf("%s: %s is repeated, the Go field is not", where, fd.FullName())
		return
	}

	switch {
	case ft == timeType:
		if fd.Message() == nil || fd.Message().FullName() != "google.protobuf.Timestamp" {
			t.Errorf("%s: %s should be a google.protobuf.Timestamp", where, fd.FullName())
		}
	case ft == rawType: // an embedded document, such as a record's event
		if fd.Message() == nil {
			t.Errorf("%s: %s should be a message", where, fd.FullName())
		}
	case ft.Kind() == reflect.Struct:
		if fd.Message() == nil {
			t.Errorf("%s: %s should be a message", where, fd.FullName())
			return
		}
		compareType(t, ft, fd.Message(), nil)
	default:
		want, ok := goKinds[ft.Kind()]
		if !ok {
			t.Errorf("%s: Go kind %s is not handled here", where, ft.Kind())
		} else if fd.Kind() != want {
			t.Errorf("%s: %s is %s, want %s", where, fd.FullName(), fd.Kind(), want)
		}
	}
}
