package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// The TestVM* tests run inside qemu-booted kernels (test/vm/run.sh), where
// trampoline programs load; this project's hosts refuse them (lockdown).

// vmEventTimeout bounds every wait for an event; generous for TCG.
const vmEventTimeout = 30 * time.Second

func requireVM(t *testing.T) {
	t.Helper()
	if os.Getenv("TRACKER_VM") != "1" {
		t.Skip("vm: runs inside qemu only (TRACKER_VM=1, set by test/vm/run.sh)")
	}
	// Before Linux 5.11 every program the tests load is charged to it.
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatalf("removing memlock rlimit: %v", err)
	}
}

// vmFentry opens the fentry source and closes it when t ends.
func vmFentry(t *testing.T) *fentrySource {
	t.Helper()
	src, err := openFentry(SourceOptions{Logf: t.Logf}, fentryConfig{Loads: fentryLoadHooks(), Releases: fentryReleaseHooks()})
	if err != nil {
		t.Fatalf("opening fentry source: %v", err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// stream delivers a source's events on a channel until the test ends.
func stream(t *testing.T, src Source) <-chan ProgramEvent {
	t.Helper()
	ch := make(chan ProgramEvent, 4096)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ch)
		for {
			ev, err := src.Read()
			if err != nil {
				if !errors.Is(err, ErrClosed) {
					t.Errorf("reading events: %v", err)
				}
				return
			}
			select {
			case ch <- ev:
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(done)
		src.Close()
		wg.Wait()
	})
	return ch
}

// nextEvent returns the next event for which match is true, failing the
// test after vmEventTimeout. Other events are passed to skipped, if set.
func nextEvent(t *testing.T, ch <-chan ProgramEvent, match func(ProgramEvent) bool, skipped func(ProgramEvent)) ProgramEvent {
	t.Helper()
	timeout := time.After(vmEventTimeout)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("event stream ended")
			}
			if match(ev) {
				return ev
			}
			if skipped != nil {
				skipped(ev)
			}
		case <-timeout:
			t.Fatalf("no matching event within %v", vmEventTimeout)
		}
	}
}

func eventFor(kind EventKind, id uint32) func(ProgramEvent) bool {
	return func(ev ProgramEvent) bool { return ev.Kind == kind && ev.ProgramID == id }
}

// loadSocketFilter loads a two-instruction socket filter and returns it with
// its kernel info. The caller closes it.
func loadSocketFilter(t testing.TB, name string) (*ebpf.Program, *sysProgInfo) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatalf("loading socket filter: %v", err)
	}
	info := new(sysProgInfo)
	if err := bpfObjInfo(prog.FD(), unsafe.Pointer(info), unsafe.Sizeof(*info)); err != nil {
		prog.Close()
		t.Fatalf("reading program info: %v", err)
	}
	return prog, info
}

// kernelProgramIDs walks BPF_PROG_GET_NEXT_ID with cilium, independent of
// the code under test.
func kernelProgramIDs(t *testing.T) map[uint32]bool {
	t.Helper()
	ids := map[uint32]bool{}
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return ids
		}
		if err != nil {
			t.Fatalf("walking program IDs: %v", err)
		}
		ids[uint32(next)] = true
		id = next
	}
}

// TestVMFentryHooksFire proves that the chosen load and release hooks fire,
// in that order, for a program the test loads and closes.
func TestVMFentryHooksFire(t *testing.T) {
	requireVM(t)
	src := vmFentry(t)
	load, release, ok := fentryHooks(src)
	if !ok || load == "" || release == "" {
		t.Fatalf("fentryHooks = %q, %q, %v", load, release, ok)
	}
	// test/vm/run.sh reads this line for its summary.
	fmt.Printf("VMTEST-HOOKS source=%s load=%s release=%s\n", src.Name(), load, release)

	events := stream(t, src)
	prog, info := loadSocketFilter(t, "trk_fire")
	prog.Close()

	var order []EventKind
	nextEvent(t, events, func(ev ProgramEvent) bool {
		if ev.ProgramID == info.ID {
			order = append(order, ev.Kind)
		}
		return ev.ProgramID == info.ID && ev.Kind == EventRelease
	}, nil)
	if !slices.Equal(order, []EventKind{EventLoad, EventRelease}) {
		t.Errorf("events for program %d: %v, want [load release]", info.ID, order)
	}
}

