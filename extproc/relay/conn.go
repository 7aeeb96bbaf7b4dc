package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vigilaudit/vigil/extproc"
)

// Sentinel causes a connection can end with; Stats counts them by kind.
var (
	// ErrContract wraps every reply that breaks the Envoy contract.
	ErrContract = errors.New("relay: processor broke the ext_proc contract")
	// ErrMessageTimeout reports a reply not received within MessageTimeout.
	ErrMessageTimeout = errors.New("relay: processor reply timed out")
)

// endKind is why a connection ended; it chooses the log level, the counter
// and how the sockets are closed.
type endKind int

const (
	endClean       endKind = iota // both sides finished and the stream ended
	endClosed                     // a side closed or failed, or shutdown
	endFlush                      // processor CLOSE: flush earlier replies, FIN
	endReset                      // processor CLOSE_RST: RST, drop everything
	endViolation                  // processor broke the contract
	endTimeout                    // a reply missed MessageTimeout
	endStreamError                // the gRPC stream failed or ended early
)

// chunk is one reply's data on its way to a socket.
type chunk struct {
	data []byte
	eos  bool
}

// pending is one request waiting for its reply.
type pending struct {
	eos   bool
	timer *time.Timer // MessageTimeout; nil when there is none
}

// conn is one client connection and its stream.
type conn struct {
	r      *Relay
	log    *slog.Logger
	client net.Conn // *tls.Conn after an accepted SSLRequest or direct TLS
	up     net.Conn // *tls.Conn with Options.UpstreamTLS
	stream procv3.NetworkExternalProcessor_ProcessClient
	out    [2]chan chunk // replies to write, by extproc.Direction
	wg     sync.WaitGroup
	wwg    sync.WaitGroup // the two writers

	sendMu sync.Mutex // serialises stream.Send and CloseSend

	mu        sync.Mutex // guards the fields below
	pending   [2][]pending
	finished  [2]bool // end_of_stream applied, by direction
	closeSent bool
	ended     bool
	kind      endKind
	cause     error
	done      chan struct{} // closed by end
}

// serve runs the connection to its end.
func (c *conn) serve(ctx context.Context) {
	start := time.Now()

	// Handshake: encryption negotiation, first message, upstream dial
	// and upstream TLS, all before the processor sees the connection.
	deadline := start.Add(c.r.opts.HandshakeTimeout)
	_ = c.client.SetDeadline(deadline)
	client, first, err := c.r.negotiate(c.client)
	switch {
	case errors.Is(err, errTLSRequired):
		c.log.Info("plaintext client refused: this listener requires TLS")
		c.client.Close()
		return
	case err != nil:
		c.log.Info("client handshake failed", "err", err)
		c.client.Close()
		return
	}
	c.client = client
	d := net.Dialer{Deadline: deadline}
	c.up, err = d.DialContext(ctx, "tcp", c.r.opts.Upstream)
	if err != nil {
		c.log.Warn("upstream unreachable; closing the connection", "err", err)
		c.client.Close()
		return
	}
	if c.r.opts.UpstreamTLS != nil {
		tc, err := c.r.upstreamTLS(c.up, deadline)
		if err != nil {
			c.log.Warn("upstream TLS failed; refusing the client", "err", err)
			if err := refuse(c.client, stateNoUpstream, upstreamMessage(err)); err != nil {
				c.log.Info("could not tell the client", "err", err)
			}
			c.closeConns(false)
			return
		}
		c.up = tc
	}
	_ = c.client.SetDeadline(time.Time{})

	// The stream, as Envoy opens it on the first chunk.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sctx = metadata.AppendToOutgoingContext(sctx,
		extproc.HeaderConnection, c.r.opts.Connection,
		extproc.HeaderClient, c.client.RemoteAddr().String())
	c.stream, err = c.r.opts.Processor.Process(sctx)
	if err != nil {
		c.r.streamErrors.Add(1)
		c.log.Error("processor stream failed to open; closing the connection", "err", err)
		c.closeConns(false)
		return
	}
	c.log.Info("connection opened", "upstream", c.r.opts.Upstream)

	// Both directions and their replies run until one of them ends it.
	// TODO(relay): the writer queues are bounded, so a client that stops
	// reading while it floods the upstream can stall both directions
	// through gRPC flow control, where Envoy would apply its buffer
	// watermarks; per-direction read pausing would mirror Envoy.
	c.out = [2]chan chunk{make(chan chunk, 64), make(chan chunk, 64)}
	c.spawn(&c.wg, func() { c.pump(extproc.Read, c.client, first) })
	c.spawn(&c.wg, func() { c.pump(extproc.Write, c.up, nil) })
	c.spawn(&c.wwg, func() { c.writer(extproc.Read, c.up) })
	c.spawn(&c.wwg, func() { c.writer(extproc.Write, c.client) })
	c.spawn(&c.wg, c.receive)
	select {
	case <-c.done:
	case <-ctx.Done():
		c.end(endClosed, errors.New("relay: shutting down"))
	}

	// Teardown. CLOSE lets replies already received reach their socket
	// first, as Envoy flushes its write buffer before the FIN.
	c.mu.Lock()
	kind, cause := c.kind, c.cause
	c.mu.Unlock()
	if kind == endFlush {
		flush := time.Now().Add(time.Second)
		_ = c.client.SetWriteDeadline(flush)
		_ = c.up.SetWriteDeadline(flush)
		cancel()
		c.wwg.Wait()
	}
	c.closeConns(kind == endReset || kind == endViolation)
	cancel()
	c.wwg.Wait()
	c.wg.Wait()
	c.log.Info("connection closed", "reason", reason(kind, cause),
		"duration", time.Since(start).Round(time.Millisecond))
}

