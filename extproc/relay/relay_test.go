package relay

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"syscall"
	"testing"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vigilaudit/vigil/extproc"
)

// testTimeout bounds every blocking step so a broken relay fails the test
// instead of hanging it.
const testTimeout = 10 * time.Second

type stream = procv3.NetworkExternalProcessor_ProcessServer

// processor is a scripted NetworkExternalProcessor served over real gRPC.
type processor struct {
	procv3.UnimplementedNetworkExternalProcessorServer
	script func(stream) error
	md     chan metadata.MD // headers of each stream
	ended  chan error       // what each script returned
	client procv3.NetworkExternalProcessorClient
}

func (p *processor) Process(s stream) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	p.md <- md
	err := p.script(s)
	p.ended <- err
	return err
}

func newProcessor(t *testing.T, script func(stream) error) *processor {
	t.Helper()
	p := &processor{script: script, md: make(chan metadata.MD, 8), ended: make(chan error, 8)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	procv3.RegisterNetworkExternalProcessorServer(g, p)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	p.client = procv3.NewNetworkExternalProcessorClient(cc)
	return p
}

// echo answers every request with its own data, direction and eos: what
// a processor that changes nothing does.
func echo(s stream) error {
	return serve(s, func(d []byte) []byte { return d }, func(d []byte) []byte { return d })
}

// serve answers each request in order with its direction's rewrite.
func serve(s stream, read, write func([]byte) []byte) error {
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &procv3.ProcessingResponse{}
		if d := req.GetReadData(); d != nil {
			resp.ReadData = &procv3.Data{Data: read(d.Data), EndOfStream: d.EndOfStream}
		} else {
			d := req.GetWriteData()
			resp.WriteData = &procv3.Data{Data: write(d.Data), EndOfStream: d.EndOfStream}
		}
		if err := s.Send(resp); err != nil {
			return err
		}
	}
}

// drain reads requests until the stream ends, answering none.
func drain(s stream) error {
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
	}
}

// upstream is an echo server that reports every connection's input.
type upstream struct {
	addr string
	got  chan []byte
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	u := &upstream{addr: ln.Addr().String(), got: make(chan []byte, 8)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var in bytes.Buffer
				io.Copy(io.MultiWriter(c, &in), c)
				c.(*net.TCPConn).CloseWrite()
				u.got <- in.Bytes()
			}()
		}
	}()
	return u
}

// serveOne runs r.ServeConn on one accepted connection; done closes when
// ServeConn returns.
func serveOne(t *testing.T, r *Relay) (addr string, done <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		r.ServeConn(context.Background(), c)
	}()
	return ln.Addr().String(), ch
}

func newRelay(p *processor, u *upstream, opts Options) *Relay {
	opts.Connection = "customer-db"
	opts.Upstream = u.addr
	opts.Processor = p.client
	opts.Log = slog.New(slog.DiscardHandler)
	return New(opts)
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testTimeout))
	return c.(*net.TCPConn)
}

// startup is a protocol 3.0 StartupMessage for user.
func startup(user string) []byte {
	body := []byte("user\x00" + user + "\x00\x00")
	m := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
	m = binary.BigEndian.AppendUint32(m, 196608)
	return append(m, body...)
}

// request is an 8-byte SSLRequest, GSSENCRequest or the like.
func request(code uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), code)
}

func write(t *testing.T, w io.Writer, b []byte) {
	t.Helper()
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
}

func readN(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

func TestPassThrough(t *testing.T) {
	p := newProcessor(t, echo)
	u := newUpstream(t)
	r := newRelay(p, u, Options{})
	addr, done := serveOne(t, r)
	c := dial(t, addr)

	want := append(startup("alice"), "hello"...)
	write(t, c, want[:11])
	write(t, c, want[11:])
	if got := readN(t, c, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("client got %q, want %q", got, want)
	}

	// The client's FIN travels through the processor to the upstream, whose
	// FIN comes back the same way; then the stream ends cleanly.
	c.CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v; want a clean EOF", rest, err)
	}
	if got := wait(t, u.got, "upstream input"); !bytes.Equal(got, want) {
		t.Fatalf("upstream got %q, want %q", got, want)
	}
	if err := wait(t, p.ended, "processor end"); err != nil {
		t.Fatalf("processor stream: %v", err)
	}
	wait(t, done, "relay end")

	md := wait(t, p.md, "stream headers")
	if got := md.Get(extproc.HeaderConnection); len(got) != 1 || got[0] != "customer-db" {
		t.Errorf("%s = %q", extproc.HeaderConnection, got)
	}
	if got := md.Get(extproc.HeaderClient); len(got) != 1 || got[0] != c.LocalAddr().String() {
		t.Errorf("%s = %q, want %s", extproc.HeaderClient, got, c.LocalAddr())
	}
	if s := r.Stats(); s != (Stats{Accepted: 1}) {
		t.Errorf("stats = %+v", s)
	}
}

