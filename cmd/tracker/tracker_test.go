package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

// childEnv makes the test binary act as the tracker command itself, so
// that tests can run it with other privileges.
const childEnv = "TRACKER_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	testgadget.RunIfChild()
	if os.Getenv(childEnv) == "1" {
		os.Exit(runMain())
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if err := loader.CheckPrivileges(); err != nil {
		t.Skip("needs root: ", err)
	}
}

// statsRun is "tracker stats -o json" running in-process.
type statsRun struct {
	tables chan []state.Row
	// source is the "source" of the rows last read ("" for rows without).
	source atomic.Value
	stderr *testgadget.SyncBuffer
	done   chan error
}

// startStats runs "tracker stats -o json --interval 100ms args..." until the
// test ends, and waits for its first table so that the source is attached.
func startStats(t *testing.T, args ...string) *statsRun {
	t.Helper()
	requireRoot(t)
	r := startJSON(t, append([]string{"stats", "-o", "json", "--interval", "100ms"}, args...)...)
	r.next(t)
	return r
}

// startJSON runs a tracker command printing one JSON array of rows per line,
// in-process, until the test ends.
func startJSON(t *testing.T, args ...string) *statsRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	r := &statsRun{tables: make(chan []state.Row, 1024), stderr: &testgadget.SyncBuffer{}, done: make(chan error, 1)}
	go func() {
		err := run(ctx, args, pw, r.stderr)
		pw.CloseWithError(io.EOF)
		r.done <- err
	}()
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(nil, 64<<20)
		for sc.Scan() {
			var sourced []sourcedRow
			if bytes.HasPrefix(sc.Bytes(), []byte("{")) {
				// A top print: counters and rows.
				var p struct {
					Rows []sourcedRow `json:"rows"`
				}
				if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
					t.Errorf("output line is not a fleet print: %v: %q", err, sc.Text())
					continue
				}
				sourced = p.Rows
			} else if err := json.Unmarshal(sc.Bytes(), &sourced); err != nil {
				t.Errorf("output line is not a JSON array of rows: %v: %q", err, sc.Text())
				continue
			}
			rows := make([]state.Row, len(sourced))
			for i, sr := range sourced {
				rows[i] = sr.Row
				r.source.Store(sr.Source)
			}
			select {
			case r.tables <- rows:
			default: // the test is not reading: drop the oldest view
				<-r.tables
				r.tables <- rows
			}
		}
		close(r.tables)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("tracker %v: %v\n%s", args, err, r.stderr)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("tracker %v did not stop within 5s of cancel", args)
		}
	})
	return r
}

// next returns the next table.
func (r *statsRun) next(t *testing.T) []state.Row {
	t.Helper()
	select {
	case rows, ok := <-r.tables:
		if !ok {
			t.Fatalf("tracker stopped: %s", r.stderr)
		}
		return rows
	case <-time.After(testutil.Wait):
		t.Fatalf("no table within %v; stderr:\n%s", testutil.Wait, r.stderr)
	}
	return nil
}

// waitFor returns the first table for which cond holds.
func (r *statsRun) waitFor(t *testing.T, what string, cond func([]state.Row) bool) []state.Row {
	t.Helper()
	deadline := time.Now().Add(testutil.Wait)
	for time.Now().Before(deadline) {
		if rows := r.next(t); cond(rows) {
			return rows
		}
	}
	t.Fatalf("no table with %s within %v; stderr:\n%s", what, testutil.Wait, r.stderr)
	return nil
}

func findProg(rows []state.Row, id uint32) (state.Row, bool) {
	for _, r := range rows {
		if r.ProgID == id {
			return r, true
		}
	}
	return state.Row{}, false
}

