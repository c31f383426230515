package loader

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testutil"
)

// TestReadsStructLayout checks the Go mirrors of the uapi structs against
// the offsets of include/uapi/linux/bpf.h.
func TestReadsStructLayout(t *testing.T) {
	var pi sysProgInfo
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"prog.tag", unsafe.Offsetof(pi.Tag), 8},
		{"prog.load_time", unsafe.Offsetof(pi.LoadTime), 40},
		{"prog.nr_map_ids", unsafe.Offsetof(pi.NrMapIDs), 52},
		{"prog.map_ids", unsafe.Offsetof(pi.MapIDs), 56},
		{"prog.name", unsafe.Offsetof(pi.Name), 64},
		{"prog.ifindex", unsafe.Offsetof(pi.Ifindex), 80},
		{"prog.netns_dev", unsafe.Offsetof(pi.NetnsDev), 88},
		{"prog.btf_id", unsafe.Offsetof(pi.BTFID), 128},
		{"prog.prog_tags", unsafe.Offsetof(pi.ProgTags), 184},
		{"prog.run_time_ns", unsafe.Offsetof(pi.RunTimeNs), 192},
		{"prog.run_cnt", unsafe.Offsetof(pi.RunCnt), 200},
		{"prog.recursion_misses", unsafe.Offsetof(pi.RecursionMisses), 208},
		{"sizeof prog", unsafe.Sizeof(pi), 216},
		{"map.map_flags", unsafe.Offsetof(sysMapInfo{}.MapFlags), 20},
		{"map.name", unsafe.Offsetof(sysMapInfo{}.Name), 24},
		{"sizeof map", unsafe.Sizeof(sysMapInfo{}), 40},
		{"id attr next_id", unsafe.Offsetof(sysIDAttr{}.NextID), 4},
		{"sizeof id attr", unsafe.Sizeof(sysIDAttr{}), 12},
		{"sizeof info attr", unsafe.Sizeof(sysInfoAttr{}), 16},
		{"prog load attr insns", unsafe.Offsetof(sysProgLoadAttr{}.Insns), 8},
		{"prog load attr license", unsafe.Offsetof(sysProgLoadAttr{}.License), 16},
		{"prog load attr log_buf", unsafe.Offsetof(sysProgLoadAttr{}.LogBuf), 32},
		{"prog load attr prog_name", unsafe.Offsetof(sysProgLoadAttr{}.ProgName), 48},
		{"prog load attr expected_attach_type", unsafe.Offsetof(sysProgLoadAttr{}.ExpectedAttachType), 68},
		{"prog load attr attach_btf_id", unsafe.Offsetof(sysProgLoadAttr{}.AttachBTFID), 108},
		{"prog load attr attach_btf_obj_fd", unsafe.Offsetof(sysProgLoadAttr{}.AttachBTFObjFd), 112},
		{"sizeof prog load attr", unsafe.Sizeof(sysProgLoadAttr{}), 120},
	} {
		if c.got != c.want {
			t.Errorf("%s: offset %d, want %d", c.name, c.got, c.want)
		}
	}
}

// readsFixture is a socket filter that references two maps.
type readsFixture struct {
	prog          *ebpf.Program
	hash, arr     *ebpf.Map
	progID        uint32
	hashID, arrID uint32
	kernel        *Kernel
}

const readsProgName = "tk_reads_test"

// readsLoad loads the fixture, registering cleanups for every object.
func readsLoad(t testing.TB) *readsFixture {
	t.Helper()
	testutil.RequireRoot(t)
	hash, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "tk_hash", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 128,
	})
	if err != nil {
		t.Fatal("creating BPF map: ", err)
	}
	t.Cleanup(func() { hash.Close() })
	for i := uint32(0); i < 10; i++ {
		if err := hash.Put(i, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	arr, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "tk_array", Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 32,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { arr.Close() })

	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: readsProgName,
		Type: ebpf.SocketFilter,
		Instructions: asm.Instructions{
			asm.LoadMapPtr(asm.R1, hash.FD()),
			asm.LoadMapPtr(asm.R2, arr.FD()),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		License: "Dual MIT/GPL",
	})
	if err != nil {
		t.Fatal("loading socket filter: ", err)
	}
	t.Cleanup(func() { prog.Close() })

	f := &readsFixture{prog: prog, hash: hash, arr: arr}
	pinfo, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := pinfo.ID()
	f.progID = uint32(id)
	hinfo, err := hash.Info()
	if err != nil {
		t.Fatal(err)
	}
	hid, _ := hinfo.ID()
	ainfo, err := arr.Info()
	if err != nil {
		t.Fatal(err)
	}
	aid, _ := ainfo.ID()
	f.hashID, f.arrID = uint32(hid), uint32(aid)

	f.kernel, err = NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// readsRun runs the fixture program at least n times with BPF_PROG_TEST_RUN.