func reason(k endKind, cause error) string {
	switch {
	case k == endClean:
		return "done"
	case k == endFlush:
		return "processor closed it"
	case k == endReset:
		return "processor reset it"
	case cause != nil:
		return cause.Error()
	}
	return "closed"
}

// spawn runs f on its own goroutine; a panic in it ends only this
// connection.
func (c *conn) spawn(wg *sync.WaitGroup, f func()) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() {
			if p := recover(); p != nil {
				c.r.panics.Add(1)
				c.log.Error("relay panic; closing the connection", "panic", fmt.Sprint(p),
					"stack", string(debug.Stack()))
				c.end(endReset, fmt.Errorf("relay: panic: %v", p))
			}
		}()
		f()
	}()
}

// end records why the connection ends; the first call wins. Violations,
// timeouts and stream errors are counted and logged here, before any
// socket closes.
func (c *conn) end(kind endKind, cause error) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended, c.kind, c.cause = true, kind, cause
	for _, q := range c.pending {
		for _, p := range q {
			if p.timer != nil {
				p.timer.Stop()
			}
		}
	}
	c.mu.Unlock()

	switch kind {
	case endViolation:
		c.r.violations.Add(1)
		c.log.Error("processor broke the Envoy contract; closing the connection", "err", cause)
	case endTimeout:
		c.r.violations.Add(1)
		c.log.Error("processor reply timed out; closing the connection", "err", cause,
			"timeout", c.r.opts.MessageTimeout)
	case endStreamError:
		if errors.Is(cause, context.Canceled) || status.Code(cause) == codes.Canceled {
			// The gateway is shutting down: not the processor's fault.
			c.log.Info("processor stream cancelled; closing the connection", "err", cause)
			break
		}
		c.r.streamErrors.Add(1)
		c.log.Error("processor stream failed; closing the connection", "err", cause)
	}
	close(c.done)
}

// pump reads one side and sends each chunk to the processor, without
// waiting for replies; first, when set, is sent before anything is read.
func (c *conn) pump(dir extproc.Direction, src net.Conn, first []byte) {
	if first != nil && !c.send(dir, first, false) {
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !c.send(dir, bytes.Clone(buf[:n]), false) {
			return
		}
		if errors.Is(err, io.EOF) {
			c.send(dir, nil, true)
			return
		}
		if err != nil {
			c.end(endClosed, fmt.Errorf("relay: read from %s: %w", side(dir), err))
			return
		}
	}
}

// side names the socket a direction reads from.
func side(dir extproc.Direction) string {
	if dir == extproc.Read {
		return "client"
	}
	return "upstream"
}

// send queues the request as outstanding and sends it. It reports false
// when the connection is ending.
func (c *conn) send(dir extproc.Direction, data []byte, eos bool) bool {
	p := pending{eos: eos}
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return false
	}
	if t := c.r.opts.MessageTimeout; t > 0 {
		p.timer = time.AfterFunc(t, func() {
			c.end(endTimeout, fmt.Errorf("%w: no %s reply within %v", ErrMessageTimeout, dir, t))
		})
	}
	c.pending[dir] = append(c.pending[dir], p)
	c.mu.Unlock()

	d := &procv3.Data{Data: data, EndOfStream: eos}
	req := &procv3.ProcessingRequest{}
	if dir == extproc.Read {
		req.ReadData = d
	} else {
		req.WriteData = d
	}
	c.sendMu.Lock()
	err := c.stream.Send(req)
	c.sendMu.Unlock()
	// A failed Send means the stream has ended; receive reports why.
	return err == nil
}

