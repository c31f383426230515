package testgadget

import (
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testutil"
)

func TestMain(m *testing.M) {
	RunIfChild()
	os.Exit(m.Run())
}

func sorted(ids ...uint32) []uint32 {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	return ids
}

// checkProg asserts that bpftool shows program id with name and maps.
func checkProg(t *testing.T, progs map[uint32]testutil.BpftoolProg, id uint32, name string, mapIDs ...uint32) testutil.BpftoolProg {
	t.Helper()
	p, ok := progs[id]
	if !ok {
		t.Fatalf("bpftool does not list program %d (%s)", id, name)
	}
	if p.Name != name {
		t.Errorf("program %d: name %q, want %q", id, p.Name, name)
	}
	if got, want := sorted(p.MapIDs...), sorted(mapIDs...); !slices.Equal(got, want) {
		t.Errorf("program %d (%s): map_ids %v, want %v", id, name, got, want)
	}
	return p
}

func enableStats(t *testing.T) {
	t.Helper()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	testutil.SkipIfUnsupported(t, err, "BPF_ENABLE_STATS")
	t.Cleanup(func() { stats.Close() })
}

// kernelIDs lists the program or map IDs the kernel has.
func kernelIDs[ID ~uint32](t *testing.T, next func(ID) (ID, error)) map[uint32]bool {
	t.Helper()
	ids := make(map[uint32]bool)
	var id ID
	for {
		var err error
		id, err = next(id)
		if errors.Is(err, os.ErrNotExist) {
			return ids
		}
		if err != nil {
			t.Fatalf("walking IDs: %v", err)
		}
		ids[uint32(id)] = true
	}
}

