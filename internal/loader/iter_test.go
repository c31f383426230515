package loader

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testutil"
)

// iterKernels returns a Kernel reading through the iterators (skipping
// the test only when the kernel does not support them) and one reading
// through bpf(2) and /proc.
func iterKernels(t *testing.T) (iter, syscalls *Kernel) {
	t.Helper()
	testutil.RequireRoot(t)
	iter = newKernel(t)
	progs, holders := iter.Iterators()
	testutil.SkipIfUnsupported(t, progs, "iter/bpf_prog")
	testutil.SkipIfUnsupported(t, holders, "iter/task_file")
	syscalls, err := NewKernelWithOptions(KernelOptions{NoIterators: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscalls.Close() })
	if p, h := syscalls.Iterators(); !errors.Is(p, errIteratorsOff) || !errors.Is(h, errIteratorsOff) {
		t.Fatalf("NoIterators kernel reports %v / %v", p, h)
	}
	return iter, syscalls
}

// newKernel opens a Kernel on the host's /proc, closed when the test ends.
func newKernel(tb testing.TB) *Kernel {
	tb.Helper()
	k, err := NewKernel("")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { k.Close() })
	return k
}

// iterFixture loads n socket filters using 0 to 3 maps each.
func iterFixture(t *testing.T, n int) []*ebpf.Program {
	t.Helper()
	testutil.RequireRoot(t)
	var maps []*ebpf.Map
	for i := range 3 {
		m, err := ebpf.NewMap(&ebpf.MapSpec{
			Name: fmt.Sprintf("tk_iter_%d", i), Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 4,
		})
		if err != nil {
			t.Fatal("creating BPF map: ", err)
		}
		t.Cleanup(func() { m.Close() })
		maps = append(maps, m)
	}
	var progs []*ebpf.Program
	for i := range n {
		var insns asm.Instructions
		for j := range i % 4 {
			insns = append(insns, asm.LoadMapPtr(asm.R1, maps[j].FD()))
		}
		insns = append(insns, asm.Mov.Imm(asm.R0, int32(i)), asm.Return())
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: fmt.Sprintf("tk_iter_%d", i), Type: ebpf.SocketFilter, Instructions: insns, License: "Dual MIT/GPL",
		})
		if err != nil {
			t.Fatal("loading socket filter: ", err)
		}
		t.Cleanup(func() { prog.Close() })
		progs = append(progs, prog)
	}
	return progs
}

// checkHolders requires both holder maps (named gotName and wantName in
// failures) to give this process as the holder of every program of progs,
// and the child too for the first childHeld of them.
func checkHolders(t *testing.T, gotName, wantName string, got, want map[uint32][]uint32, progs []*ebpf.Program, childHeld int, child uint32) {
	t.Helper()
	self := uint32(os.Getpid())
	for i, p := range progs {
		id := programIDOf(t, p)
		exp := []uint32{self}
		if i < childHeld {
			exp = slices.Sorted(slices.Values([]uint32{self, child}))
		}
		if !slices.Equal(got[id], exp) || !slices.Equal(want[id], exp) {
			t.Errorf("program %d: %s %v, %s %v, want %v", id, gotName, got[id], wantName, want[id], exp)
		}
	}
}

// runOnCPU runs prog n times on the given CPU, so that its stats are
// spread over the per-CPU counters.
func runOnCPU(t *testing.T, prog *ebpf.Program, cpu int, n uint32) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	defer unix.SchedSetaffinity(0, &old)
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Skipf("pinning to CPU %d: %v", cpu, err)
	}
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64), Repeat: n}); err != nil {
		t.Fatal("running program: ", err)
	}
}

