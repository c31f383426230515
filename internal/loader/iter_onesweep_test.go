package loader

import (
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/bpfstats/tracker/internal/testutil"
)

// TestIterOneSweepReadsOnce checks that a OneSweep Kernel runs each
// iterator once, at load: its program list, program reads and holders
// are one consistent view as of the load, agreeing with bpf(2), and a
// program loaded afterwards shows only in the live single reads.
func TestIterOneSweepReadsOnce(t *testing.T) {
	_, syscalls := iterKernels(t)
	progs := iterFixture(t, 4)
	k, err := NewKernelWithOptions(KernelOptions{OneSweep: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	// Loaded here whatever the program count (see oneSweepWantsIterators).
	k.mu.Lock()
	k.iters = loadIterators(true, true)
	k.mu.Unlock()
	perr, herr := k.Iterators()
	testutil.SkipIfUnsupported(t, perr, "iter/bpf_prog")
	testutil.SkipIfUnsupported(t, herr, "iter/task_file")
	if k.iters.progStats != nil || k.iters.progs.kept == nil || k.iters.files.kept == nil {
		t.Fatalf("OneSweep iterators: stats iterator %v, kept outputs %d and %d bytes",
			k.iters.progStats != nil, len(k.iters.progs.kept), len(k.iters.files.kept))
	}
	ids := make([]uint32, len(progs))
	for i, p := range progs {
		ids[i] = programIDOf(t, p)
	}
	late := iterFixture(t, 1)
	lateID := programIDOf(t, late[0])

	listed, err := k.ProgramIDs()
	if err != nil {
		t.Fatal(err)
	}
	var read []uint32
	if err := k.ReadAllPrograms(nil, func(id uint32, _ *ProgramInfo, err error) {
		if err != nil {
			t.Errorf("program %d: %v", id, err)
		}
		read = append(read, id)
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(listed, read) {
		t.Errorf("ProgramIDs %v, ReadAllPrograms read %v", listed, read)
	}
	own := iteratorProgramIDs(k)
	for _, id := range append(slices.Clone(ids), own...) {
		if !slices.Contains(listed, id) {
			t.Errorf("program %d not listed in %v", id, listed)
		}
	}
	if slices.Contains(listed, lateID) {
		t.Errorf("program %d, loaded after the iterators, listed: the iterator ran again", lateID)
	}
	if _, err := k.ReadProgram(lateID); err != nil {
		t.Errorf("single read of program %d: %v", lateID, err)
	}
	compareReads(t, k, syscalls, ids)

	holders, err := k.Holders()
	if err != nil {
		t.Fatal(err)
	}
	self := uint32(os.Getpid())
	for _, id := range append(ids, own...) {
		if !slices.Contains(holders[id], self) {
			t.Errorf("program %d: holders %v lack this process %d", id, holders[id], self)
		}
	}
}

// TestHoldersAheadAgrees checks that the early /proc walk of a OneSweep
// Kernel without iterators finds what a walk at the time of Holders
// finds: this process and a child holding programs, this process's own
// fds scanned when Holders runs.
func TestHoldersAheadAgrees(t *testing.T) {
	testutil.RequireRoot(t)
	syscalls, err := NewKernelWithOptions(KernelOptions{NoIterators: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscalls.Close() })
	k, err := NewKernelWithOptions(KernelOptions{OneSweep: true, NoIterators: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	progs := iterFixture(t, 2)
	cmd := holdInChild(t, progs[0])
	// The child holds the program once it runs sleep: wait until a walk
	// at this moment sees it.
	first := programIDOf(t, progs[0])
	for {
		h, err := syscalls.Holders()
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(h[first], uint32(cmd.Process.Pid)) {
			break
		}
	}

	k.mu.Lock()
	k.startHoldersAhead()
	k.mu.Unlock()
	if k.holdersAhead == nil {
		t.Fatal("no early walk started")
	}
	got, err := k.Holders()
	if err != nil {
		t.Fatal(err)
	}
	want, err := syscalls.Holders()
	if err != nil {
		t.Fatal(err)
	}
	checkHolders(t, "early walk", "walk now", got, want, progs, 1, uint32(cmd.Process.Pid))
	if k.holdersAhead != nil {
		t.Error("early walk not taken")
	}
}

// TestOneSweepChoice checks the inputs of the choice between iterators
// and bpf(2): the open file count is readable, and a OneSweep Kernel
// either loads the iterators or says why not.
func TestOneSweepChoice(t *testing.T) {
	testutil.RequireRoot(t)
	if n, ok := openFiles(); !ok || n <= 0 {
		t.Fatalf("openFiles() = %d, %v", n, ok)
	}
	progs := iterFixture(t, 2)
	before := 0
	k, err := NewKernelWithOptions(KernelOptions{OneSweep: true, BeforeIterators: func() { before++ }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	perr, herr := k.Iterators()
	k.Iterators()
	if want, _ := oneSweepWantsIterators(); want {
		testutil.SkipIfUnsupported(t, perr, "iter/bpf_prog")
		if k.mapsAhead == nil {
			t.Error("iterators loaded without the early read of the maps")
		}
		if before != 1 {
			t.Errorf("BeforeIterators called %d times for iterators loaded, want once", before)
		}
		return
	}
	if before != 0 {
		t.Errorf("few programs: BeforeIterators called %d times, want never", before)
	}
	if k.mapsAhead != nil {
		t.Error("few programs: the maps are read early, which only slows the /proc walk down")
	}
	if !errors.Is(perr, ErrFewPrograms) || !errors.Is(herr, ErrFewPrograms) {
		t.Errorf("few programs, Iterators() = %v, %v; want ErrFewPrograms", perr, herr)
	}
	// ProgramIDs takes the IDs of the choice's walk, once.
	ids, err := k.ProgramIDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range progs {
		if id := programIDOf(t, p); !slices.Contains(ids, id) {
			t.Errorf("ProgramIDs() = %v lacks program %d", ids, id)
		}
	}
	if _, ok := k.takeWalkedIDs(); ok {
		t.Error("walked IDs still kept after ProgramIDs")
	}
}

// With many open files a OneSweep Kernel loads its iterators, and calls
// BeforeIterators once, before it does.
func TestOneSweepBeforeIterators(t *testing.T) {
	testutil.RequireRoot(t)
	n, ok := openFiles()
	if !ok {
		t.Fatal("open file count unreadable")
	}
	// Each open makes a file (a dup would not count).
	for range max(oneSweepIterMinFiles-n+100, 0) {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatalf("opening %d files to pass the bound of %d: %v (RLIMIT_NOFILE?)", oneSweepIterMinFiles-n+100, oneSweepIterMinFiles, err)
		}
		t.Cleanup(func() { f.Close() })
	}
	calls, loadedBefore := 0, false
	var k *Kernel
	k, err := NewKernelWithOptions(KernelOptions{OneSweep: true, BeforeIterators: func() {
		calls++
		loadedBefore = k.iters != nil // k's lock is held: this goroutine's
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	perr, _ := k.Iterators()
	k.Iterators()
	if calls != 1 || loadedBefore {
		t.Errorf("BeforeIterators called %d times (iterators already loaded: %v), want once, before", calls, loadedBefore)
	}
	testutil.SkipIfUnsupported(t, perr, "iter/bpf_prog")
	if errors.Is(perr, ErrFewPrograms) {
		t.Errorf("%d open files: Iterators() = %v", oneSweepIterMinFiles+100, perr)
	}
}
