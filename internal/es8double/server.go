package es8double

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
)

// Server serves a handler on a loopback address that stays the same across
// Down and Up, so a client configured with URL sees the outage as refused
// connections and the recovery as the same node coming back.
type Server struct {
	// URL is http://127.0.0.1:<port>.
	URL string

	handler http.Handler
	addr    string

	mu  sync.Mutex
	srv *http.Server
}

// Start serves h on a fresh loopback port.
func Start(h http.Handler) (*Server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("es8double: listen: %w", err)
	}
	s := &Server{handler: h, addr: l.Addr().String()}
	s.URL = "http://" + s.addr
	s.serve(l)
	return s, nil
}

func (s *Server) serve(l net.Listener) {
	srv := &http.Server{Handler: s.handler}
	s.srv = srv
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = l.Close()
		}
	}()
}

// Down closes the listener and every open connection: new connections are
// refused until Up.
func (s *Server) Down() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return nil
	}
	err := s.srv.Close()
	s.srv = nil
	if err != nil {
		return fmt.Errorf("es8double: down: %w", err)
	}
	return nil
}

// Up listens again on the same address.
func (s *Server) Up() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	l, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("es8double: up: %w", err)
	}
	s.serve(l)
	return nil
}

// Close stops the server for good.
func (s *Server) Close() error { return s.Down() }