func programIDOf(t *testing.T, prog *ebpf.Program) uint32 {
	t.Helper()
	id, err := programFDIDOf(prog.FD())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// readAll collects ReadPrograms' results.
func readAll(t *testing.T, k *Kernel, ids []uint32) (map[uint32]ProgramInfo, map[uint32]error) {
	t.Helper()
	infos := make(map[uint32]ProgramInfo)
	errs := make(map[uint32]error)
	err := k.ReadPrograms(ids, func(id uint32, info *ProgramInfo, err error) {
		if _, dup := infos[id]; dup {
			t.Errorf("program %d reported twice", id)
		}
		if _, dup := errs[id]; dup {
			t.Errorf("program %d reported twice", id)
		}
		if err != nil {
			errs[id] = err
			return
		}
		c := *info
		c.MapIDs = slices.Clone(info.MapIDs)
		infos[id] = c
	})
	if err != nil {
		t.Fatal(err)
	}
	return infos, errs
}

// compareReads checks that the iterator and bpf(2) read the same info
// and stats of ids, and returns the iterator's reads.
func compareReads(t *testing.T, iter, syscalls *Kernel, ids []uint32) map[uint32]ProgramInfo {
	t.Helper()
	got, gotErrs := readAll(t, iter, ids)
	want, wantErrs := readAll(t, syscalls, ids)
	for _, id := range ids {
		g, w := got[id], want[id]
		if (gotErrs[id] == nil) != (wantErrs[id] == nil) {
			t.Errorf("program %d: iterator error %v, bpf(2) error %v", id, gotErrs[id], wantErrs[id])
		}
		if g.Name != w.Name || g.ID != w.ID || g.Type != w.Type || g.Tag != w.Tag || g.LoadTime != w.LoadTime ||
			g.RunTime != w.RunTime || g.RunCount != w.RunCount || g.RecursionMisses != w.RecursionMisses ||
			!slices.Equal(g.MapIDs, w.MapIDs) {
			t.Errorf("program %d:\niterator %+v\nbpf(2)   %+v", id, g, w)
		}
	}
	return got
}

// TestIterReadProgramsAgree checks that the iterator and bpf(2) read the
// same info and stats, summed over every CPU, sweep after sweep (the
// first with map IDs, the next ones from the cache), and that bpftool
// agrees.
func TestIterReadProgramsAgree(t *testing.T) {
	iter, syscalls := iterKernels(t)
	readsStats(t)
	progs := iterFixture(t, 12)
	cpus, err := possibleCPUs()
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint32
	for _, p := range progs {
		ids = append(ids, programIDOf(t, p))
	}
	slices.Reverse(ids) // any order
	perCPU := uint64(1)
	if len(cpus) > 1 {
		perCPU = 2
	}
	for round := 1; round <= 3; round++ {
		for i, p := range progs {
			// Program i runs on CPU i%ncpu and the next one, i+1 times each.
			runOnCPU(t, p, cpus[i%len(cpus)], uint32(i+1))
			if len(cpus) > 1 {
				runOnCPU(t, p, cpus[(i+1)%len(cpus)], uint32(i+1))
			}
		}
		if round == 2 && len(iter.known.progs) == 0 {
			t.Fatal("no map IDs cached after the first sweep")
		}
		got := compareReads(t, iter, syscalls, ids)
		for i, p := range progs {
			id := programIDOf(t, p)
			g := got[id]
			if g.ID != id || g.Name != fmt.Sprintf("tk_iter_%d", i) || len(g.MapIDs) != i%4 {
				t.Errorf("round %d: program %d: iterator read %+v", round, id, g)
			}
			if want := uint64(round) * perCPU * uint64(i+1); g.RunCount != want || g.RunTime == 0 {
				t.Errorf("round %d: program %d: run count %d, time %d; want count %d", round, id, g.RunCount, g.RunTime, want)
			}
			var tool testutil.BpftoolProg
			testutil.Bpftool(t, &tool, "prog", "show", "id", strconv.Itoa(int(id)))
			if tool.RunCnt != g.RunCount || tool.RunTimeNs != g.RunTime || !slices.Equal(tool.MapIDs, g.MapIDs) {
				t.Errorf("round %d: program %d: iterator count %d time %d maps %v, bpftool %d %d %v",
					round, id, g.RunCount, g.RunTime, g.MapIDs, tool.RunCnt, tool.RunTimeNs, tool.MapIDs)
			}
		}
	}
}

// TestIterReadProgramsCacheChanges changes the programs between sweeps:
// a map bound to a known program, a few and many new programs, programs
// gone. The cached sweeps must still agree with bpf(2).
func TestIterReadProgramsCacheChanges(t *testing.T) {
	iter, syscalls := iterKernels(t)
	progs := iterFixture(t, 4)
	var ids []uint32
	for _, p := range progs {
		ids = append(ids, programIDOf(t, p))
	}
	compareReads(t, iter, syscalls, ids)

	// BPF_PROG_BIND_MAP adds a map to program 1: its cached IDs are stale.
	extra, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { extra.Close() })
	testutil.SkipIfUnsupported(t, progs[1].BindMap(extra), "BPF_PROG_BIND_MAP")
	got := compareReads(t, iter, syscalls, ids)
	if len(got[ids[1]].MapIDs) != 2 {
		t.Errorf("after binding a map: program %d has maps %v, want 2", ids[1], got[ids[1]].MapIDs)
	}

	// A few new programs are read by bpf(2), many by a second iterator run.
	for _, n := range []int{3, iterFullPassMin + 4} {
		for _, p := range iterFixture(t, n) {
			ids = append(ids, programIDOf(t, p))
		}
		got = compareReads(t, iter, syscalls, ids)
		if len(got) != len(ids) {
			t.Errorf("after %d new programs: %d of %d read", n, len(got), len(ids))
		}
		compareReads(t, iter, syscalls, ids) // and from the cache next time
	}

	// Gone programs are reported gone.
	progs[0].Close()
	progs[2].Close()
	_, errs := readAll(t, iter, ids)
	for _, id := range []uint32{ids[0], ids[2]} {
		if !errors.Is(errs[id], os.ErrNotExist) {
			t.Errorf("closed program %d: %v, want os.ErrNotExist", id, errs[id])
		}
	}
	compareReads(t, iter, syscalls, ids)
}