func TestStatsSeesLoadAndRelease(t *testing.T) {
	r := startStats(t, "--all")
	prog := testgadget.LoadSocketFilter(t, "bpfstats_t_load")
	id := testgadget.ProgramID(t, prog)

	rows := r.waitFor(t, fmt.Sprintf("program %d", id), func(rows []state.Row) bool {
		_, ok := findProg(rows, id)
		return ok
	})
	row, _ := findProg(rows, id)
	if src, _ := r.source.Load().(string); src == loader.SourcePoll || src == "" {
		t.Fatalf("source %q: the event path must be what found the program", src)
	}
	// Only an event names the loader: a snapshot or resync cannot.
	if row.Loader == nil || row.Loader.PID != uint32(os.Getpid()) {
		t.Fatalf("program %d was not found by a load event (loader %+v)", id, row.Loader)
	}
	if row.ProgName != "bpfstats_t_load" || row.ProgType != "socket_filter" {
		t.Fatalf("row: %+v", row)
	}
	if strings.Contains(r.stderr.String(), "resynced") {
		t.Fatalf("a resync happened, so the event path is not proven:\n%s", r.stderr)
	}

	prog.Close()
	r.waitFor(t, fmt.Sprintf("program %d gone", id), func(rows []state.Row) bool {
		_, ok := findProg(rows, id)
		return !ok
	})
}

