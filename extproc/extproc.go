// Package extproc is vigil's Envoy-facing side: the gRPC service
// envoy.service.network_ext_proc.v3.NetworkExternalProcessor, one stream
// per downstream connection, and the Session interface that each protocol
// (extproc/postgres, ...) implements.
//
// # The contract (Envoy network ext_proc, go-control-plane envoy v1.40.0)
//
// Every chunk read from the client arrives as read_data, every chunk from
// the upstream as write_data. Envoy has already drained its copy, so each
// reply carries the bytes to forward, in the same direction, with the same
// end_of_stream. Replies are matched by direction: exactly one reply per
// request, in order within a direction, never a reply in the other
// direction. A reply with connection_status CLOSE or CLOSE_RST closes the
// connection before any data in it is applied.
//
// The Server keeps that contract for the sessions: it runs one worker per
// direction, so a session may block while answering a client chunk (an
// approval hold, a SCRAM exchange waiting for the server) while server
// chunks keep flowing.
package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Direction tells which way a chunk travels.
type Direction int

// The two directions of a connection.
const (
	// Read is client to server (Envoy's read_data).
	Read Direction = iota
	// Write is server to client (Envoy's write_data).
	Write
)

func (d Direction) String() string {
	if d == Read {
		return "read"
	}
	return "write"
}

// Action is what the processor asks Envoy to do with the connection.
type Action int

// Actions, mirroring ProcessingResponse.connection_status.
const (
	Continue Action = iota
	// Close closes the connection with a FIN; data in the same reply is
	// dropped (Envoy applies the close first).
	Close
	// Reset closes the connection with a RST.
	Reset
)

// Reply is a session's answer to one chunk.
type Reply struct {
	// Data is forwarded in the chunk's direction; nil forwards nothing.
	Data []byte
	// Action, when not Continue, ends the connection.
	Action Action
}

// Session handles one downstream connection. The Server calls OnClient
// from one goroutine and OnServer from another, each in chunk order, so
// the two may run concurrently; a Session guards the state they share.
// OnClient may block (for example while a command waits for approval);
// OnServer should not block on the client side.
type Session interface {
	// OnClient handles a chunk from the client. eos reports that the
	// client has finished sending.
	OnClient(ctx context.Context, chunk []byte, eos bool) Reply
	// OnServer handles a chunk from the upstream server.
	OnServer(ctx context.Context, chunk []byte, eos bool) Reply
	// Close ends the session: the stream ended, with err nil when it ended
	// cleanly. Close is called once, after the last OnClient and OnServer
	// have returned.
	Close(err error)
}

// ConnInfo describes a new downstream connection.
type ConnInfo struct {
	// Connection is the name of the vigil connection the stream serves,
	// from the x-vigil-connection gRPC header.
	Connection string
	// Client is the client's address when the data plane passes it
	// (x-vigil-client header from `vigil gateway`); empty behind Envoy.
	Client string
	// Peer is the gRPC peer: the Envoy (or gateway) that opened the stream.
	Peer string
	// Abort ends the stream with err, which makes Envoy (failing closed)
	// or the gateway close the connection: the way for a session to end a
	// connection when no chunk is there to answer with a close. Safe to
	// call from any goroutine, more than once; nil outside a stream.
	Abort func(err error)
}

// Gateway headers: the gRPC stream metadata vigil reads. Envoy sets them
// through the grpc_service's initial_metadata; `vigil gateway` sets them on
// every stream it opens.
const (
	HeaderConnection = "x-vigil-connection"
	HeaderClient     = "x-vigil-client"
)

// Handler creates the Session for a new stream. It returns an error when
// the stream cannot be served (unknown connection); the stream then ends
// with that error and Envoy closes the connection (fail closed).
type Handler interface {
	NewSession(ctx context.Context, info ConnInfo) (Session, error)
}

// Server implements NetworkExternalProcessorServer over a Handler.
type Server struct {
	procv3.UnimplementedNetworkExternalProcessorServer

	handler Handler
	log     *slog.Logger
}

// NewServer returns a Server that hands each stream to h.
func NewServer(h Handler, log *slog.Logger) *Server {
	return &Server{handler: h, log: log}
}

// Register adds the service to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	procv3.RegisterNetworkExternalProcessorServer(g, s)
}

type work struct {
	data []byte
	eos  bool
}