func TestIterReadProgramsGone(t *testing.T) {
	iter, syscalls := iterKernels(t)
	progs := iterFixture(t, 2)
	live := programIDOf(t, progs[0])
	gone := programIDOf(t, progs[1])
	progs[1].Close()
	// 0 is never an ID; 1<<31 - 1 is beyond any ID this machine reached,
	// and far from the others (the ID set switches to a map).
	ids := []uint32{gone, live, 0, 1<<31 - 1}
	for name, k := range map[string]*Kernel{"iterator": iter, "bpf(2)": syscalls} {
		infos, errs := readAll(t, k, ids)
		if len(infos)+len(errs) != len(ids) {
			t.Errorf("%s: %d results for %d IDs", name, len(infos)+len(errs), len(ids))
		}
		if infos[live].ID != live {
			t.Errorf("%s: live program %d: %+v, %v", name, live, infos[live], errs[live])
		}
		for _, id := range []uint32{gone, 0, 1<<31 - 1} {
			if !errors.Is(errs[id], os.ErrNotExist) {
				t.Errorf("%s: program %d: error %v, want os.ErrNotExist", name, id, errs[id])
			}
		}
	}
}

// TestIterHoldersAgree checks that the task_file iterator and the /proc
// walk find the same holders of the test's programs.
func TestIterHoldersAgree(t *testing.T) {
	iter, syscalls := iterKernels(t)
	progs := iterFixture(t, 3)
	var files []*os.File
	for _, p := range progs[:2] {
		dup, err := unix.FcntlInt(uintptr(p.FD()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, os.NewFile(uintptr(dup), "prog"))
	}
	// The child holds programs 0 and 1 (program 1 twice).
	cmd := exec.Command("sleep", "30")
	cmd.ExtraFiles = []*os.File{files[0], files[1], files[1]}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	got, err := iter.Holders()
	if err != nil {
		t.Fatal(err)
	}
	want, err := syscalls.Holders()
	if err != nil {
		t.Fatal(err)
	}
	self := uint32(os.Getpid())
	checkHolders(t, "iterator holders", "/proc", got, want, progs, 2, uint32(cmd.Process.Pid))
	// Both see the iterator programs held by this process.
	own := iteratorProgramIDs(iter)
	if len(own) != 3 {
		t.Errorf("iteratorProgramIDs() = %v, want 3 IDs", own)
	}
	for _, id := range own {
		if !slices.Contains(got[id], self) || !slices.Contains(want[id], self) {
			t.Errorf("iterator program %d: iterator holders %v, /proc %v, want %d", id, got[id], want[id], self)
		}
	}
}

func TestIterKernelCloseFallsBack(t *testing.T) {
	iter, _ := iterKernels(t)
	progs := iterFixture(t, 1)
	id := programIDOf(t, progs[0])
	iterID := iter.iters.progs.id
	if err := iter.Close(); err != nil {
		t.Fatal(err)
	}
	if err := iter.Close(); err != nil {
		t.Fatal("second Close: ", err)
	}
	if ids := iteratorProgramIDs(iter); ids != nil {
		t.Errorf("after Close, iteratorProgramIDs() = %v", ids)
	}
	if p, h := iter.Iterators(); !errors.Is(p, ErrClosed) || !errors.Is(h, ErrClosed) {
		t.Errorf("after Close, Iterators() = %v, %v", p, h)
	}
	infos, errs := readAll(t, iter, []uint32{id, iterID})
	if infos[id].ID != id {
		t.Errorf("after Close: program %d: %+v %v", id, infos[id], errs[id])
	}
	if !errors.Is(errs[iterID], os.ErrNotExist) {
		// Released with the link; the kernel frees it after an RCU grace
		// period, so only an unexpected error is a failure here.
		if errs[iterID] != nil {
			t.Errorf("iterator program %d after Close: %v", iterID, errs[iterID])
		}
	}
	holders, err := iter.Holders()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(holders[id], uint32(os.Getpid())) {
		t.Errorf("after Close, Holders()[%d] = %v", id, holders[id])
	}
}

func TestIterParseProgRecords(t *testing.T) {
	rec := func(id uint32, name string, maps ...uint32) []byte {
		b := make([]byte, iterProgHeaderSize)
		putU32 := func(off int, v uint32) {
			b[off], b[off+1], b[off+2], b[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		}
		putU32(0, id)
		putU32(4, 2)
		copy(b[48:64], name)
		putU32(64, uint32(len(maps)))
		for _, m := range maps[:min(len(maps), iterMaxMapIDs)] {
			b = append(b, byte(m), byte(m>>8), byte(m>>16), byte(m>>24))
		}
		return b
	}
	many := make([]uint32, 70)
	for i := range many {
		many[i] = uint32(i + 1)
	}
	data := slices.Concat(rec(5, "a"), rec(7, "full_name_15chr", 3, 4), rec(9, "many", many...))
	var got []ProgramInfo
	var complete []bool
	var names nameCache
	err := walkIterProgs(data, true, func(r []byte) {
		var info ProgramInfo
		complete = append(complete, parseIterProg(r, &info, &names))
		got = append(got, info)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].ID != 5 || got[0].Name != "a" || len(got[0].MapIDs) != 0 ||
		got[1].Name != "full_name_15chr" || !slices.Equal(got[1].MapIDs, []uint32{3, 4}) ||
		got[2].ID != 9 || len(got[2].MapIDs) != iterMaxMapIDs {
		t.Errorf("parsed %+v", got)
	}
	if !slices.Equal(complete, []bool{true, true, false}) {
		t.Errorf("complete %v, want the 70-map program flagged", complete)
	}
	if err := walkIterProgs(data[:len(data)-1], true, func([]byte) {}); err == nil {
		t.Error("truncated output accepted")
	}
}

func TestIterParseHolders(t *testing.T) {
	var data []byte
	for _, p := range [][2]uint32{{10, 1}, {10, 1}, {10, 2}, {11, 1}, {0, 3}, {12, 0}, {10, 1}} {
		data = append(data, byte(p[0]), 0, 0, 0, byte(p[1]), 0, 0, 0)
	}
	holders := make(map[uint32][]uint32)
	parseIterHolders(append(data, 1, 2, 3), holders)
	if len(holders) != 2 || !slices.Equal(holders[1], []uint32{10, 11}) || !slices.Equal(holders[2], []uint32{10}) {
		t.Errorf("holders %v", holders)
	}
}

func TestIterIDSet(t *testing.T) {
	for _, ids := range [][]uint32{{5, 3, 900, 64, 65}, {1, 1 << 31, 7}, {}} {
		var s idSet
		s.reset([]uint32{1000, 2000}) // reused storage must not leak into the next set
		s.reset(ids)
		for _, id := range []uint32{0, 2, 4, 6, 1000, 2000, 1<<31 - 1} {
			if !slices.Contains(ids, id) && s.has(id) {
				t.Errorf("set %v has %d", ids, id)
			}
		}
		for _, id := range ids {
			if !s.has(id) || !s.take(id) || s.has(id) || s.take(id) {
				t.Errorf("set %v: take %d misbehaves", ids, id)
			}
		}
	}
}

func TestIterNameCacheDoesNotAllocate(t *testing.T) {
	var c nameCache
	b := []byte("tk_name")
	s := c.intern(b)
	if allocs := testing.AllocsPerRun(100, func() { s = c.intern(b) }); allocs != 0 || s != "tk_name" {
		t.Errorf("intern of a known name: %v allocations, %q", allocs, s)
	}
}

// TestIterProgramIDs checks that listing IDs through the loaded iterator
// gives what BPF_PROG_GET_NEXT_ID gives.
func TestIterProgramIDs(t *testing.T) {
	iter, syscalls := iterKernels(t)
	progs := iterFixture(t, 5)
	if iter.iters == nil || iter.iters.progStats == nil {
		t.Fatal("iterators not loaded by Iterators()")
	}
	// Other tests on this machine may load programs concurrently: compare
	// only when the bpf(2) walks before and after agree.
	var last string
	for range 10 {
		before, err := syscalls.ProgramIDs()
		if err != nil {
			t.Fatal(err)
		}
		got, err := iter.ProgramIDs()
		if err != nil {
			t.Fatal(err)
		}
		after, err := syscalls.ProgramIDs()
		if err != nil {
			t.Fatal(err)
		}
		if slices.Equal(before, after) && slices.Equal(got, before) {
			for _, p := range progs {
				if !slices.Contains(got, programIDOf(t, p)) {
					t.Fatalf("IDs %v lack program %d", got, programIDOf(t, p))
				}
			}
			return
		}
		last = fmt.Sprintf("iterator %v, bpf(2) %v then %v", got, before, after)
	}
	t.Fatal("program IDs never matched in 10 tries: " + last)
}

// iteratorProgramIDs returns the IDs of the Kernel's own iterator
// programs (none before they load or after Close), for callers that want
// to leave the tracker's own programs out of what they report.
func iteratorProgramIDs(k *Kernel) []uint32 {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.iters == nil {
		return nil
	}
	var ids []uint32
	for _, it := range []*bpfIter{k.iters.progs, k.iters.progStats, k.iters.files} {
		if it != nil {
			ids = append(ids, it.id)
		}
	}
	return ids
}
