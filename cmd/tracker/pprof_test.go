package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/bpfstats/tracker/internal/testutil"
)

// A running daemon serves its profiles on --pprof-addr, heap samples
// included (see sampleHeap): the legacy header gives twice the sampling
// rate, "@ heap/0" when it is off.
func TestDaemonServesPprof(t *testing.T) {
	addr := testutil.FreeAddr(t)
	startDaemon(t, "GADGETID", daemonTestArgs(t, "--pprof-addr", addr, "--interval", "1h", "--print")...)
	for path, want := range map[string]string{
		"/debug/pprof/":                  "goroutine",
		"/debug/pprof/goroutine?debug=1": "goroutine",
		"/debug/pprof/heap?debug=1":      "@ heap/1048576",
	} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Fatalf("GET %s: %s, body %.300q", path, resp.Status, body)
		}
	}
}

// Without pprof the daemon's heap is not sampled; with it, or with a rate
// GODEBUG set, the rate stays.
func TestSampleHeap(t *testing.T) {
	if strings.Contains(os.Getenv("GODEBUG"), "memprofilerate=") {
		t.Skip("GODEBUG sets memprofilerate: sampleHeap keeps it")
	}
	rate := runtime.MemProfileRate
	t.Cleanup(func() { runtime.MemProfileRate = rate })
	if sampleHeap(true); runtime.MemProfileRate != rate {
		t.Errorf("pprof served: MemProfileRate %d, want %d", runtime.MemProfileRate, rate)
	}
	if sampleHeap(false); runtime.MemProfileRate != 0 {
		t.Errorf("pprof not served: MemProfileRate %d, want 0", runtime.MemProfileRate)
	}
}

// A bad --pprof-addr is bad input (exit 2); a taken port is a runtime
// failure (exit 1), before anything is attached.
func TestPprofAddrErrors(t *testing.T) {
	for _, addr := range []string{"6060", "127.0.0.1:99999", "bad host!:6060"} {
		code, stderr := runChild(t, nil, "run", "--pprof-addr", addr)
		if code != 2 || !strings.Contains(stderr, "--pprof-addr") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("--pprof-addr %q: exit %d, stderr %q; want exit 2 and one line naming the flag", addr, code, stderr)
		}
	}
	requireRoot(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	code, stderr := runChild(t, nil, append([]string{"run"}, daemonTestArgs(t, "--pprof-addr", taken.Addr().String())...)...)
	if code != 1 || !strings.Contains(stderr, "address already in use") {
		t.Errorf("--pprof-addr on a taken port: exit %d, stderr %q; want exit 1, address already in use", code, stderr)
	}
}

// An address without a host serves on loopback only.
func TestPprofListenAddrLoopback(t *testing.T) {
	for in, want := range map[string]string{
		":6060":          "127.0.0.1:6060",
		"127.0.0.1:6060": "127.0.0.1:6060",
		"0.0.0.0:6060":   "0.0.0.0:6060",
		"[::1]:6060":     "[::1]:6060",
	} {
		if got := pprofListenAddr(in); got != want {
			t.Errorf("pprofListenAddr(%q) = %q, want %q", in, got, want)
		}
	}
}