// TestVMFentryInventoryAfterBurst builds an inventory from an initial ID
// walk plus the events of 1000 load/close cycles and compares it with the
// kernel's ID walk.
func TestVMFentryInventoryAfterBurst(t *testing.T) {
	requireVM(t)
	const cycles = 1000
	src := vmFentry(t)
	events := stream(t, src)

	inventory := kernelProgramIDs(t)
	apply := func(ev ProgramEvent) {
		switch ev.Kind {
		case EventLoad:
			inventory[ev.ProgramID] = true
		case EventRelease:
			delete(inventory, ev.ProgramID)
		case EventLost:
			t.Errorf("lost %d events in a burst of %d programs", ev.Lost, cycles)
			inventory = kernelProgramIDs(t)
		}
	}

	ours := make(map[uint32][]EventKind, cycles)
	var last uint32
	start := time.Now()
	for range cycles {
		prog, info := loadSocketFilter(t, "trk_burst")
		prog.Close()
		ours[info.ID] = nil
		last = info.ID
	}
	t.Logf("%d load/close cycles in %v", cycles, time.Since(start))

	record := func(ev ProgramEvent) {
		if kinds, ok := ours[ev.ProgramID]; ok {
			ours[ev.ProgramID] = append(kinds, ev.Kind)
		}
		apply(ev)
	}
	// The ring is ordered by reservation: once the last release is read,
	// every earlier event of the burst has been read too.
	record(nextEvent(t, events, eventFor(EventRelease, last), record))

	for id, kinds := range ours {
		if !slices.Equal(kinds, []EventKind{EventLoad, EventRelease}) {
			t.Errorf("events for burst program %d: %v, want [load release]", id, kinds)
		}
	}

	// Programs of earlier tests may still be going away (deferred link
	// release): keep applying events until both sides agree.
	deadline := time.After(vmEventTimeout)
	for {
		kernel := kernelProgramIDs(t)
		extra, missing := diffIDs(inventory, kernel)
		if len(extra) == 0 && len(missing) == 0 {
			t.Logf("inventory matches the kernel: %d programs", len(kernel))
			return
		}
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("event stream ended")
			}
			record(ev)
		case <-deadline:
			t.Fatalf("inventory differs from the kernel's ID walk: not in kernel %v, not in inventory %v", extra, missing)
		}
	}
}

func diffIDs(inventory, kernel map[uint32]bool) (extra, missing []uint32) {
	for id := range inventory {
		if !kernel[id] {
			extra = append(extra, id)
		}
	}
	for id := range kernel {
		if !inventory[id] {
			missing = append(missing, id)
		}
	}
	slices.Sort(extra)
	slices.Sort(missing)
	return extra, missing
}

