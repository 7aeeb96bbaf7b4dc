package relay

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vigilaudit/vigil/internal/tlsconfig/tlstest"
)

// logBuffer collects a Relay's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newLoggingRelay is newRelay with its log kept.
func newLoggingRelay(p *processor, upstreamAddr string, opts Options) (*Relay, *logBuffer) {
	lb := &logBuffer{}
	opts.Connection = "customer-db"
	opts.Upstream = upstreamAddr
	opts.Processor = p.client
	opts.Log = slog.New(slog.NewTextHandler(lb, nil))
	return New(opts), lb
}

// serverTLS is a listener configuration with a certificate for 127.0.0.1
// and localhost, and the pool that verifies it.
func serverTLS(t *testing.T) (*tls.Config, *tlstest.CA) {
	ca := tlstest.NewCA(t, "relay test CA")
	leaf := ca.Issue(t, "127.0.0.1", "localhost")
	return &tls.Config{Certificates: []tls.Certificate{leaf.TLS}}, ca
}

// readFatal reads one ErrorResponse from c and then expects the
// connection to end.
func readFatal(t *testing.T, c io.Reader) *pgproto3.ErrorResponse {
	t.Helper()
	br := bufio.NewReader(c)
	hdr := readN(t, br, 5)
	if hdr[0] != 'E' {
		t.Fatalf("got message %q, want an ErrorResponse", hdr[0])
	}
	body := readN(t, br, int(binary.BigEndian.Uint32(hdr[1:]))-4)
	var e pgproto3.ErrorResponse
	if err := e.Decode(body); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(br); len(rest) != 0 {
		t.Fatalf("after the error: %q, %v; want the connection closed", rest, err)
	}
	return &e
}

// noStream fails when the processor saw a stream.
func noStream(t *testing.T, p *processor, done <-chan struct{}) {
	t.Helper()
	wait(t, done, "ServeConn to return")
	select {
	case md := <-p.md:
		t.Fatalf("the processor saw a stream (%v); the relay must refuse before it", md)
	default:
	}
}

func TestTLSRefusesPlaintextStartup(t *testing.T) {
	cfg, _ := serverTLS(t)
	for _, tc := range []struct {
		name  string
		codes []uint32
	}{
		{"startup", nil},
		{"gssenc refused, then startup", []uint32{codeGSSENC}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProcessor(t, echo)
			r, logs := newLoggingRelay(p, newUpstream(t).addr, Options{TLS: cfg})
			addr, done := serveOne(t, r)
			c := dial(t, addr)
			for _, code := range tc.codes {
				write(t, c, request(code))
				if got := readN(t, c, 1); got[0] != 'N' {
					t.Fatalf("answer to %d = %q, want N", code, got)
				}
			}
			write(t, c, startup("alice"))
			e := readFatal(t, c)
			if e.Severity != "FATAL" || e.SeverityUnlocalized != "FATAL" || e.Code != "28000" ||
				e.Message != MsgTLSRequired {
				t.Fatalf("error = %+v, want FATAL 28000 %q", e, MsgTLSRequired)
			}
			noStream(t, p, done)
			if l := logs.String(); !strings.Contains(l, "level=INFO") ||
				!strings.Contains(l, "requires TLS") {
				t.Fatalf("log does not say at Info why the client was refused:\n%s", l)
			}
		})
	}
}

func TestTLSRelaysPlaintextCancel(t *testing.T) {
	cfg, _ := serverTLS(t)
	first := make(chan []byte, 1)
	p := newProcessor(t, firstChunk(first))
	addr, _ := serveOne(t, newRelay(p, newUpstream(t), Options{TLS: cfg}))
	c := dial(t, addr)
	cancel := binary.BigEndian.AppendUint32(nil, 16)
	cancel = binary.BigEndian.AppendUint32(cancel, codeCancel)
	cancel = append(cancel, 0, 0, 0, 7, 1, 2, 3, 4)
	write(t, c, cancel)
	if got := wait(t, first, "first chunk"); !bytes.Equal(got, cancel) {
		t.Fatalf("processor's first chunk = %x, want the CancelRequest %x", got, cancel)
	}
}