// receive applies the processor's replies in order until the stream ends.
func (c *conn) receive() {
	defer close(c.out[extproc.Read])
	defer close(c.out[extproc.Write])
	for {
		resp, err := c.stream.Recv()
		if errors.Is(err, io.EOF) {
			c.mu.Lock()
			clean := c.closeSent
			c.mu.Unlock()
			if clean {
				c.end(endClean, nil)
			} else {
				c.end(endStreamError,
					errors.New("relay: processor ended the stream before the connection"))
			}
			return
		}
		if err != nil {
			c.end(endStreamError, fmt.Errorf("relay: processor stream: %w", err))
			return
		}
		if err := c.apply(resp); err != nil {
			c.end(endViolation, err)
			return
		}
		select {
		case <-c.done:
			return
		default:
		}
	}
}

// apply checks one reply against the contract and queues its data for
// the socket it goes to. CLOSE and CLOSE_RST end the connection first.
func (c *conn) apply(resp *procv3.ProcessingResponse) error {
	switch resp.GetConnectionStatus() {
	case procv3.ProcessingResponse_CLOSE:
		c.end(endFlush, nil)
		return nil
	case procv3.ProcessingResponse_CLOSE_RST:
		c.end(endReset, nil)
		return nil
	}

	rd, wd := resp.GetReadData(), resp.GetWriteData()
	var dir extproc.Direction
	var d *procv3.Data
	switch {
	case rd != nil && wd == nil:
		dir, d = extproc.Read, rd
	case wd != nil && rd == nil:
		dir, d = extproc.Write, wd
	case rd != nil:
		return fmt.Errorf("%w: a reply carries both read_data and write_data", ErrContract)
	default:
		return fmt.Errorf("%w: a reply carries neither read_data nor write_data", ErrContract)
	}

	// Match it to the oldest request of its direction.
	c.mu.Lock()
	q := c.pending[dir]
	other := len(c.pending[1-dir])
	if len(q) == 0 {
		c.mu.Unlock()
		if other == 0 {
			return fmt.Errorf("%w: more replies than requests (a %s reply with none outstanding)",
				ErrContract, dir)
		}
		return fmt.Errorf("%w: a %s reply while only %d %s request(s) are outstanding",
			ErrContract, dir, other, 1-dir)
	}
	p := q[0]
	c.pending[dir] = q[1:]
	c.mu.Unlock()
	if p.timer != nil {
		p.timer.Stop()
	}
	if d.GetEndOfStream() != p.eos {
		return fmt.Errorf("%w: a %s reply has end_of_stream %t for a request with %t",
			ErrContract, dir, d.GetEndOfStream(), p.eos)
	}

	select {
	case c.out[dir] <- chunk{data: d.GetData(), eos: p.eos}:
	case <-c.done:
	}
	return nil
}

// writer writes the replies of one direction to dst in order and applies
// their end_of_stream by half-closing dst.
func (c *conn) writer(dir extproc.Direction, dst net.Conn) {
	for ch := range c.out[dir] {
		if len(ch.data) > 0 {
			if _, err := dst.Write(ch.data); err != nil {
				c.end(endClosed, fmt.Errorf("relay: write to %s: %w", side(1-dir), err))
				return
			}
		}
		if ch.eos {
			c.halfClose(dir, dst)
		}
	}
}

// halfClose ends dst's write side; once both directions have ended, the
// stream is half-closed too so the processor's session can finish.
func (c *conn) halfClose(dir extproc.Direction, dst net.Conn) {
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	c.mu.Lock()
	c.finished[dir] = true
	both := c.finished[extproc.Read] && c.finished[extproc.Write] && !c.ended
	if both {
		c.closeSent = true
	}
	c.mu.Unlock()
	if !both {
		return
	}
	c.sendMu.Lock()
	err := c.stream.CloseSend()
	c.sendMu.Unlock()
	if err != nil {
		c.end(endStreamError, fmt.Errorf("relay: close the stream: %w", err))
		return
	}
	t := time.AfterFunc(closeGrace, func() {
		c.end(endStreamError, errors.New("relay: processor did not end the stream"))
	})
	go func() {
		<-c.done
		t.Stop()
	}()
}

// closeConns closes both sockets, with RST when reset is set.
func (c *conn) closeConns(reset bool) {
	for _, s := range []net.Conn{c.client, c.up} {
		if s == nil {
			continue
		}
		if reset {
			setLingerZero(s)
		}
		s.Close()
	}
}

// setLingerZero makes closing s send RST, through any wrapping
// (*tls.Conn, primedConn) down to the TCP connection.
func setLingerZero(s net.Conn) {
	for range 4 {
		switch t := s.(type) {
		case *net.TCPConn:
			_ = t.SetLinger(0)
			return
		case interface{ NetConn() net.Conn }:
			s = t.NetConn()
		default:
			return
		}
	}
}
