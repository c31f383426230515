package loader

import (
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
