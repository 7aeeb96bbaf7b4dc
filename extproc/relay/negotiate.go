package relay

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Request codes of the PostgreSQL messages that open a connection without
// a protocol version (https://www.postgresql.org/docs/current/protocol-message-formats.html).
const (
	codeCancel  = 80877102 // CancelRequest: relayed like any first message
	codeSSL     = 80877103 // SSLRequest
	codeGSSENC  = 80877104 // GSSENCRequest
	maxStartup  = 10000    // PostgreSQL's MAX_STARTUP_PACKET_LENGTH
	maxRequests = 3        // GSSENCRequest, SSLRequest, then the real first message
)

// recordHandshake is the first byte of a TLS handshake record. A
// PostgreSQL 17 client with sslnegotiation=direct opens with it (a
// ClientHello) instead of an SSLRequest; no startup packet can start with
// it, since its length would exceed maxStartup.
const recordHandshake = 0x16

// alpnPostgres is the ALPN protocol PostgreSQL clients offer, and direct
// TLS requires (https://www.postgresql.org/docs/17/protocol-flow.html#PROTOCOL-FLOW-SSL).
const alpnPostgres = "postgresql"

// MsgTLSRequired is the message of the FATAL error a plaintext client of a
// listener with Options.TLS receives.
const MsgTLSRequired = "vigil: this listener requires TLS (sslmode=require)"

// Causes a client handshake ends with.
var (
	// errNegotiation reports a client that kept negotiating encryption.
	errNegotiation = errors.New("relay: too many encryption requests before the startup message")
	// errTLSRequired reports a plaintext client refused by a TLS listener.
	errTLSRequired = errors.New("relay: plaintext client refused: this listener requires TLS")
	// errDirectNoTLS reports a direct TLS client on a listener without TLS.
	errDirectNoTLS = errors.New("relay: client opened with a TLS ClientHello " +
		"(sslnegotiation=direct) but this listener has no tls certificate configured")
)

// negotiate answers the client's SSLRequest and GSSENCRequest as Envoy's
// postgres_proxy does, or does the TLS handshake at once for a direct TLS
// client, and returns the connection to relay (a *tls.Conn over c once the
// client asked for TLS and got it) and the client's first other message,
// whole when its length is plausible for a startup packet. The caller sets
// the handshake deadline on c.
//
// With Options.TLS set, a client that sends its first other message in
// plaintext is refused with a FATAL ErrorResponse (SQLSTATE 28000,
// MsgTLSRequired) and the error wraps errTLSRequired; only a CancelRequest
// may come in plaintext, as clients before PostgreSQL 17 send it so and it
// carries no credential.
func (r *Relay) negotiate(c net.Conn) (net.Conn, []byte, error) {
	encrypted := false
	for range maxRequests {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:1]); err != nil {
			return nil, nil, fmt.Errorf("relay: read the first message: %w", err)
		}
		if hdr[0] == recordHandshake && !encrypted {
			tc, err := r.direct(c, hdr[0])
			if err != nil {
				return nil, nil, err
			}
			c, encrypted = tc, true
			continue
		}
		if _, err := io.ReadFull(c, hdr[1:]); err != nil {
			return nil, nil, fmt.Errorf("relay: read the first message: %w", err)
		}
		length := binary.BigEndian.Uint32(hdr[:4])
		code := binary.BigEndian.Uint32(hdr[4:])
		if length == 8 && !encrypted && (code == codeSSL || code == codeGSSENC) {
			tc, err := r.answer(c, code)
			if err != nil {
				return nil, nil, err
			}
			if tc != nil {
				c, encrypted = tc, true
			}
			continue
		}

		// Anything else is the processor's to see. Read the rest of a
		// startup-sized message so it travels as one chunk; leave
		// anything else to the relay loop.
		msg := hdr[:]
		if length > 8 && length <= maxStartup {
			msg = make([]byte, length)
			copy(msg, hdr[:])
			if _, err := io.ReadFull(c, msg[8:]); err != nil {
				return nil, nil, fmt.Errorf("relay: read the first message: %w", err)
			}
		}
		if r.opts.TLS != nil && !encrypted && code != codeCancel {
			if err := refuse(c, "28000", MsgTLSRequired); err != nil {
				return nil, nil, fmt.Errorf("%w (%w)", errTLSRequired, err)
			}
			return nil, nil, errTLSRequired
		}
		return c, msg, nil
	}
	return nil, nil, errNegotiation
}

// answer replies to one SSLRequest or GSSENCRequest. It returns the TLS
// connection when it answered `S` and completed the handshake, nil when it
// answered `N`.
func (r *Relay) answer(c net.Conn, code uint32) (*tls.Conn, error) {
	if code == codeGSSENC || r.opts.TLS == nil {
		if _, err := c.Write([]byte{'N'}); err != nil {
			return nil, fmt.Errorf("relay: refuse encryption: %w", err)
		}
		return nil, nil
	}
	if _, err := c.Write([]byte{'S'}); err != nil {
		return nil, fmt.Errorf("relay: accept TLS: %w", err)
	}
	// Only the 8 bytes of the SSLRequest were read, so bytes a client (or
	// an attacker) sent after it are handshake input, never plaintext.
	tc := tls.Server(c, r.opts.TLS)
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("relay: TLS handshake: %w", err)
	}
	return tc, nil
}

// direct does the TLS handshake of a client that opened with a ClientHello
// whose first byte, first, was already read. As PostgreSQL 17 does, it
// requires the client to negotiate ALPN "postgresql".
func (r *Relay) direct(c net.Conn, first byte) (*tls.Conn, error) {
	if r.opts.TLS == nil {
		return nil, errDirectNoTLS
	}
	tc := tls.Server(&primedConn{Conn: c, head: []byte{first}}, r.opts.TLS)
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("relay: direct TLS handshake: %w", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != alpnPostgres {
		return nil, fmt.Errorf("relay: direct TLS without ALPN %q (the client offered none); "+
			"PostgreSQL clients with sslnegotiation=direct offer it", alpnPostgres)
	}
	return tc, nil
}

// refuse writes a FATAL ErrorResponse to a client whose connection the
// processor has not seen, so the client shows why it is closed. Only the
// Relay's own handshake code may call it: once the stream has started,
// every byte toward the client is the processor's.
func refuse(c net.Conn, sqlstate, msg string) error {
	e := pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL",
		Code: sqlstate, Message: msg}
	b, err := e.Encode(nil)
	if err != nil {
		return fmt.Errorf("relay: encode the error response: %w", err)
	}
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("relay: write the error response: %w", err)
	}
	return nil
}

// primedConn is a connection whose first bytes were read already: Read
// returns head before reading on.
type primedConn struct {
	net.Conn
	head []byte
}

func (p *primedConn) Read(b []byte) (int, error) {
	if len(p.head) > 0 {
		n := copy(b, p.head)
		p.head = p.head[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// NetConn returns the connection underneath, as tls.Conn.NetConn does.
func (p *primedConn) NetConn() net.Conn { return p.Conn }