func TestTLSRequiresClientCertificate(t *testing.T) {
	cfg, ca := serverTLS(t)
	clientCA := tlstest.NewCA(t, "client CA")
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.ClientCAs = clientCA.Pool()
	for _, tc := range []struct {
		name string
		cert *tlstest.Leaf
		ok   bool
	}{
		{"no certificate", nil, false},
		{"certificate of another CA", tlstest.NewCA(t, "other").Issue(t, "agent"), false},
		{"certificate of the client CA", clientCA.Issue(t, "agent"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := make(chan []byte, 1)
			p := newProcessor(t, firstChunk(first))
			addr, done := serveOne(t, newRelay(p, newUpstream(t), Options{TLS: cfg}))
			raw := dial(t, addr)
			write(t, raw, request(codeSSL))
			if got := readN(t, raw, 1); got[0] != 'S' {
				t.Fatalf("answer to SSLRequest = %q, want S", got)
			}
			ccfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"}
			if tc.cert != nil {
				ccfg.Certificates = []tls.Certificate{tc.cert.TLS}
			}
			c := tls.Client(raw, ccfg)
			msg := startup("alice")
			// In TLS 1.3 the server checks the client's certificate after the
			// client's side of the handshake is done: the refusal shows up on
			// the first read.
			_, werr := c.Write(msg)
			got := make([]byte, len(msg))
			_, rerr := io.ReadFull(c, got)
			if !tc.ok {
				if werr == nil && rerr == nil {
					t.Fatal("the relay accepted the client without a valid certificate")
				}
				noStream(t, p, done)
				return
			}
			if werr != nil || rerr != nil || !bytes.Equal(got, msg) {
				t.Fatalf("echo = %q, %v, %v", got, werr, rerr)
			}
			wait(t, first, "first chunk")
		})
	}
}

func TestDirectTLS(t *testing.T) {
	cfg, ca := serverTLS(t)
	first := make(chan []byte, 1)
	p := newProcessor(t, firstChunk(first))
	addr, _ := serveOne(t, newRelay(p, newUpstream(t), Options{TLS: cfg}))
	c := tls.Client(dial(t, addr), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost",
		NextProtos: []string{"postgresql"}})
	msg := append(startup("alice"), "direct"...)
	write(t, c, msg)
	if got := readN(t, c, len(msg)); !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q", got)
	}
	if got, want := wait(t, first, "first chunk"), startup("alice"); !bytes.Equal(got, want) {
		t.Fatalf("processor's first chunk = %q, want the plaintext startup message", got)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "postgresql" {
		t.Fatalf("ALPN = %q, want postgresql", p)
	}
}

func TestDirectTLSRefused(t *testing.T) {
	cfg, ca := serverTLS(t)
	for _, tc := range []struct {
		name  string
		tls   *tls.Config // the relay's
		alpn  []string    // the client's
		inLog string
	}{
		{"no ALPN", cfg, nil, "ALPN"},
		{"no certificate configured", nil, []string{"postgresql"}, "sslnegotiation=direct"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProcessor(t, echo)
			r, logs := newLoggingRelay(p, newUpstream(t).addr, Options{TLS: tc.tls})
			addr, done := serveOne(t, r)
			c := tls.Client(dial(t, addr), &tls.Config{RootCAs: ca.Pool(),
				ServerName: "localhost", NextProtos: tc.alpn})
			_, werr := c.Write(startup("alice"))
			_, rerr := c.Read(make([]byte, 1))
			if werr == nil && rerr == nil {
				t.Fatal("the relay answered a direct TLS client it must refuse")
			}
			noStream(t, p, done)
			if l := logs.String(); !strings.Contains(l, tc.inLog) {
				t.Fatalf("log does not mention %q:\n%s", tc.inLog, l)
			}
		})
	}
}

// tlsUpstream is a PostgreSQL-shaped server: it answers an SSLRequest with
// answer and, after `S`, does the TLS handshake with cert and echoes what
// follows. Each connection's first 8 bytes and later input are reported.
type tlsUpstream struct {
	addr    string
	request chan []byte // the first 8 bytes of each connection
	got     chan []byte // what each TLS connection carried
}

func newTLSUpstream(t *testing.T, answer byte, cert tls.Certificate) *tlsUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	u := &tlsUpstream{addr: ln.Addr().String(), request: make(chan []byte, 4),
		got: make(chan []byte, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go u.serve(c, answer, cert)
		}
	}()
	return u
}

func (u *tlsUpstream) serve(c net.Conn, answer byte, cert tls.Certificate) {
	defer c.Close()
	req := make([]byte, 8)
	if _, err := io.ReadFull(c, req); err != nil {
		return
	}
	u.request <- req
	if _, err := c.Write([]byte{answer}); err != nil || answer != 'S' {
		return
	}
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
	if tc.Handshake() != nil {
		return
	}
	var in bytes.Buffer
	io.Copy(io.MultiWriter(tc, &in), tc)
	tc.CloseWrite()
	u.got <- in.Bytes()
}

func TestUpstreamTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "db CA")
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		// ServerName defaults to the upstream's host, 127.0.0.1.
		{"verify-full", &tls.Config{RootCAs: ca.Pool()}},
		{"verify-full, server_name", &tls.Config{RootCAs: ca.Pool(), ServerName: "db.test"}},
		{"require", &tls.Config{InsecureSkipVerify: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := ca.Issue(t, "127.0.0.1", "db.test")
			if tc.cfg.InsecureSkipVerify {
				cert = tlstest.NewCA(t, "unknown").Issue(t, "elsewhere")
			}
			u := newTLSUpstream(t, 'S', cert.TLS)
			first := make(chan []byte, 1)
			p := newProcessor(t, firstChunk(first))
			addr, _ := serveOne(t, newRelay(p, &upstream{addr: u.addr},
				Options{UpstreamTLS: tc.cfg}))
			c := dial(t, addr)
			msg := append(startup("alice"), "to the server"...)
			write(t, c, msg)
			if got := readN(t, c, len(msg)); !bytes.Equal(got, msg) {
				t.Fatalf("echo = %q", got)
			}
			c.CloseWrite()
			if got := wait(t, u.request, "upstream SSLRequest"); !bytes.Equal(got,
				request(codeSSL)) {
				t.Fatalf("upstream's first bytes = %x, want an SSLRequest", got)
			}
			if got := wait(t, u.got, "upstream input"); !bytes.Equal(got, msg) {
				t.Fatalf("upstream got %q over TLS, want %q", got, msg)
			}
			if got := wait(t, first, "first chunk"); !bytes.Equal(got, startup("alice")) {
				t.Fatalf("processor's first chunk = %q, want the startup message", got)
			}
		})
	}
}

func TestUpstreamTLSFails(t *testing.T) {
	ca := tlstest.NewCA(t, "db CA")
	good := ca.Issue(t, "127.0.0.1", "db.test")
	for _, tc := range []struct {
		name   string
		answer byte
		cert   *tlstest.Leaf
		cfg    *tls.Config
		want   error  // in the log line
		msg    string // in the client's error
	}{
		{"server says N", 'N', good, &tls.Config{RootCAs: ca.Pool()},
			ErrUpstreamNoTLS, "does not accept TLS"},
		{"unknown CA", 'S', tlstest.NewCA(t, "other").Issue(t, "127.0.0.1"),
			&tls.Config{RootCAs: ca.Pool()}, ErrUpstreamCertificate, "did not verify"},
		{"wrong name", 'S', good, &tls.Config{RootCAs: ca.Pool(), ServerName: "other.test"},
			ErrUpstreamCertificate, "did not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newTLSUpstream(t, tc.answer, tc.cert.TLS)
			p := newProcessor(t, echo)
			r, logs := newLoggingRelay(p, u.addr, Options{UpstreamTLS: tc.cfg})
			addr, done := serveOne(t, r)
			c := dial(t, addr)
			write(t, c, startup("alice"))
			e := readFatal(t, c)
			if e.Severity != "FATAL" || e.Code != "08001" || !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("error = %+v, want FATAL 08001 saying %q", e, tc.msg)
			}
			noStream(t, p, done)
			if l := logs.String(); !strings.Contains(l, tc.want.Error()) ||
				!strings.Contains(l, "level=WARN") {
				t.Fatalf("log does not say %q at Warn:\n%s", tc.want, l)
			}
			if strings.Contains(e.Message, u.addr) {
				t.Fatalf("the client's error names the upstream: %q", e.Message)
			}
		})
	}
}

// TestUpstreamTLSInjection checks that bytes a server (or someone on the
// path) sends right after `S` are never taken as plaintext protocol.
func TestUpstreamTLSInjection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.ReadFull(c, make([]byte, 8))
		// S, then an AuthenticationOk in clear.
		c.Write([]byte{'S', 'R', 0, 0, 0, 8, 0, 0, 0, 0})
		io.Copy(io.Discard, c)
	}()
	p := newProcessor(t, echo)
	addr, done := serveOne(t, newRelay(p, &upstream{addr: ln.Addr().String()},
		Options{UpstreamTLS: &tls.Config{InsecureSkipVerify: true}}))
	c := dial(t, addr)
	write(t, c, startup("alice"))
	if e := readFatal(t, c); e.Code != "08001" {
		t.Fatalf("error = %+v, want FATAL 08001", e)
	}
	noStream(t, p, done)
}

func TestPrimedConnUnwraps(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	pc := &primedConn{Conn: a, head: []byte{1, 2}}
	go b.Write([]byte{3})
	got := make([]byte, 3)
	if _, err := io.ReadFull(pc, got); err != nil || !bytes.Equal(got, []byte{1, 2, 3}) {
		t.Fatalf("read %v, %v; want the head then the connection", got, err)
	}
	if pc.NetConn() != a {
		t.Fatal("NetConn does not return the wrapped connection")
	}
}
