package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const testTimeout = 10 * time.Second

// script is a Session whose methods are plain functions.
type script struct {
	onClient func(ctx context.Context, chunk []byte, eos bool) Reply
	onServer func(ctx context.Context, chunk []byte, eos bool) Reply
	closed   chan error
}

func (s *script) OnClient(ctx context.Context, chunk []byte, eos bool) Reply {
	return s.onClient(ctx, chunk, eos)
}

func (s *script) OnServer(ctx context.Context, chunk []byte, eos bool) Reply {
	return s.onServer(ctx, chunk, eos)
}

func (s *script) Close(err error) { s.closed <- err }

// tag forwards a chunk with a prefix naming its side.
func tag(prefix string) func(context.Context, []byte, bool) Reply {
	return func(_ context.Context, chunk []byte, _ bool) Reply {
		return Reply{Data: append([]byte(prefix), chunk...)}
	}
}

// handlerFunc adapts a function to Handler.
type handlerFunc func(ctx context.Context, info ConnInfo) (Session, error)

func (f handlerFunc) NewSession(ctx context.Context, info ConnInfo) (Session, error) {
	return f(ctx, info)
}

// start serves h over real gRPC and opens one stream with the gateway
// headers.
func start(t *testing.T, h Handler) procv3.NetworkExternalProcessor_ProcessClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	NewServer(h, slog.New(slog.DiscardHandler)).Register(g)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	ctx = metadata.AppendToOutgoingContext(ctx, HeaderConnection, "customer-db",
		HeaderClient, "192.0.2.7:50000")
	stream, err := procv3.NewNetworkExternalProcessorClient(cc).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

func read(data string, eos bool) *procv3.ProcessingRequest {
	return &procv3.ProcessingRequest{
		ReadData: &procv3.Data{Data: []byte(data), EndOfStream: eos}}
}

func write(data string, eos bool) *procv3.ProcessingRequest {
	return &procv3.ProcessingRequest{
		WriteData: &procv3.Data{Data: []byte(data), EndOfStream: eos}}
}

func send(t *testing.T, s procv3.NetworkExternalProcessor_ProcessClient,
	reqs ...*procv3.ProcessingRequest) {
	t.Helper()
	for _, req := range reqs {
		if err := s.Send(req); err != nil {
			t.Fatal(err)
		}
	}
}

func recv(t *testing.T,
	s procv3.NetworkExternalProcessor_ProcessClient) *procv3.ProcessingResponse {
	t.Helper()
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return resp
}

// describe renders a reply as "read:DATA" or "write:DATA", with "+eos".
func describe(r *procv3.ProcessingResponse) string {
	var s string
	switch {
	case r.ReadData != nil && r.WriteData == nil:
		s = "read:" + string(r.ReadData.Data)
		if r.ReadData.EndOfStream {
			s += "+eos"
		}
	case r.WriteData != nil && r.ReadData == nil:
		s = "write:" + string(r.WriteData.Data)
		if r.WriteData.EndOfStream {
			s += "+eos"
		}
	default:
		return fmt.Sprintf("malformed %v", r)
	}
	if r.ConnectionStatus != procv3.ProcessingResponse_CONTINUE {
		s += " " + r.ConnectionStatus.String()
	}
	return s
}

func TestOneReplyPerRequestInOrder(t *testing.T) {
	sess := &script{onClient: tag("c"), onServer: tag("s"), closed: make(chan error, 1)}
	infos := make(chan ConnInfo, 1)
	stream := start(t, handlerFunc(func(_ context.Context, info ConnInfo) (Session, error) {
		infos <- info
		return sess, nil
	}))
	send(t, stream, read("1", false), write("a", false), read("2", false), write("b", true),
		read("3", true))
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}

	var reads, writes []string
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if d := describe(resp); d[0] == 'r' {
			reads = append(reads, d)
		} else {
			writes = append(writes, d)
		}
	}
	if got, want := fmt.Sprint(reads), "[read:c1 read:c2 read:c3+eos]"; got != want {
		t.Errorf("read replies = %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(writes), "[write:sa write:sb+eos]"; got != want {
		t.Errorf("write replies = %s, want %s", got, want)
	}
	if err := <-sess.closed; err != nil {
		t.Errorf("Close(%v), want nil after a clean end", err)
	}
	info := <-infos
	if info.Connection != "customer-db" || info.Client != "192.0.2.7:50000" || info.Peer == "" {
		t.Errorf("ConnInfo = %+v", info)
	}
}

func TestBlockedClientDoesNotBlockServer(t *testing.T) {
	release := make(chan struct{})
	sess := &script{
		onClient: func(ctx context.Context, chunk []byte, eos bool) Reply {
			<-release // an approval hold
			return Reply{Data: chunk}
		},
		onServer: tag("s"),
		closed:   make(chan error, 1),
	}
	stream := start(t, handlerFunc(func(context.Context, ConnInfo) (Session, error) {
		return sess, nil
	}))
	send(t, stream, read("held", false), write("notice", false))
	if got := describe(recv(t, stream)); got != "write:snotice" {
		t.Fatalf("first reply = %s, want the server chunk while the client one is held", got)
	}
	close(release)
	if got := describe(recv(t, stream)); got != "read:held" {
		t.Fatalf("second reply = %s, want the released client chunk", got)
	}
}

func TestRequestWithBothDirections(t *testing.T) {
	sess := &script{onClient: tag("c"), onServer: tag("s"), closed: make(chan error, 1)}
	stream := start(t, handlerFunc(func(context.Context, ConnInfo) (Session, error) {
		return sess, nil
	}))
	send(t, stream, &procv3.ProcessingRequest{
		ReadData:  &procv3.Data{Data: []byte("x")},
		WriteData: &procv3.Data{Data: []byte("y")},
	})
	_, err := stream.Recv()
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("recv = %v, want InvalidArgument", err)
	}
	if err := <-sess.closed; status.Code(err) != codes.InvalidArgument {
		t.Errorf("Close(%v), want the InvalidArgument error", err)
	}
}

func TestPanickingSessionIsReset(t *testing.T) {
	sess := &script{
		onClient: func(context.Context, []byte, bool) Reply { panic("boom") },
		onServer: tag("s"),
		closed:   make(chan error, 1),
	}
	stream := start(t, handlerFunc(func(context.Context, ConnInfo) (Session, error) {
		return sess, nil
	}))
	send(t, stream, read("q", false))
	if got := describe(recv(t, stream)); got != "read: CLOSE_RST" {
		t.Fatalf("reply = %s, want an empty read reply with CLOSE_RST", got)
	}
}

func TestUnknownConnectionEndsStream(t *testing.T) {
	stream := start(t, handlerFunc(func(_ context.Context, info ConnInfo) (Session, error) {
		return nil, fmt.Errorf("no connection named %q", info.Connection)
	}))
	// The stream may already have ended: Send then reports io.EOF and Recv
	// carries the status.
	if err := stream.Send(read("startup", false)); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	_, err := stream.Recv()
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("recv = %v, want the stream to end with an error", err)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("code = %v, want FailedPrecondition", status.Code(err))
	}
}