func readsRun(t testing.TB, prog *ebpf.Program, n uint32) {
	t.Helper()
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64), Repeat: n}); err != nil {
		t.Fatal("running program: ", err)
	}
}

// readsStats enables stats for the test.
func readsStats(t testing.TB) {
	t.Helper()
	s, err := EnableStats()
	testutil.SkipIfUnsupported(t, err, "BPF_ENABLE_STATS")
	t.Cleanup(func() { s.Close() })
}

func TestReadProgramMatchesBpftool(t *testing.T) {
	f := readsLoad(t)
	readsStats(t)
	readsRun(t, f.prog, 1000)

	var before, after testutil.BpftoolProg
	testutil.Bpftool(t, &before, "prog", "show", "id", strconv.Itoa(int(f.progID)))
	got, err := f.kernel.ReadProgram(f.progID)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Bpftool(t, &after, "prog", "show", "id", strconv.Itoa(int(f.progID)))

	if got.ID != f.progID || got.ID != after.ID {
		t.Errorf("ID %d, want %d (bpftool %d)", got.ID, f.progID, after.ID)
	}
	if got.Name != readsProgName || got.Name != after.Name {
		t.Errorf("name %q, want %q (bpftool %q)", got.Name, readsProgName, after.Name)
	}
	if got.Type != uint32(ebpf.SocketFilter) || after.Type != "socket_filter" {
		t.Errorf("type %d, bpftool %q; want %d, socket_filter", got.Type, after.Type, ebpf.SocketFilter)
	}
	if tag := hex.EncodeToString(got.Tag[:]); tag != after.Tag {
		t.Errorf("tag %s, bpftool %s", tag, after.Tag)
	}
	if !slices.Equal(got.MapIDs, after.MapIDs) || len(got.MapIDs) != 2 {
		t.Errorf("map IDs %v, bpftool %v", got.MapIDs, after.MapIDs)
	}
	if want := []uint32{f.hashID, f.arrID}; !slices.Equal(slices.Sorted(slices.Values(got.MapIDs)), slices.Sorted(slices.Values(want))) {
		t.Errorf("map IDs %v, want %v", got.MapIDs, want)
	}
	if got.RunCount < 1000 {
		t.Errorf("run count %d after 1000 test runs", got.RunCount)
	}
	if got.RunTime == 0 {
		t.Error("run time 0 after 1000 test runs")
	}
	if before.RunCnt > got.RunCount || got.RunCount > after.RunCnt {
		t.Errorf("run count %d not between bpftool's %d and %d", got.RunCount, before.RunCnt, after.RunCnt)
	}
	if before.RunTimeNs > got.RunTime || got.RunTime > after.RunTimeNs {
		t.Errorf("run time %d not between bpftool's %d and %d", got.RunTime, before.RunTimeNs, after.RunTimeNs)
	}
	boot, err := bootTime("/proc")
	if err != nil {
		t.Fatal(err)
	}
	loaded := boot.Add(time.Duration(got.LoadTime))
	if d := loaded.Sub(time.Unix(after.LoadedAt, 0)); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("load time %v (boot + %d ns), bpftool loaded_at %v", loaded, got.LoadTime, time.Unix(after.LoadedAt, 0))
	}
}

