package relay

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// SQLSTATE of the FATAL error a client receives when the Relay cannot
// reach the server securely: sqlclient_unable_to_establish_sqlconnection.
const stateNoUpstream = "08001"

// Causes an upstream TLS negotiation fails with; each one chooses the
// message the client sees (errors.Is).
var (
	// ErrUpstreamNoTLS reports a server that answered the SSLRequest `N`
	// (or with anything but `S`).
	ErrUpstreamNoTLS = errors.New("relay: the upstream server does not accept TLS")
	// ErrUpstreamCertificate reports a server certificate that did not
	// verify against Options.UpstreamTLS.
	ErrUpstreamCertificate = errors.New("relay: the upstream server's certificate did not verify")
)

// upstreamTLS asks the server for TLS on up with an SSLRequest, as libpq
// does with sslmode=require, and returns the TLS connection once the
// handshake has completed before deadline.
func (r *Relay) upstreamTLS(up net.Conn, deadline time.Time) (*tls.Conn, error) {
	_ = up.SetDeadline(deadline)
	req := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), codeSSL)
	if _, err := up.Write(req); err != nil {
		return nil, fmt.Errorf("relay: send SSLRequest upstream: %w", err)
	}
	// Exactly one byte: anything the server (or someone on the path) sent
	// after the `S` is handshake input, never plaintext protocol.
	var answer [1]byte
	if _, err := io.ReadFull(up, answer[:]); err != nil {
		return nil, fmt.Errorf("relay: read the answer to SSLRequest: %w", err)
	}
	if answer[0] != 'S' {
		return nil, fmt.Errorf("%w: it answered SSLRequest with %q", ErrUpstreamNoTLS, answer[0])
	}
	tc := tls.Client(up, r.opts.UpstreamTLS)
	if err := tc.Handshake(); err != nil {
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("%w: %w", ErrUpstreamCertificate, err)
		}
		return nil, fmt.Errorf("relay: upstream TLS handshake: %w", err)
	}
	_ = up.SetDeadline(time.Time{})
	return tc, nil
}

// upstreamMessage is what the client is told when upstreamTLS failed with
// err. It names no address, certificate or CA: the client has not logged
// in yet; the log has the details.
func upstreamMessage(err error) string {
	switch {
	case errors.Is(err, ErrUpstreamNoTLS):
		return "vigil: the database server does not accept TLS, which this connection " +
			"requires (upstream_tls); see the vigil log"
	case errors.Is(err, ErrUpstreamCertificate):
		return "vigil: the database server's TLS certificate did not verify " +
			"(upstream_tls); see the vigil log"
	}
	return "vigil: TLS to the database server failed (upstream_tls); see the vigil log"
}
