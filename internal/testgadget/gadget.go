package testgadget

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// childEnv carries the JSON GadgetSpec to a re-executed test binary.
const childEnv = "BPFSTATS_TESTGADGET_SPEC"

// labelPrefix is the prefix of the labels the tracker reads from a
// process's environment; the parent's own labels are not passed on.
const labelPrefix = "BPFSTATS_GADGET_"

// How long StartGadget waits for the child to report, and Stop for it to
// exit. Generous: these are deadlines, not expected durations.
const (
	startTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
)

// GadgetSpec describes what a gadget process loads.
type GadgetSpec struct {
	// Maps are created in order (array maps, see NewMap).
	Maps []GadgetMap `json:"maps"`
	// Programs are loaded in order, after the maps.
	Programs []GadgetProgram `json:"programs"`
	// Labelled are instances of the labelled test object, loaded after
	// Programs, each with its labels; their program IDs follow those of
	// Programs in Gadget.ProgramIDs.
	Labelled []ProgramLabels `json:"labelled,omitempty"`
	// Cgroup, when set, is a cgroup v2 directory the child moves itself
	// into (writing its PID to cgroup.procs) before loading anything.
	Cgroup string `json:"cgroup,omitempty"`
}

// GadgetMap is one map of a gadget.
type GadgetMap struct {
	Name string `json:"name"`
	// MaxEntries is the array size; 0 means 1.
	MaxEntries uint32 `json:"maxEntries"`
}

// GadgetProgram is one program of a gadget.
type GadgetProgram struct {
	Name string `json:"name"`
	// Maps are names from GadgetSpec.Maps that the program uses.
	Maps []string `json:"maps"`
	// Attach makes the program a raw tracepoint on sys_enter (see
	// AttachSysEnter), so it runs on every syscall of any process, e.g.
	// when the test calls Syscalls. Otherwise it is a socket filter that
	// never runs.
	Attach bool `json:"attach"`
}

// TwoProgramsThreeMaps is a gadget whose programs share one map:
// prog_a uses map_1 and map_2, prog_b uses map_2 and map_3. attach is
// GadgetProgram.Attach for both.
func TwoProgramsThreeMaps(attach bool) GadgetSpec {
	return GadgetSpec{
		Maps: []GadgetMap{{Name: "map_1", MaxEntries: 1}, {Name: "map_2", MaxEntries: 64}, {Name: "map_3", MaxEntries: 4096}},
		Programs: []GadgetProgram{
			{Name: "prog_a", Maps: []string{"map_1", "map_2"}, Attach: attach},
			{Name: "prog_b", Maps: []string{"map_2", "map_3"}, Attach: attach},
		},
	}
}

// Gadget is a running child process holding the objects of a GadgetSpec.
// Only the child holds them: when it exits, the kernel frees them (a little
// later: release is deferred).
type Gadget struct {
	// PID is the child's process ID.
	PID uint32
	// ProgramIDs are the kernel IDs of GadgetSpec.Programs, in order.
	ProgramIDs []uint32
	// MapIDs are the kernel IDs of GadgetSpec.Maps, in order.
	MapIDs []uint32

	tb       testing.TB
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	stderr   *SyncBuffer
	exited   chan struct{} // closed when Wait returns
	waitErr  error         // valid once exited is closed
	stopOnce sync.Once
}

// childReport is the one JSON line a child writes to stdout.
type childReport struct {
	PID        uint32   `json:"pid"`
	ProgramIDs []uint32 `json:"programIDs"`
	MapIDs     []uint32 `json:"mapIDs"`
	Error      string   `json:"error,omitempty"`
}