func TestReadProgramIntoReusesAndGrows(t *testing.T) {
	f := readsLoad(t)
	// Start with room for one map ID to exercise the retry with a larger buffer.
	f.kernel.mapIDs = make([]uint32, 1)
	var info ProgramInfo
	if err := f.kernel.readProgramInto(f.progID, &info); err != nil {
		t.Fatal(err)
	}
	if len(info.MapIDs) != 2 || len(f.kernel.mapIDs) < 2 {
		t.Fatalf("map IDs %v with buffer %d, want 2 IDs", info.MapIDs, len(f.kernel.mapIDs))
	}
	first := info
	allocs := testing.AllocsPerRun(100, func() {
		if err := f.kernel.readProgramInto(f.progID, &info); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("readProgramInto allocates %.1f times per read of an unchanged program", allocs)
	}
	if info.Name != first.Name || !slices.Equal(info.MapIDs, first.MapIDs) {
		t.Errorf("re-read %+v differs from first read %+v", info, first)
	}
}

func TestReadMapMatchesBpftool(t *testing.T) {
	f := readsLoad(t)
	for _, c := range []struct {
		id   uint32
		name string
		typ  ebpf.MapType
		tool string
	}{
		{f.hashID, "tk_hash", ebpf.Hash, "hash"},
		{f.arrID, "tk_array", ebpf.Array, "array"},
	} {
		got, err := f.kernel.ReadMap(c.id)
		if err != nil {
			t.Fatal(err)
		}
		var want testutil.BpftoolMap
		testutil.Bpftool(t, &want, "map", "show", "id", strconv.Itoa(int(c.id)))
		if got.ID != c.id || got.Name != c.name || got.Name != want.Name || got.Type != uint32(c.typ) || want.Type != c.tool {
			t.Errorf("map %d: got %+v, bpftool %+v", c.id, got, want)
		}
		if got.KeySize != want.BytesKey || got.ValueSize != want.BytesValue ||
			got.MaxEntries != want.MaxEntries || got.Flags != want.Flags {
			t.Errorf("map %d: got %+v, bpftool %+v", c.id, got, want)
		}
		if got.Memlock == 0 || got.Memlock != want.BytesMemlock {
			t.Errorf("map %d: memlock %d, bpftool bytes_memlock %d", c.id, got.Memlock, want.BytesMemlock)
		}
	}
}

func TestProgramIDsMatchesBpftool(t *testing.T) {
	f := readsLoad(t)
	// Other tests on this machine may load programs concurrently: compare
	// only when our walks before and after bpftool's agree.
	var last string
	for range 10 {
		before, err := f.kernel.ProgramIDs()
		if err != nil {
			t.Fatal(err)
		}
		var progs []testutil.BpftoolProg
		testutil.Bpftool(t, &progs, "prog", "show")
		after, err := f.kernel.ProgramIDs()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(before, f.progID) {
			t.Fatalf("ProgramIDs %v lacks test program %d", before, f.progID)
		}
		if !slices.IsSorted(before) {
			t.Errorf("ProgramIDs %v not ascending", before)
		}
		var tool []uint32
		for _, p := range progs {
			tool = append(tool, p.ID)
		}
		slices.Sort(tool)
		if slices.Equal(before, after) && slices.Equal(before, tool) {
			return
		}
		last = fmt.Sprintf("ours %v then %v, bpftool %v", before, after, tool)
	}
	t.Fatal("program IDs never matched bpftool in 10 tries: " + last)
}

func TestReadNotExistAndNoLeak(t *testing.T) {
	f := readsLoad(t)
	k := f.kernel
	for range 100 {
		if _, err := k.ReadProgram(f.progID); err != nil {
			t.Fatal(err)
		}
		if _, err := k.ReadMap(f.hashID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := k.ReadProgram(0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadProgram(0): %v, want os.ErrNotExist", err)
	}

	// Our reads must not have kept anything alive: once the test's own fds
	// are closed, the IDs go away (maps after the program's RCU grace period).
	f.prog.Close()
	f.hash.Close()
	f.arr.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, perr := k.ReadProgram(f.progID)
		_, merr := k.ReadMap(f.hashID)
		if errors.Is(perr, os.ErrNotExist) && errors.Is(merr, os.ErrNotExist) {
			break
		}
		if perr != nil && !errors.Is(perr, os.ErrNotExist) || merr != nil && !errors.Is(merr, os.ErrNotExist) {
			t.Fatalf("reading released objects: %v / %v", perr, merr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("program %d / map %d still readable 10s after release: %v / %v", f.progID, f.hashID, perr, merr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ids, err := k.ProgramIDs()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ids, f.progID) {
		t.Errorf("ProgramIDs still lists released program %d", f.progID)
	}
}

func TestHoldersFindsSelfAndChild(t *testing.T) {
	f := readsLoad(t)
	// A child that inherits a dup of the program fd as its fd 3.
	dup, err := unix.FcntlInt(uintptr(f.prog.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	file := os.NewFile(uintptr(dup), "prog")
	cmd := exec.Command("sleep", "30")
	cmd.ExtraFiles = []*os.File{file}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	file.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	holders, err := f.kernel.Holders()
	if err != nil {
		t.Fatal(err)
	}
	pids := holders[f.progID]
	self, child := uint32(os.Getpid()), uint32(cmd.Process.Pid)
	if !slices.Contains(pids, self) || !slices.Contains(pids, child) {
		t.Fatalf("holders of program %d: %v, want %d (self) and %d (child)", f.progID, pids, self, child)
	}
	if !slices.IsSorted(pids) {
		t.Errorf("holders %v not ascending", pids)
	}
	for id, pids := range holders {
		if len(slices.Compact(slices.Clone(pids))) != len(pids) {
			t.Errorf("program %d: duplicate holders %v", id, pids)
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	holders, err = f.kernel.Holders()
	if err != nil {
		t.Fatal(err)
	}
	if pids := holders[f.progID]; slices.Contains(pids, child) || !slices.Contains(pids, self) {
		t.Errorf("holders after the child exited: %v, want %d and not %d", pids, self, child)
	}
}

func TestReadProcessSelfChildAndKernelThread(t *testing.T) {
	k, err := NewKernel("")
	if err != nil {
		t.Fatal(err)
	}

	self, err := k.ReadProcess(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	// The test binary's comm has no spaces, so naive splitting works here.
	fields := strings.Fields(string(stat))
	start, _ := strconv.ParseUint(fields[21], 10, 64)
	if self.PID != uint32(os.Getpid()) || self.Comm+"\n" != string(comm) || self.Exe != exe ||
		self.StartTime != start || start == 0 || self.PPID != uint32(os.Getppid()) || self.Kernel {
		t.Errorf("self: %+v, want comm %q exe %q start %d ppid %d", self, comm, exe, start, os.Getppid())
	}
	if len(self.Labels) != 0 && os.Getenv(gadgetEnvPrefix+"NAME") == "" {
		t.Errorf("self labels %v without BPFSTATS_GADGET_* in the environment", self.Labels)
	}

	// A shell that says "ready" once it runs, i.e. once its exec is
	// complete (before that, comm, exe and environ may still be in flux),
	// then blocks reading stdin.
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh: " + err.Error())
	}
	cmd := exec.Command(sh, "-c", "echo ready; read x")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "BPFSTATS_GADGET_NAME=x", "BPFSTATS_GADGET_IMAGE=ghcr.io/x:1",
		"BPFSTATS_GADGET_ID=abc", "BPFSTATS_GADGET_OTHER=no"}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("child said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal("waiting for child: ", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("child not ready after 10s")
	}
	child, err := k.ReadProcess(uint32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	realSh, err := filepath.EvalSymlinks(sh)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"NAME": "x", "IMAGE": "ghcr.io/x:1", "ID": "abc"}
	if child.Comm != filepath.Base(sh) || child.Exe != realSh || child.PPID != uint32(os.Getpid()) ||
		child.StartTime < self.StartTime || child.Kernel || !maps.Equal(child.Labels, want) {
		t.Errorf("child: %+v, want comm %s exe %s labels %v", child, filepath.Base(sh), realSh, want)
	}

	// PID 2 is kthreadd in the initial PID namespace.
	if kt, err := k.ReadProcess(2); err == nil && !kt.Kernel {
		t.Errorf("pid 2 %+v not flagged as a kernel thread", kt)
	} else if err == nil && (kt.Exe != "" || kt.Labels != nil) {
		t.Errorf("kernel thread %+v has exe or labels", kt)
	}

	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	if p, err := k.ReadProcess(uint32(gone.Process.Pid)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("exited process: %+v, %v; want os.ErrNotExist", p, err)
	}
}

func TestEnableStatsCountsAndClosesTwice(t *testing.T) {
	f := readsLoad(t)
	s, err := EnableStats()
	testutil.SkipIfUnsupported(t, err, "BPF_ENABLE_STATS")
	t.Cleanup(func() { s.Close() })
	before, err := f.kernel.ReadProgram(f.progID)
	if err != nil {
		t.Fatal(err)
	}
	readsRun(t, f.prog, 100)
	after, err := f.kernel.ReadProgram(f.progID)
	if err != nil {
		t.Fatal(err)
	}
	if after.RunCount < before.RunCount+100 || after.RunTime <= before.RunTime {
		t.Errorf("stats on: run count %d -> %d, run time %d -> %d after 100 runs",
			before.RunCount, after.RunCount, before.RunTime, after.RunTime)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func BenchmarkReadProgram(b *testing.B) {
	f := readsLoad(b)
	readsStats(b)
	var info ProgramInfo
	b.ReportAllocs()
	for b.Loop() {
		if err := f.kernel.readProgramInto(f.progID, &info); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSweep is one stats sweep as the tracker does it: walk the IDs
// and read every program, over 100 loaded programs.
func BenchmarkSweep(b *testing.B) {
	f := readsLoad(b)
	readsStats(b)
	spec := &ebpf.ProgramSpec{
		Type:         ebpf.SocketFilter,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		License:      "Dual MIT/GPL",
	}
	for range 99 {
		p, err := ebpf.NewProgram(spec)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { p.Close() })
	}
	var ids []uint32
	infos := make(map[uint32]*ProgramInfo)
	progs := 0
	b.ReportAllocs()
	for b.Loop() {
		var err error
		ids, err = f.kernel.appendProgramIDs(ids[:0])
		if err != nil {
			b.Fatal(err)
		}
		for _, id := range ids {
			info := infos[id]
			if info == nil {
				info = new(ProgramInfo)
				infos[id] = info
			}
			if err := f.kernel.readProgramInto(id, info); err != nil && !errors.Is(err, os.ErrNotExist) {
				b.Fatal(err)
			}
		}
		progs += len(ids)
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(progs), "us/prog")
}

func BenchmarkReadMap(b *testing.B) {
	f := readsLoad(b)
	var info MapInfo
	b.ReportAllocs()
	for b.Loop() {
		if err := f.kernel.readMapInto(f.hashID, &info); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHolders(b *testing.B) {
	f := readsLoad(b)
	b.ReportAllocs()
	for b.Loop() {
		h, err := f.kernel.Holders()
		if err != nil {
			b.Fatal(err)
		}
		if len(h[f.progID]) == 0 {
			b.Fatal("test program has no holder")
		}
	}
}

func BenchmarkReadProcess(b *testing.B) {
	k, err := NewKernel("")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.ReadProcess(uint32(os.Getpid())); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadProgramCilium is the same read done the way Inspektor
// Gadget does it, for comparison: open by ID, Info(), Stats(), close.
func BenchmarkReadProgramCilium(b *testing.B) {
	f := readsLoad(b)
	readsStats(b)
	b.ReportAllocs()
	for b.Loop() {
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(f.progID))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Info(); err != nil {
			b.Fatal(err)
		}
		if _, err := p.Stats(); err != nil {
			b.Fatal(err)
		}
		p.Close()
	}
}

// bootTime returns the wall-clock time the system booted: the btime line
// of <procRoot>/stat.
func bootTime(procRoot string) (time.Time, error) {
	data, err := os.ReadFile(procRoot + "/stat")
	if err != nil {
		return time.Time{}, fmt.Errorf("reading boot time: %w", err)
	}
	for line := range bytes.Lines(data) {
		if v, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			sec, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("parsing btime: %w", err)
			}
			return time.Unix(sec, 0), nil
		}
	}
	return time.Time{}, errors.New("reading boot time: no btime line in stat")
}