// passingSocketFilter loads a socket filter that keeps every packet, so
// that the sender can wait for each datagram to arrive.
func passingSocketFilter(t *testing.T, name string) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    name,
		Type:    ebpf.SocketFilter,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadImm(asm.R0, 0xffff, asm.DWord),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("loading socket filter: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// attachToSocket runs prog on every datagram a loopback UDP socket
// receives, and returns a function sending n datagrams to it.
func attachToSocket(t *testing.T, prog *ebpf.Program) func(n int) {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_BPF, prog.FD())
	}); err != nil || serr != nil {
		t.Fatalf("attaching socket filter: %v %v", err, serr)
	}
	sender, err := net.DialUDP("udp4", nil, conn.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sender.Close() })
	return func(n int) {
		buf := make([]byte, 64)
		for range n {
			if _, err := sender.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Read(buf); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The tracker's runtime and runcount are the kernel's: once the program
// stops running, they equal bpftool's exactly.
func TestStatsMatchBpftool(t *testing.T) {
	r := startStats(t, "--all")
	prog := passingSocketFilter(t, "bpfstats_t_run")
	id := testgadget.ProgramID(t, prog)
	send := attachToSocket(t, prog)
	send(500)

	var want testutil.BpftoolProg
	testutil.Bpftool(t, &want, "prog", "show", "id", fmt.Sprint(id))
	if want.RunCnt < 500 || want.RunTimeNs == 0 {
		t.Fatalf("bpftool: program did not run 500 times with stats on: %+v", want)
	}
	r.waitFor(t, fmt.Sprintf("program %d at runcount %d runtime %d", id, want.RunCnt, want.RunTimeNs),
		func(rows []state.Row) bool {
			row, ok := findProg(rows, id)
			if ok && (row.Runcount > want.RunCnt || row.Runtime > want.RunTimeNs) {
				t.Fatalf("tracker is ahead of bpftool on an idle program: %+v vs %+v", row, want)
			}
			return ok && row.Runcount == want.RunCnt && row.Runtime == want.RunTimeNs
		})

	// Deltas follow: another 200 runs show up as a delta of 200 in one
	// table, or spread over consecutive ones.
	send(200)
	var sum uint64
	r.waitFor(t, "deltas adding up to 200 runs", func(rows []state.Row) bool {
		row, _ := findProg(rows, id)
		sum += row.RuncountDelta
		return sum >= 200
	})
	if sum != 200 {
		t.Fatalf("runcount deltas add up to %d, want 200", sum)
	}
}

// A labelled process with two programs sharing one of three maps is one
// gadget row, whose map memory counts each of the three maps once.
func TestGadgetRowDistinctMaps(t *testing.T) {
	r := startStats(t)
	g := testgadget.StartGadget(t, map[string]string{
		"BPFSTATS_GADGET_NAME":  "mytestgadget",
		"BPFSTATS_GADGET_IMAGE": "test_gadget:latest",
	}, testgadget.TwoProgramsThreeMaps(false))

	wantMem := testutil.BpftoolMapMemory(t, g.MapIDs)
	rows := r.waitFor(t, "the labelled gadget", func(rows []state.Row) bool {
		for _, row := range rows {
			if row.GadgetName == "mytestgadget" && row.ProgramCount == 2 {
				return true
			}
		}
		return false
	})
	var got []state.Row
	for _, row := range rows {
		if row.GadgetName == "mytestgadget" {
			got = append(got, row)
		}
	}
	if len(got) != 1 {
		t.Fatalf("want one gadget row, got %+v", got)
	}
	row := got[0]
	if row.GadgetImage != "test_gadget:latest" || row.ProgID != 0 || row.ProgName != "" {
		t.Fatalf("gadget row: %+v", row)
	}
	if row.MapCount != 3 || row.MapMemory != wantMem {
		t.Fatalf("MAPCOUNT %d MAPMEMORY %d, want 3 and %d (bpftool)", row.MapCount, row.MapMemory, wantMem)
	}
	if len(row.GadgetID) != 11 {
		t.Fatalf("gadget ID %q is not 11 characters", row.GadgetID)
	}
	if row.Loader == nil || row.Loader.PID != g.PID {
		t.Fatalf("owner %+v, want pid %d", row.Loader, g.PID)
	}
	for _, pid := range row.PIDs {
		if pid != g.PID {
			t.Fatalf("pids %v: only the gadget holds its programs", row.PIDs)
		}
	}

	// The gadget goes away with its process.
	g.Stop()
	r.waitFor(t, "the gadget gone", func(rows []state.Row) bool {
		for _, row := range rows {
			if row.GadgetName == "mytestgadget" {
				return false
			}
		}
		return true
	})
}

// The tracker never keeps a program alive: once its owner closes it, the
// kernel frees it while the tracker keeps sweeping.
func TestTrackerHoldsNoProgramAlive(t *testing.T) {
	r := startStats(t, "--all")
	prog := testgadget.LoadSocketFilter(t, "bpfstats_t_free")
	id := testgadget.ProgramID(t, prog)
	r.waitFor(t, fmt.Sprintf("program %d", id), func(rows []state.Row) bool {
		_, ok := findProg(rows, id)
		return ok
	})
	prog.Close()
	deadline := time.Now().Add(testutil.Wait)
	for {
		r.next(t) // at least one more sweep ran meanwhile
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if err == nil {
			p.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("program %d still alive %v after its owner closed it", id, testutil.Wait)
		}
	}
}

// runChild runs the tracker command in a child process, optionally under
// a wrapper (such as setpriv), and returns its exit code and stderr.
func runChild(t *testing.T, wrapper []string, args ...string) (int, string) {
	t.Helper()
	argv := append(append(wrapper, os.Args[0]), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running %v: %v", argv, err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// Every bad flag or value exits 2 with exactly one "tracker: ..." line on
// stderr: no usage dump.
func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"stats", "--bogus"}, "flag provided but not defined"},
		{[]string{"stats", "--interval", "0s"}, "--interval must be between 100ms and 1h0m0s"},
		{[]string{"stats", "--interval", "-1s"}, "--interval must be between"},
		{[]string{"stats", "--interval", "50ms"}, "--interval must be between"},
		{[]string{"stats", "--interval", "2h"}, "--interval must be between"},
		{[]string{"stats", "--interval", "soon"}, `invalid value "soon" for flag -interval`},
		{[]string{"stats", "--source", "kprobe"}, `unknown --source "kprobe"`},
		{[]string{"stats", "-o", "yaml"}, `unknown output format`},
		{[]string{"stats", "--fields", "nope"}, `unknown field "nope"`},
		{[]string{"stats", "--log-level", "bogus"}, `unknown --log-level "bogus"`},
		{[]string{"stats", "extra"}, `unexpected argument "extra"`},
		{[]string{"run", "--nats-listen", "nope"}, "--nats-listen"},
		{[]string{"run", "--nats-listen", "127.0.0.1:99999"}, "not a number in 0-65535"},
		{[]string{"run", "--nats-listen", "127.0.0.1:http"}, "not a number in 0-65535"},
		{[]string{"run", "--nats-listen", "bad host!:4222"}, "not an IP address or host name"},
		{[]string{"run", "--nats-listen", "127.0.0.1:"}, "not a number"},
		{[]string{"run", "--metrics-addr", "2224"}, "--metrics-addr"},
		{[]string{"run", "--max-message-bytes", "4095"}, "--max-message-bytes 4095: want 4096 to 1073741824"},
		{[]string{"run", "--max-message-bytes", "-1"}, "--max-message-bytes -1: want"},
		{[]string{"run", "--max-message-bytes", "1073741825"}, "--max-message-bytes 1073741825: want"},
		{[]string{"run", "--max-message-bytes", "1MiB"}, `invalid value "1MiB" for flag -max-message-bytes`},
		{[]string{"run", "--timer-slack", "11ms"}, "--timer-slack 11ms: want 0 (keep the inherited slack) to 10ms"},
		{[]string{"run", "--timer-slack", "-1ms"}, "--timer-slack -1ms: want"},
		{[]string{"run", "--subject-prefix", "a.>"}, "--subject-prefix"},
		{[]string{"run", "--subject-prefix", "a..b"}, "--subject-prefix"},
		{[]string{"run", "--subject-prefix", "a\nb"}, "--subject-prefix"},
		{[]string{"run", "--nats-url", "http://127.0.0.1:4222"}, "--nats-url"},
		{[]string{"run", "--nats-tls-cert", "/etc/hostname"}, "go together"},
		{[]string{"top", "--node", "["}, `--node "[" is not a shell pattern`},
		{[]string{"top", "--log-level", "bogus"}, `unknown --log-level "bogus"`},
		{[]string{"top", "--interval", "10ms"}, "--interval must be between"},
		{[]string{"top", "--subject-prefix", "*"}, "--subject-prefix"},
		{[]string{"top", "--nats-url", "ftp://x"}, "--nats-url"},
		{[]string{"top", "--by", "gadget"}, `unknown --by "gadget"`},
		{[]string{"top", "--count", "-1"}, "--count must be >= 0"},
		{[]string{"top", "-o", "yaml"}, "unknown output format"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{}, "no command given"},
	} {
		code, stderr := runChild(t, nil, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.msg) {
			t.Errorf("tracker %q: exit %d, stderr %q; want exit 2 and %q", tc.args, code, stderr, tc.msg)
		}
		if !strings.HasPrefix(stderr, "tracker: ") || strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
			t.Errorf("tracker %q: stderr is not one 'tracker: ' line: %q", tc.args, stderr)
		}
	}
}

