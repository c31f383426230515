package main

import (
	"net"
	"testing"
)

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// daemonTestArgs adds to args what keeps a test daemon off the default
// ports: its own embedded NATS port and no metrics listener.
func daemonTestArgs(t *testing.T, args ...string) []string {
	t.Helper()
	return append([]string{"--nats-listen", freeAddr(t), "--metrics-addr", ""}, args...)
}