// StartGadget re-executes the test binary as a gadget process: it loads
// spec, reports the IDs and waits until Stop (or the end of the test). env
// is added to the child's environment, e.g. BPFSTATS_GADGET_NAME; the
// parent's own BPFSTATS_GADGET_* variables are not inherited. The test
// package must call RunIfChild in TestMain.
func StartGadget(tb testing.TB, env map[string]string, spec GadgetSpec) *Gadget {
	tb.Helper()
	specJSON, err := json.Marshal(spec)
	if err != nil {
		tb.Fatalf("encoding gadget spec: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		tb.Fatalf("finding the test binary: %v", err)
	}

	// -test.run=^$: should the package lack RunIfChild, the child runs no
	// test and exits, and the error below says why.
	cmd := exec.Command(exe, "-test.run=^$")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, labelPrefix) && !strings.HasPrefix(kv, childEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, childEnv+"="+string(specJSON))
	reports := make(chan []byte, 1)
	g := &Gadget{tb: tb, cmd: cmd, stderr: &SyncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout = &lineWriter{lines: reports}
	cmd.Stderr = g.stderr
	if g.stdin, err = cmd.StdinPipe(); err != nil {
		tb.Fatalf("gadget stdin: %v", err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting gadget: %v", err)
	}
	go func() {
		g.waitErr = cmd.Wait()
		close(g.exited)
	}()
	tb.Cleanup(g.Stop)

	var line []byte
	select {
	case line = <-reports:
	case <-g.exited:
		tb.Fatalf("gadget exited without reporting (%v); does TestMain call testgadget.RunIfChild? stderr: %s", g.waitErr, g.stderr)
	case <-time.After(startTimeout):
		tb.Fatalf("gadget did not report within %v; stderr: %s", startTimeout, g.stderr)
	}
	var report childReport
	if err := json.Unmarshal(line, &report); err != nil {
		tb.Fatalf("gadget reported %q: %v; stderr: %s", line, err, g.stderr)
	}
	if report.Error != "" {
		tb.Fatalf("gadget: %s", report.Error)
	}
	g.PID, g.ProgramIDs, g.MapIDs = report.PID, report.ProgramIDs, report.MapIDs
	return g
}

// Stop closes the child's stdin and waits for it to exit, killing it after
// a deadline. It is idempotent and also runs when the test ends. The
// child's programs and maps are freed by the kernel shortly after.
func (g *Gadget) Stop() {
	g.stopOnce.Do(func() {
		g.stdin.Close()
		select {
		case <-g.exited:
		case <-time.After(stopTimeout):
			g.cmd.Process.Kill()
			<-g.exited
			g.tb.Errorf("gadget %d did not exit within %v; killed", g.cmd.Process.Pid, stopTimeout)
			return
		}
		if g.waitErr != nil && !g.tb.Failed() {
			g.tb.Errorf("gadget %d: %v; stderr: %s", g.cmd.Process.Pid, g.waitErr, g.stderr)
		}
	})
}

// RunIfChild turns the process into a gadget if StartGadget started it, and
// returns otherwise. Call it first thing in TestMain. A gadget loads its
// spec, writes its IDs as one JSON line to stdout, and exits when its stdin
// closes (or on SIGTERM; the kernel frees its objects either way).
func RunIfChild() {
	specJSON, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	os.Exit(runChild(specJSON, os.Stdin, os.Stdout))
}

func runChild(specJSON string, stdin io.Reader, stdout io.Writer) int {
	closers, report, err := loadGadget(specJSON)
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i].Close()
		}
	}()
	if err != nil {
		report = childReport{Error: err.Error()}
	}
	report.PID = uint32(os.Getpid())
	line, _ := json.Marshal(report)
	if _, err := fmt.Fprintf(stdout, "%s\n", line); err != nil || report.Error != "" {
		return 1
	}
	io.Copy(io.Discard, stdin)
	return 0
}

// loadGadget creates the objects of a spec, returning them to close in
// reverse order.
func loadGadget(specJSON string) ([]io.Closer, childReport, error) {
	var report childReport
	var closers []io.Closer
	var spec GadgetSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return nil, report, fmt.Errorf("decoding %s: %w", childEnv, err)
	}
	if spec.Cgroup != "" {
		if err := joinCgroup(spec.Cgroup); err != nil {
			return nil, report, err
		}
	}

	maps := make(map[string]*ebpf.Map)
	for _, ms := range spec.Maps {
		m, err := newArrayMap(ms.Name, max(ms.MaxEntries, 1))
		if err != nil {
			return closers, report, err
		}
		closers = append(closers, m)
		if _, dup := maps[ms.Name]; dup {
			return closers, report, fmt.Errorf("map %q defined twice", ms.Name)
		}
		maps[ms.Name] = m
		id, err := objectID(m.FD())
		if err != nil {
			return closers, report, fmt.Errorf("reading ID of map %q: %w", ms.Name, err)
		}
		report.MapIDs = append(report.MapIDs, id)
	}

	for _, ps := range spec.Programs {
		var used []*ebpf.Map
		for _, name := range ps.Maps {
			m, ok := maps[name]
			if !ok {
				return closers, report, fmt.Errorf("program %q uses unknown map %q", ps.Name, name)
			}
			used = append(used, m)
		}
		typ := ebpf.SocketFilter
		if ps.Attach {
			typ = ebpf.RawTracepoint
		}
		prog, err := newProgram(typ, ps.Name, used)
		if err != nil {
			return closers, report, err
		}
		closers = append(closers, prog)
		if ps.Attach {
			var l link.Link
			if l, err = attachSysEnter(prog); err != nil {
				return closers, report, fmt.Errorf("program %q: %w", ps.Name, err)
			}
			closers = append(closers, l)
		}
		id, err := objectID(prog.FD())
		if err != nil {
			return closers, report, fmt.Errorf("reading ID of program %q: %w", ps.Name, err)
		}
		report.ProgramIDs = append(report.ProgramIDs, id)
	}
	for _, labels := range spec.Labelled {
		prog, err := newLabelled(labels)
		if err != nil {
			return closers, report, err
		}
		closers = append(closers, prog)
		id, err := objectID(prog.FD())
		if err != nil {
			return closers, report, fmt.Errorf("reading ID of labelled program %q: %w", labels.ID, err)
		}
		report.ProgramIDs = append(report.ProgramIDs, id)
	}
	return closers, report, nil
}

// lineWriter passes the first line written to it to lines and drops the
// rest.
type lineWriter struct {
	buf  []byte
	sent bool
	// lines has room for one line, so Write never blocks.
	lines chan<- []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	if w.sent {
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	if i := bytes.IndexByte(w.buf, '\n'); i >= 0 {
		w.lines <- w.buf[:i]
		w.sent = true
	}
	return len(p), nil
}

// SyncBuffer is a bytes.Buffer that a process's output may be written to
// while the test reads it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
