package relay

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
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

// errNegotiation reports a client that kept negotiating encryption.
var errNegotiation = errors.New("relay: too many encryption requests before the startup message")

// negotiate answers the client's SSLRequest and GSSENCRequest as Envoy's
// postgres_proxy does and returns the connection to relay (a *tls.Conn
// over c once the client asked for TLS and got it) and the client's first
// other message, whole when its length is plausible for a startup packet.
// The caller sets the handshake deadline on c.
//
// TODO(relay): PostgreSQL 17 clients with sslnegotiation=direct open with a
// TLS ClientHello instead of an SSLRequest; it is relayed as data and the
// processor refuses it. Detecting the 0x16 record byte and doing the
// handshake here (ALPN "postgresql") would support them.
func (r *Relay) negotiate(c net.Conn) (net.Conn, []byte, error) {
	encrypted := false
	for range maxRequests {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
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
		if length <= 8 || length > maxStartup {
			return c, hdr[:], nil
		}
		msg := make([]byte, length)
		copy(msg, hdr[:])
		if _, err := io.ReadFull(c, msg[8:]); err != nil {
			return nil, nil, fmt.Errorf("relay: read the first message: %w", err)
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