// Usage only on request, and then with exit 0.
func TestHelpOnRequest(t *testing.T) {
	for _, args := range [][]string{{"stats", "-h"}, {"run", "--help"}, {"top", "-h"}} {
		var stderr bytes.Buffer
		err := run(context.Background(), args, io.Discard, &stderr)
		if code := exitCode(err, io.Discard); code != 0 || !strings.HasPrefix(stderr.String(), "Usage: tracker "+args[0]) {
			t.Errorf("tracker %v: exit %d, stderr %.200q", args, code, stderr.String())
		}
	}
	var stdout bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &stdout, io.Discard); err != nil || !strings.Contains(stdout.String(), "Commands:") {
		t.Errorf("tracker --help: %v %q", err, stdout.String())
	}
}

func TestEnvironmentSetsFlags(t *testing.T) {
	t.Setenv("TRACKER_INTERVAL", "0s")
	code, stderr := runChild(t, nil, "stats")
	if code != 2 || !strings.Contains(stderr, "--interval must be between") {
		t.Fatalf("TRACKER_INTERVAL=0s: exit %d %q", code, stderr)
	}
	// Flags win over the environment.
	t.Setenv("TRACKER_SOURCE", "nope")
	code, stderr = runChild(t, nil, "stats", "--source", "poll", "--interval", "100ms", "--count", "1", "-o", "json")
	if code != 0 {
		t.Fatalf("flags must override TRACKER_*: exit %d %q", code, stderr)
	}
}

