package main

import (
	"testing"

	"github.com/bpfstats/tracker/internal/testutil"
)

// daemonTestArgs adds to args what keeps a test daemon off the default
// ports: its own embedded NATS port and no metrics listener.
func daemonTestArgs(t *testing.T, args ...string) []string {
	t.Helper()
	return append([]string{"--nats-listen", testutil.FreeAddr(t), "--metrics-addr", ""}, args...)
}
