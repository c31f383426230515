package loader

import (
	"os"
	"os/exec"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testutil"
)

// holdManyInChild starts a child process holding n fds of progs, in turn,
// until the test ends.
func holdManyInChild(t *testing.T, progs []*ebpf.Program, n int) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	for i := range n {
		dup, err := unix.FcntlInt(uintptr(progs[i%len(progs)].FD()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(dup), "prog")
		defer f.Close()
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// The parallel walk finds what the sequential one does, with 1 to 3
// workers, for a process whose fds are shared out in several chunks:
// each program held once per process, in sorted PID lists.
func TestHoldersParallelAgrees(t *testing.T) {
	testutil.RequireRoot(t)
	progs := iterFixture(t, 3)
	cmd := holdManyInChild(t, progs[:2], 3*walkChunk+10)
	child := uint32(cmd.Process.Pid)
	// The child holds the fds once exec'd: wait until a walk sees them.
	want := map[uint32][]uint32{}
	for !slices.Contains(want[programIDOf(t, progs[1])], child) {
		want = map[uint32][]uint32{}
		w := newProcWalker()
		if err := w.holders("/proc", want, 0); err != nil {
			t.Fatal(err)
		}
	}
	sortHolders(want)
	for workers := 1; workers <= 3; workers++ {
		got, err := holdersParallel("/proc", workers, 0)
		if err != nil {
			t.Fatal(err)
		}
		checkHolders(t, "parallel walk", "sequential walk", got, want, progs, 2, child)
		for id, pids := range got {
			if !slices.IsSorted(pids) || len(slices.Compact(slices.Clone(pids))) != len(pids) {
				t.Errorf("%d workers: program %d held by %v: not sorted, or repeated", workers, id, pids)
			}
		}
	}
	// A process skipped is not walked.
	got, err := holdersParallel("/proc", 2, child)
	if err != nil {
		t.Fatal(err)
	}
	if id := programIDOf(t, progs[0]); slices.Contains(got[id], child) {
		t.Errorf("skipped child found holding program %d: %v", id, got[id])
	}
}
