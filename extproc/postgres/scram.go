package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// SCRAM-SHA-256 upstream login, inside the Envoy contract.
//
// vigil may only write toward the server while answering a client chunk,
// and toward the client while answering a server chunk. So:
//
//  1. The client's StartupMessage goes up with a SASLInitialResponse right
//     behind it (PostgreSQL reads it pipelined).
//  2. AuthenticationSASL is shown to the client as
//     AuthenticationCleartextPassword; AuthenticationSASLContinue is
//     swallowed and the client-final message computed from it.
//  3. The client's PasswordMessage (its token) is checked and answered
//     upstream with the SASLResponse. It may arrive before the
//     SASLContinue it depends on: the client-side reply then waits for the
//     server chunk that carries it.
//  4. AuthenticationSASLFinal is checked (the server's signature proves it
//     knows the password) and swallowed; AuthenticationOk goes through.

const scramMechanism = "SCRAM-SHA-256"

// scramState is the SCRAM conversation of one login.
type scramState struct {
	conv *scram.ClientConversation
	// final is the client-final message, once the server-first arrived.
	final string
	// ready is closed when final is set or the exchange failed.
	ready chan struct{}
	err   error
}

// startSCRAM appends the SASLInitialResponse to the startup packet.
func (s *session) startSCRAM(out []byte) ([]byte, error) {
	secret, err := s.secret("")
	if err != nil {
		return out, err
	}
	client, err := scram.SHA256.NewClient("", secret, "")
	if err != nil {
		// SASLprep refused the password; PostgreSQL then uses it as is.
		client, err = scram.SHA256.NewClientUnprepped("", secret, "")
		if err != nil {
			return out, fmt.Errorf("postgres: scram client: %w", err)
		}
	}
	conv := client.NewConversation()
	first, err := conv.Step("")
	if err != nil {
		return out, fmt.Errorf("postgres: scram first message: %w", err)
	}
	s.auth.scram = &scramState{conv: conv, ready: make(chan struct{})}
	return (&pgproto3.SASLInitialResponse{AuthMechanism: scramMechanism,
		Data: []byte(first)}).Encode(out)
}

// scramContinue handles AuthenticationSASLContinue: the server-first
// message. The client never sees it.
func (s *session) scramContinue(data []byte) {
	sc := s.auth.scram
	if sc == nil || sc.final != "" || sc.err != nil {
		s.failLogin("upstream sent an unexpected SCRAM message", "upstream_protocol")
		return
	}
	final, err := sc.conv.Step(string(data))
	if err != nil {
		sc.err = err
		s.failLogin("upstream SCRAM exchange failed: "+err.Error(), "upstream_scram")
	} else {
		sc.final = final
	}
	close(sc.ready)
}

// scramFinal handles AuthenticationSASLFinal: it must prove the server
// knows the password.
func (s *session) scramFinal(data []byte) {
	sc := s.auth.scram
	if sc == nil || sc.final == "" {
		s.failLogin("upstream sent an unexpected SCRAM final message", "upstream_protocol")
		return
	}
	if _, err := sc.conv.Step(string(data)); err != nil || !sc.conv.Valid() {
		s.log.Warn("upstream server failed SCRAM verification; is it the right server?",
			"upstream", s.cn.Upstream)
		s.failLogin("the upstream server failed SCRAM verification", "upstream_scram")
	}
}

// scramResponse waits for the client-final message and returns the
// SASLResponse to send in place of the client's token. mu is held on
// entry and on return.
func (s *session) scramResponse(ctx context.Context, out []byte) ([]byte, error) {
	sc := s.auth.scram
	if sc == nil {
		return out, errors.New("postgres: no SCRAM exchange under way")
	}
	s.mu.Unlock()
	select {
	case <-sc.ready:
	case <-ctx.Done():
	}
	s.mu.Lock()
	if err := ctx.Err(); err != nil {
		return out, err
	}
	if sc.err != nil {
		return out, sc.err
	}
	return (&pgproto3.SASLResponse{Data: []byte(sc.final)}).Encode(out)
}
