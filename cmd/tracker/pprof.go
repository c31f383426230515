package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"syscall"
	"time"
)

// pprofServer serves net/http/pprof on a listener and mux of its own (not
// http.DefaultServeMux, which any imported package may add to).
type pprofServer struct {
	server   *http.Server
	listener net.Listener
}

// pprofListenAddr is addr with an empty host made loopback: the profiles
// show the process's internals, so serving them on every address takes
// an explicit 0.0.0.0 or [::].
func pprofListenAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "" {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// listenPprof starts serving /debug/pprof/ on addr (see pprofListenAddr).
func listenPprof(addr string) (*pprofServer, error) {
	addr = pprofListenAddr(addr)
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("listening for pprof on %s: address already in use by another process: %w", addr, err)
	}
	if err != nil {
		return nil, fmt.Errorf("listening for pprof on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	s := &pprofServer{
		server:   &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		listener: ln,
	}
	go s.server.Serve(ln)
	return s, nil
}

// Addr is the address the server listens on.
func (s *pprofServer) Addr() net.Addr { return s.listener.Addr() }

// Close stops the server; profiles in progress are cut. It is idempotent.
func (s *pprofServer) Close() error {
	err := s.server.Close()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
