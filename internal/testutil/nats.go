package testutil

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Wait bounds every wait of a test for a message, a log line or a server.
const Wait = 20 * time.Second

// FreePort returns a loopback TCP port nobody listens on now.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreeAddr returns "127.0.0.1:<FreePort>".
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(tb))
}

// StartNATS runs an in-process NATS server (the module the tracker embeds)
// on loopback, on a random port unless opts sets one, until the test ends.
func StartNATS(tb testing.TB, opts *server.Options) *server.Server {
	tb.Helper()
	if opts == nil {
		opts = &server.Options{}
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	opts.NoSigs = true
	opts.NoLog = true
	srv, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("configuring NATS server: %v", err)
	}
	srv.Start()
	tb.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(Wait) {
		tb.Fatalf("NATS server on port %d not ready within %v", opts.Port, Wait)
	}
	return srv
}

// Standalone is a nats-server process as users run it: its own binary,
// its default limits (max_payload 1 MiB, max_control_line 4 KiB).
type Standalone struct {
	// URL is nats://127.0.0.1:<port>.
	URL  string
	addr string
	bin  string
	args []string
	tb   testing.TB

	mu  sync.Mutex
	cmd *exec.Cmd
}

var buildOnce struct {
	sync.Mutex
	path string
}

// natsServerBinary builds nats-server from the module version go.mod pins,
// once per machine and version (the Go build cache keeps it cheap).
func natsServerBinary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Lock()
	defer buildOnce.Unlock()
	if buildOnce.path != "" {
		return buildOnce.path
	}
	version := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == "github.com/nats-io/nats-server/v2" {
				version = dep.Version
			}
		}
	}
	path := filepath.Join(os.TempDir(), "bpfstats-test-nats-server-"+version)
	if _, err := os.Stat(path); err != nil {
		tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
		out, err := exec.Command("go", "build", "-o", tmp, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			tb.Fatalf("building nats-server %s: %v\n%s", version, err, out)
		}
		if err := os.Rename(tmp, path); err != nil {
			tb.Fatalf("installing nats-server: %v", err)
		}
	}
	buildOnce.path = path
	return path
}

// StartStandaloneNATS runs nats-server as its own process on a free
// loopback port with its default settings plus args (e.g. "-js", "-sd",
// dir), and kills it when the test ends.
func StartStandaloneNATS(tb testing.TB, args ...string) *Standalone {
	tb.Helper()
	port := FreePort(tb)
	s := &Standalone{
		addr: fmt.Sprintf("127.0.0.1:%d", port),
		bin:  natsServerBinary(tb),
		args: append([]string{"-a", "127.0.0.1", "-p", fmt.Sprint(port)}, args...),
		tb:   tb,
	}
	s.URL = "nats://" + s.addr
	s.Start()
	tb.Cleanup(s.Stop)
	return s
}

var readyLine = regexp.MustCompile(`Server is ready`)

// Start starts the server (again, on the same port) and waits until it
// says it is ready.
func (s *Standalone) Start() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(s.bin, s.args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		s.tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.tb.Fatalf("starting nats-server: %v", err)
	}
	ready := make(chan struct{})
	var logged strings.Builder
	var logMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			logMu.Lock()
			logged.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if readyLine.MatchString(sc.Text()) {
				once.Do(func() { close(ready) })
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(Wait):
		_ = cmd.Process.Kill()
		logMu.Lock()
		defer logMu.Unlock()
		s.tb.Fatalf("nats-server %v not ready within %v:\n%s", s.args, Wait, logged.String())
	}
	s.cmd = cmd
}

// Stop kills the server and waits for it to exit. It is idempotent.
func (s *Standalone) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Subscription collects the messages of one NATS subscription.
type Subscription struct {
	Conn *nats.Conn
	msgs chan *nats.Msg
}

// Subscribe subscribes to subject on url with a buffer of 65536 messages,
// until the test ends.
func Subscribe(tb testing.TB, url, subject string) *Subscription {
	tb.Helper()
	nc, err := nats.Connect(url, nats.Name("bpfstats-test"))
	if err != nil {
		tb.Fatalf("connecting to %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	s := &Subscription{Conn: nc, msgs: make(chan *nats.Msg, 1<<16)}
	if _, err := nc.ChanSubscribe(subject, s.msgs); err != nil {
		tb.Fatalf("subscribing to %s: %v", subject, err)
	}
	if err := nc.Flush(); err != nil {
		tb.Fatalf("flushing subscription to %s: %v", subject, err)
	}
	return s
}

// Next returns the next message whose subject satisfies match, failing
// the test after Wait.
func (s *Subscription) Next(tb testing.TB, what string, match func(subject string) bool) *nats.Msg {
	tb.Helper()
	deadline := time.After(Wait)
	for {
		select {
		case m := <-s.msgs:
			if match == nil || match(m.Subject) {
				return m
			}
		case <-deadline:
			tb.Fatalf("no %s message within %v", what, Wait)
			return nil
		}
	}
}

// Decode decodes a message's JSON body into a T, failing the test when it
// does not decode.
func Decode[T any](tb testing.TB, m *nats.Msg) T {
	tb.Helper()
	var v T
	if err := json.Unmarshal(m.Data, &v); err != nil {
		tb.Fatalf("decoding %s: %v: %.500s", m.Subject, err, m.Data)
	}
	return v
}
