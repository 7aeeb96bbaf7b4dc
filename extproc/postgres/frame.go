package postgres

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Protocol limits. PostgreSQL itself refuses a startup packet over 10000
// bytes and any message over 1 GB.
const (
	maxStartupLen = 10000
	// DefaultMaxMessage caps one message; larger ones end the connection.
	DefaultMaxMessage = 1 << 30
)

// Startup-phase request codes (the first message has no type byte).
const (
	codeProtocol3  = 196608 // 3.0
	codeCancel     = 80877102
	codeSSLRequest = 80877103
	codeGSSENC     = 80877104
)

// ErrProtocol marks input that breaks the PostgreSQL framing; the session
// ends the connection on it.
var ErrProtocol = errors.New("postgres: protocol violation")

// framer splits one direction's byte stream into whole messages. A message
// is handed out only once all of it has arrived, so nothing is ever
// forwarded half-decoded; the rest waits in the buffer for the next chunk.
//
// A framer is used by one goroutine. The slices next returns are valid
// until the next call to feed.
type framer struct {
	buf []byte
	off int // start of the first unconsumed byte
	max int
	// untyped is set while the next message is a startup-phase packet
	// (length and code, no type byte).
	untyped bool
}

// feed appends a chunk. Consumed bytes are dropped first, so the buffer
// only ever holds one incomplete message plus the new chunk.
func (f *framer) feed(chunk []byte) {
	if f.off > 0 {
		n := copy(f.buf, f.buf[f.off:])
		f.buf = f.buf[:n]
		f.off = 0
	}
	f.buf = append(f.buf, chunk...)
}

// pending reports how many bytes wait for the rest of their message.
func (f *framer) pending() int { return len(f.buf) - f.off }

// next returns the next whole message: its type byte (0 for a startup
// packet) and its raw bytes including the header. ok is false when the
// message is not complete yet.
func (f *framer) next() (typ byte, raw []byte, ok bool, err error) {
	rest := f.buf[f.off:]
	hdr := 5
	if f.untyped {
		hdr = 4
	}
	if len(rest) < hdr {
		return 0, nil, false, nil
	}
	var n int
	if f.untyped {
		n = int(binary.BigEndian.Uint32(rest))
		if n < 8 || n > maxStartupLen {
			return 0, nil, false, fmt.Errorf("%w: startup packet length %d", ErrProtocol, n)
		}
	} else {
		typ = rest[0]
		n = int(binary.BigEndian.Uint32(rest[1:])) + 1
		if n < 5 {
			return 0, nil, false, fmt.Errorf("%w: message %q length %d", ErrProtocol, typ, n-1)
		}
		if f.max > 0 && n > f.max {
			return 0, nil, false, fmt.Errorf("%w: message %q of %d bytes is over the limit of %d",
				ErrProtocol, typ, n, f.max)
		}
	}
	if len(rest) < n {
		return 0, nil, false, nil
	}
	f.off += n
	return typ, rest[:n:n], true, nil
}

// body returns a message's payload: after the type byte and length.
func body(typ byte, raw []byte) []byte {
	if typ == 0 {
		return raw[4:]
	}
	return raw[5:]
}

// startupCode reads the request code of a startup-phase packet.
func startupCode(raw []byte) uint32 { return binary.BigEndian.Uint32(raw[4:8]) }