// waitGone polls the kernel's ID lists until none of the IDs is left:
// release after the holder exits is asynchronous.
func waitGone(t *testing.T, progIDs, mapIDs []uint32) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		progs := kernelIDs(t, ebpf.ProgramGetNextID)
		maps := kernelIDs(t, ebpf.MapGetNextID)
		var left []string
		for _, id := range progIDs {
			if progs[id] {
				left = append(left, "program "+strconv.Itoa(int(id)))
			}
		}
		for _, id := range mapIDs {
			if maps[id] {
				left = append(left, "map "+strconv.Itoa(int(id)))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still in the kernel 30s after the gadget exited: %s", strings.Join(left, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStartGadget(t *testing.T) {
	g := StartGadget(t, map[string]string{"BPFSTATS_GADGET_NAME": "test_gadget"}, TwoProgramsThreeMaps(false))
	if len(g.ProgramIDs) != 2 || len(g.MapIDs) != 3 {
		t.Fatalf("gadget reported programs %v and maps %v, want 2 and 3", g.ProgramIDs, g.MapIDs)
	}
	if g.PID == 0 || int(g.PID) == os.Getpid() {
		t.Fatalf("gadget PID %d is not a child's", g.PID)
	}

	environ, err := os.ReadFile("/proc/" + strconv.Itoa(int(g.PID)) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Split(string(environ), "\x00"), "BPFSTATS_GADGET_NAME=test_gadget") {
		t.Error("gadget environment lacks BPFSTATS_GADGET_NAME=test_gadget")
	}

	progs := testutil.BpftoolProgs(t)
	m1, m2, m3 := g.MapIDs[0], g.MapIDs[1], g.MapIDs[2]
	a := checkProg(t, progs, g.ProgramIDs[0], "prog_a", m1, m2)
	b := checkProg(t, progs, g.ProgramIDs[1], "prog_b", m2, m3)
	if a.Type != "socket_filter" || b.Type != "socket_filter" {
		t.Errorf("program types %q and %q, want socket_filter", a.Type, b.Type)
	}

	t.Run("pids", func(t *testing.T) {
		withPIDs := false
		for _, p := range progs {
			withPIDs = withPIDs || p.PIDs != nil
		}
		if !withPIDs {
			t.Skip("bpftool shows no pids on any program (built without skeletons)")
		}
		for _, p := range []testutil.BpftoolProg{a, b} {
			if !slices.ContainsFunc(p.PIDs, func(h testutil.BpftoolPID) bool { return h.PID == g.PID }) {
				t.Errorf("program %d: bpftool pids %v lack the gadget %d", p.ID, p.PIDs, g.PID)
			}
		}
	})

	g.Stop()
	waitGone(t, g.ProgramIDs, g.MapIDs)
}

func TestStartGadgetDropsParentLabels(t *testing.T) {
	t.Setenv("BPFSTATS_GADGET_IMAGE", "parent:latest")
	g := StartGadget(t, map[string]string{"BPFSTATS_GADGET_NAME": "child"}, GadgetSpec{})
	environ, err := os.ReadFile("/proc/" + strconv.Itoa(int(g.PID)) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	vars := strings.Split(string(environ), "\x00")
	if slices.Contains(vars, "BPFSTATS_GADGET_IMAGE=parent:latest") {
		t.Error("gadget inherited the parent's BPFSTATS_GADGET_IMAGE")
	}
	if !slices.Contains(vars, "BPFSTATS_GADGET_NAME=child") {
		t.Error("gadget lacks BPFSTATS_GADGET_NAME=child")
	}
}

func TestStartGadgetAttached(t *testing.T) {
	enableStats(t)
	g := StartGadget(t, nil, TwoProgramsThreeMaps(true))

	before := testutil.BpftoolProgs(t)
	Syscalls(1000)
	after := testutil.BpftoolProgs(t)
	for i, name := range []string{"prog_a", "prog_b"} {
		id := g.ProgramIDs[i]
		p0 := checkProg(t, before, id, name, g.MapIDs[i], g.MapIDs[i+1])
		p1 := after[id]
		if p0.Type != "raw_tracepoint" {
			t.Errorf("program %d: type %q, want raw_tracepoint", id, p0.Type)
		}
		// Our 1000 getpid calls alone run each program 1000 times.
		if p1.RunCnt < p0.RunCnt+1000 || p1.RunTimeNs <= p0.RunTimeNs {
			t.Errorf("program %d: run_cnt %d -> %d, run_time_ns %d -> %d; want +1000 runs and more time",
				id, p0.RunCnt, p1.RunCnt, p0.RunTimeNs, p1.RunTimeNs)
		}
	}
}

func TestLoadSocketFilter(t *testing.T) {
	m1 := NewMap(t, "sf_map_1", 1)
	m2 := NewMap(t, "sf_map_2", 128)
	prog := LoadSocketFilter(t, "sf_prog", m1, m2)
	if prog.Type() != ebpf.SocketFilter {
		t.Errorf("type %v, want SocketFilter", prog.Type())
	}
	if m2.MaxEntries() != 128 {
		t.Errorf("map max_entries %d, want 128", m2.MaxEntries())
	}
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	id := ProgramID(t, prog)
	if infoID, _ := info.ID(); uint32(infoID) != id {
		t.Errorf("ProgramID %d, Info().ID %d", id, infoID)
	}
	checkProg(t, testutil.BpftoolProgs(t), id, "sf_prog", MapID(t, m1), MapID(t, m2))
}

func TestLoadGetpidTracepoint(t *testing.T) {
	enableStats(t)
	prog, _ := LoadGetpidTracepoint(t)
	s0, err := prog.Stats()
	if err != nil {
		t.Fatal(err)
	}
	Syscalls(1000)
	s1, err := prog.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s1.RunCount < s0.RunCount+1000 || s1.Runtime <= s0.Runtime {
		t.Errorf("run count %d -> %d, run time %v -> %v; want +1000 runs and more time",
			s0.RunCount, s1.RunCount, s0.Runtime, s1.Runtime)
	}
	p := checkProg(t, testutil.BpftoolProgs(t), ProgramID(t, prog), "getpid_tp")
	if p.RunCnt < s1.RunCount {
		t.Errorf("bpftool run_cnt %d < Stats().RunCount %d read before it", p.RunCnt, s1.RunCount)
	}
}