func TestPipelinesRequests(t *testing.T) {
	// Envoy keeps reading while a reply is outstanding: the processor sees
	// the second chunk before it answers the first.
	first := startup("alice")
	p := newProcessor(t, func(s stream) error {
		var reqs []*procv3.ProcessingRequest
		for len(reqs) < 2 {
			req, err := s.Recv()
			if err != nil {
				return err
			}
			reqs = append(reqs, req)
		}
		for _, req := range reqs {
			if err := s.Send(&procv3.ProcessingResponse{ReadData: req.ReadData}); err != nil {
				return err
			}
		}
		return echo(s)
	})
	u := newUpstream(t)
	addr, _ := serveOne(t, newRelay(p, u, Options{}))
	c := dial(t, addr)
	write(t, c, first)
	write(t, c, []byte("x"))
	want := append(first, 'x')
	if got := readN(t, c, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("client got %q, want %q", got, want)
	}
}

func TestRewrites(t *testing.T) {
	p := newProcessor(t, func(s stream) error {
		return serve(s, bytes.ToUpper, bytes.ToLower)
	})
	u := newUpstream(t)
	addr, done := serveOne(t, newRelay(p, u, Options{}))
	c := dial(t, addr)
	msg := append(startup("alice"), "Hello"...)
	write(t, c, msg)
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := bytes.ToLower(msg); !bytes.Equal(got, want) {
		t.Errorf("client got %q, want %q", got, want)
	}
	if got, want := wait(t, u.got, "upstream input"), bytes.ToUpper(msg); !bytes.Equal(got, want) {
		t.Errorf("upstream got %q, want %q", got, want)
	}
	wait(t, done, "relay end")
}

// closeWith answers the first request with status and data that must be
// dropped.
func closeWith(st procv3.ProcessingResponse_ConnectionStatus) func(stream) error {
	return func(s stream) error {
		req, err := s.Recv()
		if err != nil {
			return err
		}
		err = s.Send(&procv3.ProcessingResponse{ConnectionStatus: st,
			ReadData: &procv3.Data{Data: []byte("MUST NOT ARRIVE"), EndOfStream: req.ReadData.EndOfStream}})
		if err != nil {
			return err
		}
		return drain(s)
	}
}

func TestCloseBeforeData(t *testing.T) {
	p := newProcessor(t, closeWith(procv3.ProcessingResponse_CLOSE))
	u := newUpstream(t)
	r := newRelay(p, u, Options{})
	addr, done := serveOne(t, r)
	c := dial(t, addr)
	write(t, c, startup("alice"))
	if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
		t.Fatalf("client got %q, %v; want a clean EOF", got, err)
	}
	if got := wait(t, u.got, "upstream input"); len(got) != 0 {
		t.Fatalf("upstream got %q after CLOSE", got)
	}
	wait(t, done, "relay end")
	if s := r.Stats(); s.Violations != 0 || s.StreamErrors != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestCloseRST(t *testing.T) {
	p := newProcessor(t, closeWith(procv3.ProcessingResponse_CLOSE_RST))
	u := newUpstream(t)
	addr, _ := serveOne(t, newRelay(p, u, Options{}))
	c := dial(t, addr)
	write(t, c, startup("alice"))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read: %v, want a connection reset", err)
	}
	if got := wait(t, u.got, "upstream input"); len(got) != 0 {
		t.Fatalf("upstream got %q after CLOSE_RST", got)
	}
}

// firstChunk is a processor that reports its first request and then echoes.
func firstChunk(got chan<- []byte) func(stream) error {
	return func(s stream) error {
		req, err := s.Recv()
		if err != nil {
			return err
		}
		got <- req.GetReadData().GetData()
		if err := s.Send(&procv3.ProcessingResponse{ReadData: req.ReadData}); err != nil {
			return err
		}
		return echo(s)
	}
}

func TestEncryptionRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		codes []uint32
	}{
		{"ssl", []uint32{codeSSL}},
		{"gssenc", []uint32{codeGSSENC}},
		{"gssenc then ssl", []uint32{codeGSSENC, codeSSL}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := make(chan []byte, 1)
			p := newProcessor(t, firstChunk(first))
			addr, _ := serveOne(t, newRelay(p, newUpstream(t), Options{}))
			c := dial(t, addr)
			for _, code := range tc.codes {
				write(t, c, request(code))
				if got := readN(t, c, 1); got[0] != 'N' {
					t.Fatalf("answer to %d = %q, want N", code, got)
				}
			}
			msg := startup("alice")
			write(t, c, msg)
			if got := readN(t, c, len(msg)); !bytes.Equal(got, msg) {
				t.Fatalf("echo = %q", got)
			}
			if got := wait(t, first, "first chunk"); !bytes.Equal(got, msg) {
				t.Fatalf("processor's first chunk = %q, want the startup message", got)
			}
		})
	}
}

func TestCancelRequestRelayed(t *testing.T) {
	first := make(chan []byte, 1)
	p := newProcessor(t, firstChunk(first))
	addr, _ := serveOne(t, newRelay(p, newUpstream(t), Options{}))
	c := dial(t, addr)
	cancel := binary.BigEndian.AppendUint32(request(codeCancel)[:0], 16)
	cancel = binary.BigEndian.AppendUint32(cancel, codeCancel)
	cancel = append(cancel, 0, 0, 0, 7, 1, 2, 3, 4)
	write(t, c, cancel)
	if got := wait(t, first, "first chunk"); !bytes.Equal(got, cancel) {
		t.Fatalf("processor's first chunk = %x, want the CancelRequest %x", got, cancel)
	}
}

func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	first := make(chan []byte, 1)
	p := newProcessor(t, firstChunk(first))
	r := newRelay(p, newUpstream(t), Options{
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
	})
	addr, _ := serveOne(t, r)
	raw := dial(t, addr)
	write(t, raw, request(codeSSL))
	if got := readN(t, raw, 1); got[0] != 'S' {
		t.Fatalf("answer to SSLRequest = %q, want S", got)
	}
	c := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	msg := append(startup("alice"), "over tls"...)
	write(t, c, msg)
	if got := readN(t, c, len(msg)); !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q", got)
	}
	if got, want := wait(t, first, "first chunk"), startup("alice"); !bytes.Equal(got, want) {
		t.Fatalf("processor's first chunk = %q, want the plaintext startup message", got)
	}
}

func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true,

		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func TestContractViolations(t *testing.T) {
	data := func(b string, eos bool) *procv3.Data {
		return &procv3.Data{Data: []byte(b), EndOfStream: eos}
	}
	for _, tc := range []struct {
		name    string
		replies []*procv3.ProcessingResponse // all sent after the first request
	}{
		{"both directions", []*procv3.ProcessingResponse{
			{ReadData: data("x", false), WriteData: data("y", false)}}},
		{"no direction", []*procv3.ProcessingResponse{{}}},
		{"wrong direction", []*procv3.ProcessingResponse{{WriteData: data("x", false)}}},
		{"more replies than requests", []*procv3.ProcessingResponse{
			{ReadData: data("x", false)}, {ReadData: data("y", false)}}},
		{"end_of_stream changed", []*procv3.ProcessingResponse{{ReadData: data("x", true)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProcessor(t, func(s stream) error {
				if _, err := s.Recv(); err != nil {
					return err
				}
				for _, resp := range tc.replies {
					if err := s.Send(resp); err != nil {
						return err
					}
				}
				return drain(s)
			})
			r := newRelay(p, newUpstream(t), Options{})
			addr, done := serveOne(t, r)
			c := dial(t, addr)
			write(t, c, startup("alice"))
			if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("client read: %v, want the connection reset", err)
			}
			wait(t, done, "relay end")
			if s := r.Stats(); s.Violations != 1 || s.StreamErrors != 0 {
				t.Fatalf("stats = %+v, want one violation", s)
			}
		})
	}
}