// TestVMFentryLoaderIdentity checks what the load event says about the
// program and the task that loaded it.
func TestVMFentryLoaderIdentity(t *testing.T) {
	requireVM(t)
	src := vmFentry(t)
	events := stream(t, src)

	runtime.LockOSThread()
	tid := unix.Gettid()
	prog, info := loadSocketFilter(t, "trk_identity")
	runtime.UnlockOSThread()
	t.Cleanup(func() { prog.Close() })

	comm, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/comm", tid))
	if err != nil {
		t.Fatal(err)
	}

	ev := nextEvent(t, events, eventFor(EventLoad, info.ID), nil)
	t.Logf("load event: %+v", ev)
	if ev.PID != uint32(os.Getpid()) || ev.TID != uint32(tid) {
		t.Errorf("PID/TID = %d/%d, want %d/%d", ev.PID, ev.TID, os.Getpid(), tid)
	}
	if want := strings.TrimSuffix(string(comm), "\n"); ev.Comm != want {
		t.Errorf("Comm = %q, want %q (the loading thread)", ev.Comm, want)
	}
	if want := truncate(filepath.Base(os.Args[0]), 15); ev.Comm != want {
		t.Errorf("Comm = %q, want %q (the test binary)", ev.Comm, want)
	}
	k := newKernel(t)
	self, err := k.ReadProcess(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	// The same instant, in ns on the boot clock and in /proc's ticks.
	if got := ev.LoaderStartTime / (1e9 / ClockTicksPerSecond); got != self.StartTime {
		t.Errorf("LoaderStartTime %d ns is tick %d, want /proc's start time %d", ev.LoaderStartTime, got, self.StartTime)
	}
	if ev.Name != "trk_identity" || ev.Type != uint32(ebpf.SocketFilter) || ev.Tag != info.Tag {
		t.Errorf("name/type/tag = %q/%d/%x, want %q/%d/%x",
			ev.Name, ev.Type, ev.Tag, "trk_identity", ebpf.SocketFilter, info.Tag)
	}
	if ev.KernelTime == 0 {
		t.Error("KernelTime is 0")
	}
	if id, err := cgroupID(); err != nil {
		t.Logf("cgroup ID not checked: %v", err)
	} else if ev.CgroupID != id {
		t.Errorf("CgroupID = %d, want %d", ev.CgroupID, id)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// cgroupID returns the cgroup v2 ID of this process: the inode of its
// directory in the cgroup2 mount at /sys/fs/cgroup.
func cgroupID() (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &fs); err != nil {
		return 0, err
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, errors.New("no cgroup2 mount at /sys/fs/cgroup")
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if path, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join("/sys/fs/cgroup", path), &st); err != nil {
				return 0, err
			}
			return st.Ino, nil
		}
	}
	return 0, errors.New("no cgroup2 line in /proc/self/cgroup")
}

// TestVMStatsRise drives a raw tracepoint program with getpid and checks
// that its run count and run time rise while stats are enabled.
func TestVMStatsRise(t *testing.T) {
	requireVM(t)
	const calls = 10000

	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enabling stats: %v", err)
	}
	t.Cleanup(func() { stats.Close() })

	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "trk_sys_enter",
		Type:         ebpf.RawTracepoint,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatalf("loading raw tracepoint program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: prog})
	if err != nil {
		t.Fatalf("attaching to raw tracepoint sys_enter: %v", err)
	}
	t.Cleanup(func() { l.Close() })

	before, err := prog.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for range calls {
		syscall.Getpid()
	}
	after, err := prog.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("run count %d -> %d, run time %v -> %v", before.RunCount, after.RunCount, before.Runtime, after.Runtime)
	if after.RunCount-before.RunCount < calls {
		t.Errorf("run count rose by %d over %d getpid calls", after.RunCount-before.RunCount, calls)
	}
	if after.Runtime <= before.Runtime {
		t.Errorf("run time did not rise: %v -> %v", before.Runtime, after.Runtime)
	}

	// loader.Kernel must read the same numbers (at least as high: sys_enter
	// keeps firing).
	k, err := NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	info := new(sysProgInfo)
	if err := bpfObjInfo(prog.FD(), unsafe.Pointer(info), unsafe.Sizeof(*info)); err != nil {
		t.Fatal(err)
	}
	pi, err := k.ReadProgram(info.ID)
	if err != nil {
		t.Fatalf("Kernel.ReadProgram(%d): %v", info.ID, err)
	}
	if pi.RunCount < after.RunCount || pi.RunTime < uint64(after.Runtime) {
		t.Errorf("Kernel.ReadProgram: run count %d, run time %d; cilium read %d, %d before it",
			pi.RunCount, pi.RunTime, after.RunCount, after.Runtime)
	}
}

// TestVMOpenSourceAutoPicksFentry checks that auto prefers fentry where it
// works.
func TestVMOpenSourceAutoPicksFentry(t *testing.T) {
	requireVM(t)
	src, err := OpenSource(SourceAuto, SourceOptions{Logf: t.Logf, PollInterval: time.Second})
	if err != nil {
		t.Fatalf("OpenSource(auto): %v", err)
	}
	t.Cleanup(func() { src.Close() })
	if src.Name() != SourceFentry {
		t.Fatalf("OpenSource(auto) chose %s, want fentry", src.Name())
	}
	if _, _, ok := fentryHooks(src); !ok {
		t.Error("fentryHooks: not a fentry source")
	}
}