// Process serves one downstream connection.
func (s *Server) Process(stream grpc.BidiStreamingServer[procv3.ProcessingRequest,
	procv3.ProcessingResponse]) error {
	ctx := stream.Context()
	info := connInfo(ctx)
	aborted := make(chan error, 1)
	info.Abort = func(err error) {
		select {
		case aborted <- err:
		default:
		}
	}
	sess, err := s.handler.NewSession(ctx, info)
	if err != nil {
		s.log.Warn("stream refused", "connection", info.Connection, "peer", info.Peer,
			"err", err)
		return status.Error(codes.FailedPrecondition, err.Error())
	}

	// One worker per direction keeps each direction in order while letting
	// the two proceed independently.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var sendMu sync.Mutex
	var sendErr error
	send := func(resp *procv3.ProcessingResponse) {
		sendMu.Lock()
		defer sendMu.Unlock()
		if sendErr != nil {
			return
		}
		if err := stream.Send(resp); err != nil {
			sendErr = err
			cancel()
		}
	}
	reads := make(chan work, 64)
	writes := make(chan work, 64)
	var wg sync.WaitGroup
	wg.Add(2)
	// The client direction has its own context, ended as soon as the
	// client's end of stream arrives, even while OnClient is busy with an
	// earlier chunk: a command held for approval stops waiting for a
	// client that has gone.
	clientCtx, clientGone := context.WithCancel(ctx)
	defer clientGone()
	go s.worker(clientCtx, &wg, Read, reads, sess.OnClient, send)
	go s.worker(ctx, &wg, Write, writes, sess.OnServer, send)

	received := make(chan error, 1)
	go func() {
		err := s.receive(ctx, stream, reads, writes, clientGone)
		close(reads)
		close(writes)
		received <- err
	}()
	var recvErr error
	select {
	case recvErr = <-received:
	case err := <-aborted:
		// The session ends the connection: the stream ends with an error
		// now; the receiver stops once it does, and the session is closed
		// after its workers, as on any other end.
		s.log.Warn("session aborted its stream", "connection", info.Connection, "err", err)
		cancel()
		go func() {
			<-received
			wg.Wait()
			sess.Close(err)
		}()
		return status.Error(codes.Aborted, err.Error())
	}
	// The data plane has gone (Envoy closes the stream with the
	// connection): nothing waits for replies any more, so release any
	// session blocked on a hold.
	cancel()
	wg.Wait()
	if recvErr == nil {
		recvErr = sendErr
	}
	sess.Close(recvErr)
	if recvErr != nil && !errors.Is(recvErr, context.Canceled) {
		return recvErr
	}
	return nil
}

// receive reads requests until the stream ends and queues them by direction.
func (s *Server) receive(ctx context.Context, stream grpc.BidiStreamingServer[
	procv3.ProcessingRequest, procv3.ProcessingResponse], reads, writes chan<- work,
	clientGone context.CancelFunc) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var q chan<- work
		var d *procv3.Data
		switch {
		case req.GetReadData() != nil && req.GetWriteData() == nil:
			q, d = reads, req.GetReadData()
		case req.GetWriteData() != nil && req.GetReadData() == nil:
			q, d = writes, req.GetWriteData()
		default:
			return status.Error(codes.InvalidArgument,
				"extproc: a request must carry exactly one of read_data and write_data")
		}
		if q == reads && d.GetEndOfStream() {
			clientGone()
		}
		select {
		case q <- work{data: d.GetData(), eos: d.GetEndOfStream()}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// worker answers the chunks of one direction in order.
func (s *Server) worker(ctx context.Context, wg *sync.WaitGroup, dir Direction, q <-chan work,
	handle func(context.Context, []byte, bool) Reply, send func(*procv3.ProcessingResponse)) {
	defer wg.Done()
	for w := range q {
		r := s.call(ctx, dir, handle, w)
		send(response(dir, r, w.eos))
	}
}

// call runs one handler call; a panic closes only this connection.
func (s *Server) call(ctx context.Context, dir Direction,
	handle func(context.Context, []byte, bool) Reply, w work) (r Reply) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("session panic; closing the connection", "direction", dir.String(),
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			r = Reply{Action: Reset}
		}
	}()
	return handle(ctx, w.data, w.eos)
}

// response builds the reply for a chunk. The data always goes back in the
// chunk's own direction, with the chunk's end_of_stream.
func response(dir Direction, r Reply, eos bool) *procv3.ProcessingResponse {
	d := &procv3.Data{Data: r.Data, EndOfStream: eos}
	resp := &procv3.ProcessingResponse{DataProcessingStatus: procv3.ProcessingResponse_MODIFIED}
	if dir == Read {
		resp.ReadData = d
	} else {
		resp.WriteData = d
	}
	switch r.Action {
	case Close:
		resp.ConnectionStatus = procv3.ProcessingResponse_CLOSE
	case Reset:
		resp.ConnectionStatus = procv3.ProcessingResponse_CLOSE_RST
	}
	return resp
}

func connInfo(ctx context.Context) ConnInfo {
	var info ConnInfo
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(HeaderConnection); len(v) > 0 {
			info.Connection = v[0]
		}
		if v := md.Get(HeaderClient); len(v) > 0 {
			info.Client = v[0]
		}
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		info.Peer = p.Addr.String()
	}
	return info
}