func TestStreamErrorClosesConnection(t *testing.T) {
	p := newProcessor(t, func(s stream) error {
		if _, err := s.Recv(); err != nil {
			return err
		}
		return status.Error(codes.FailedPrecondition, "unknown connection")
	})
	u := newUpstream(t)
	r := newRelay(p, u, Options{})
	addr, done := serveOne(t, r)
	c := dial(t, addr)
	write(t, c, startup("alice"))
	if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
		t.Fatalf("client got %q, %v; want the connection closed", got, err)
	}
	if got := wait(t, u.got, "upstream input"); len(got) != 0 {
		t.Fatalf("upstream got %q", got)
	}
	wait(t, done, "relay end")
	if s := r.Stats(); s.StreamErrors != 1 {
		t.Fatalf("stats = %+v, want one stream error", s)
	}
}

func TestMessageTimeout(t *testing.T) {
	p := newProcessor(t, drain)
	r := newRelay(p, newUpstream(t), Options{MessageTimeout: 50 * time.Millisecond})
	addr, done := serveOne(t, r)
	c := dial(t, addr)
	write(t, c, startup("alice"))
	if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
		t.Fatalf("client got %q, %v; want the connection closed", got, err)
	}
	wait(t, done, "relay end")
	if s := r.Stats(); s.Violations != 1 {
		t.Fatalf("stats = %+v, want the timeout counted", s)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	p := newProcessor(t, echo)
	r := newRelay(p, newUpstream(t), Options{HandshakeTimeout: 50 * time.Millisecond})
	addr, done := serveOne(t, r)
	c := dial(t, addr)
	write(t, c, []byte{0, 0}) // half a length, then silence
	if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
		t.Fatalf("client got %q, %v; want the connection closed", got, err)
	}
	wait(t, done, "relay end")
	select {
	case <-p.md:
		t.Fatal("a stream was opened for a client that never finished its handshake")
	default:
	}
}

func TestServeShutdown(t *testing.T) {
	p := newProcessor(t, echo)
	r := newRelay(p, newUpstream(t), Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- r.Serve(ctx, ln) }()

	c := dial(t, ln.Addr().String())
	msg := startup("alice")
	write(t, c, msg)
	readN(t, c, len(msg))
	cancel()
	if err := wait(t, served, "Serve to return"); err != nil {
		t.Fatalf("Serve = %v, want nil after cancel", err)
	}
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("client read after shutdown: %v", err)
	}
	if s := r.Stats(); s.Accepted != 1 || s.Active != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

// echoSession forwards every chunk unchanged and reports how it ended.
type echoSession struct{ closed chan error }

func (s echoSession) OnClient(_ context.Context, chunk []byte, _ bool) extproc.Reply {
	return extproc.Reply{Data: chunk}
}

func (s echoSession) OnServer(_ context.Context, chunk []byte, _ bool) extproc.Reply {
	return extproc.Reply{Data: chunk}
}

func (s echoSession) Close(err error) { s.closed <- err }

type echoHandler struct {
	sess  echoSession
	infos chan extproc.ConnInfo
}

func (h echoHandler) NewSession(_ context.Context,
	info extproc.ConnInfo) (extproc.Session, error) {
	h.infos <- info
	return h.sess, nil
}

// TestWithExtprocServer runs the relay against vigil's own extproc.Server:
// the session sees the gateway headers and ends cleanly with the connection.
func TestWithExtprocServer(t *testing.T) {
	h := echoHandler{sess: echoSession{closed: make(chan error, 1)},
		infos: make(chan extproc.ConnInfo, 1)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	extproc.NewServer(h, slog.New(slog.DiscardHandler)).Register(g)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	p := &processor{client: procv3.NewNetworkExternalProcessorClient(cc)}

	r := newRelay(p, newUpstream(t), Options{})
	addr, done := serveOne(t, r)
	c := dial(t, addr)
	msg := append(startup("alice"), "SELECT 1"...)
	write(t, c, msg)
	if got := readN(t, c, len(msg)); !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q", got)
	}
	c.CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
	if err := wait(t, h.sess.closed, "session Close"); err != nil {
		t.Fatalf("session Close(%v), want nil", err)
	}
	wait(t, done, "relay end")
	info := wait(t, h.infos, "ConnInfo")
	if info.Connection != "customer-db" || info.Client != c.LocalAddr().String() {
		t.Errorf("ConnInfo = %+v", info)
	}
	if s := r.Stats(); s.Violations != 0 || s.StreamErrors != 0 {
		t.Errorf("stats = %+v", s)
	}
}
