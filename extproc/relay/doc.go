// Package relay is the data plane of `vigil gateway`: a TCP listener that
// drives a NetworkExternalProcessor (normally vigil's own extproc.Server)
// exactly as Envoy's network ext_proc filter does, so the processor cannot
// tell the gateway from Envoy.
//
// A gateway builds one Relay per configured connection:
//
//	r := relay.New(relay.Options{
//		Connection: "customer-db",
//		Upstream:   "127.0.0.1:5432",
//		Processor:  procv3.NewNetworkExternalProcessorClient(cc),
//	})
//	err := r.ListenAndServe(ctx, "127.0.0.1:15432")
//
// # What a Relay does per connection
//
// It plays two Envoy filters in front of the processor:
//
//   - postgres_proxy's part: the client's first message is read under a
//     handshake deadline. An SSLRequest is answered `S` followed by a TLS
//     handshake when Options.TLS is set, `N` otherwise; a GSSENCRequest is
//     always answered `N`. A PostgreSQL 17 client with
//     sslnegotiation=direct opens with a TLS ClientHello instead: with
//     Options.TLS the handshake is done at once (ALPN "postgresql"
//     required), without it the connection is closed and logged. Neither
//     request ever reaches the processor, which sees plaintext as it does
//     behind postgres_proxy. Any other first message (StartupMessage,
//     CancelRequest) is relayed like all later data, except that with
//     Options.TLS a plaintext StartupMessage is refused with a FATAL
//     ErrorResponse (SQLSTATE 28000, MsgTLSRequired) and logged at Info.
//   - the upstream's TLS: with Options.UpstreamTLS the Relay sends the
//     server an SSLRequest, expects `S` and does the handshake, verifying
//     the certificate as that config says, before opening the stream. A
//     server that answers `N` or fails verification gets the client a
//     FATAL ErrorResponse (SQLSTATE 08001) and a Warn line in the log.
//   - network ext_proc's part: one gRPC stream per connection, opened with
//     the x-vigil-connection and x-vigil-client headers. Every chunk read
//     from the client goes to the processor as read_data and every chunk
//     from the upstream as write_data, each with end_of_stream when that
//     side half-closed. Chunks are sent without waiting for earlier replies.
//
// # The contract it enforces (see DESIGN.md)
//
// A reply must carry exactly one of read_data and write_data, answer the
// oldest outstanding request of that direction, and repeat its
// end_of_stream. A read_data reply is written to the upstream, a
// write_data reply to the client; a request's end_of_stream is applied
// after its reply's data by half-closing the side written to. A reply with
// connection_status CLOSE or CLOSE_RST closes both sides (RST for
// CLOSE_RST) and its data is dropped. Any other reply breaks the contract:
// the Relay logs it at Error, counts it in Stats.Violations and closes the
// connection. A stream error, or a stream ending before the connection,
// also closes the connection (fail closed). When both directions have
// ended cleanly the Relay half-closes the stream (CloseSend) and waits for
// the processor to end it.
//
// The Relay writes bytes of its own toward the client only during the
// handshake, before the stream exists: the `S` or `N` answers and the
// FATAL errors above. From the first chunk on, every byte the client
// receives comes from a processor reply.
package relay