// TestVMFentryFallback gives hooks that attach but never fire for the
// self-test first, and checks that the source drops them for working ones.
func TestVMFentryFallback(t *testing.T) {
	requireVM(t)
	// bpf_prog_inc takes a struct bpf_prog * like the real hooks but is
	// not called when a socket filter is loaded or closed.
	const silent = "bpf_prog_inc"
	loads := append([]fentryHook{{silent, trackerProgLoadKallsymsAdd}}, fentryLoadHooks()...)
	releases := append([]fentryHook{{silent, trackerProgReleaseFreeId}}, fentryReleaseHooks()...)

	var mu sync.Mutex
	var logged []string
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		logged = append(logged, fmt.Sprintf(format, args...))
		t.Logf(format, args...)
	}
	src, err := openFentry(SourceOptions{Logf: logf}, fentryConfig{Loads: loads, Releases: releases})
	if err != nil {
		t.Fatalf("opening fentry source: %v", err)
	}
	t.Cleanup(func() { src.Close() })

	load, release := src.hooks()
	if load == silent || release == silent {
		t.Fatalf("hooks %s, %s: a hook that does not fire was kept", load, release)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, kind := range []string{"load", "release"} {
		want := "fentry: " + kind + " hook " + silent + " attached but did not fire"
		if !slices.ContainsFunc(logged, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("no log line %q in %q", want, logged)
		}
	}
	// The hooks chosen after the fallback still work.
	events := stream(t, src)
	prog, info := loadSocketFilter(t, "trk_fallback")
	prog.Close()
	nextEvent(t, events, eventFor(EventLoad, info.ID), nil)
	nextEvent(t, events, eventFor(EventRelease, info.ID), nil)
}

// TestVMFentryCloseUnblocksRead checks that Close ends a blocked Read with
// ErrClosed and is idempotent.
func TestVMFentryCloseUnblocksRead(t *testing.T) {
	requireVM(t)
	src := vmFentry(t)
	// Drain what the self-test left, then block.
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := src.Read(); err != nil {
				errc <- err
				return
			}
		}
	}()
	if err := src.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Read after Close: %v, want ErrClosed", err)
		}
	case <-time.After(vmEventTimeout):
		t.Fatal("Read still blocked after Close")
	}
	if err := src.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := src.Read(); !errors.Is(err, ErrClosed) {
		t.Errorf("Read on closed source: %v, want ErrClosed", err)
	}
}

// TestVMFentryLost overflows a one-page ring and checks that the loss is
// reported as an EventLost, counted, and that events flow again after it.
func TestVMFentryLost(t *testing.T) {
	requireVM(t)
	const cycles = 100 // 200 records; a page holds 42
	src, err := openFentry(SourceOptions{Logf: t.Logf}, fentryConfig{
		Loads: fentryLoadHooks(), Releases: fentryReleaseHooks(), RingSize: uint32(os.Getpagesize()),
	})
	if err != nil {
		t.Fatalf("opening fentry source: %v", err)
	}
	t.Cleanup(func() { src.Close() })

	ours := map[uint32]bool{}
	for range cycles {
		prog, info := loadSocketFilter(t, "trk_lost")
		prog.Close()
		ours[info.ID] = true
	}

	// Nothing read yet: the ring is full. Reading drains it, then reports
	// the loss (within fentryLostPollInterval when nothing follows).
	events := stream(t, src)
	seen := 0
	lost := nextEvent(t, events, func(ev ProgramEvent) bool { return ev.Kind == EventLost }, func(ev ProgramEvent) {
		if ours[ev.ProgramID] {
			seen++
		}
	})
	t.Logf("%d burst records read, %d lost", seen, lost.Lost)
	if lost.Lost == 0 || seen == 0 {
		t.Errorf("read %d records and lost %d, want both > 0", seen, lost.Lost)
	}
	if uint64(seen)+lost.Lost < 2*cycles {
		t.Errorf("read %d + lost %d < %d records written", seen, lost.Lost, 2*cycles)
	}

	prog, info := loadSocketFilter(t, "trk_after_lost")
	prog.Close()
	nextEvent(t, events, eventFor(EventLoad, info.ID), nil)
	nextEvent(t, events, eventFor(EventRelease, info.ID), nil)
}