func TestMissingPrivileges(t *testing.T) {
	requireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) not installed: ", err)
	}
	code, stderr := runChild(t, []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"},
		"stats", "--count", "1")
	if code != 1 || !strings.Contains(stderr, "missing privileges") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Fatalf("without privileges: exit %d, stderr %q; want exit 1 and one line naming the missing privileges", code, stderr)
	}
}

func TestStatsHelpListsColumns(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"stats", "--help"}, io.Discard, &out)
	if code := exitCode(err, io.Discard); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, col := range []string{"comms", "gadgetID", "gadgetImage", "gadgetName", "mapCount", "mapMemory",
		"pids", "progID", "progName", "progType", "runcount", "runtime"} {
		if !strings.Contains(out.String(), "\n  "+col+"\n") {
			t.Errorf("--help does not list column %s:\n%s", col, out.String())
		}
	}
}

// startDaemon starts "tracker run args..." as a child process and waits
// until its stdout shows a line containing ready.
func startDaemon(t *testing.T, ready string, args ...string) (*exec.Cmd, *testutil.LogWatch) {
	t.Helper()
	requireRoot(t)
	cmd := exec.Command(os.Args[0], append([]string{"run"}, args...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stderr := testutil.NewLogWatch(t)
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	found := make(chan struct{})
	go func() {
		notify := found
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if notify != nil && strings.Contains(sc.Text(), ready) {
				close(notify)
				notify = nil
			}
		}
	}()
	select {
	case <-found:
	case <-time.After(testutil.Wait):
		t.Fatalf("tracker run printed no %q within %v; stderr:\n%s", ready, testutil.Wait, stderr)
	}
	return cmd, stderr
}

// SIGTERM, SIGINT and SIGHUP stop the daemon cleanly: exit 0, everything
// detached.
func TestRunStopsOnSignal(t *testing.T) {
	for _, sig := range []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP} {
		cmd, stderr := startDaemon(t, "GADGETID", daemonTestArgs(t, "--print", "--interval", "100ms")...)
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("after %v: %v; stderr:\n%s", sig, err, stderr)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("tracker run still running 10s after %v; stderr:\n%s", sig, stderr)
		}
	}
}

func TestRunCheck(t *testing.T) {
	requireRoot(t)
	code, report := runCheckArgs(t)
	if code != 0 {
		t.Fatalf("run --check: exit %d\n%s", code, report)
	}
	for _, want := range []string{"privileges     ok", "bpf stats      ok", "auto would use", "subject        ok", "check passed"} {
		if !strings.Contains(report, want) {
			t.Errorf("--check report lacks %q:\n%s", want, report)
		}
	}
	// A forced source that cannot work fails the check.
	if err := loader.CheckBTF(); err == nil {
		if src, ferr := loader.OpenSource(loader.SourceFentry, loader.SourceOptions{}); ferr != nil {
			if code, report := runCheckArgs(t, "--source", "fentry"); code != 1 {
				t.Errorf("--check --source fentry where fentry is refused: exit %d\n%s", code, report)
			}
		} else {
			src.Close()
		}
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "tracker ") {
		t.Fatalf("version: %q", out.String())
	}
}
