package loader

import (
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// countingLocker is a sync.Locker that counts how often it was let go.
type countingLocker struct {
	mu      sync.Mutex
	unlocks int
	held    bool
}

func (l *countingLocker) Lock()   { l.mu.Lock(); l.held = true }
func (l *countingLocker) Unlock() { l.held = false; l.unlocks++; l.mu.Unlock() }

// A holders scan longer than one chunk lets go of the Kernel's lock
// between its reads, so that a load event's ReadProgram waits for one
// chunk, not the whole scan; and the ReadProgram calls made meanwhile
// (each with a short-lived fd of this process) never make this process a
// holder of a program only a child holds.
func TestHoldersChunkedScan(t *testing.T) {
	iter, _ := iterKernels(t)
	progs := iterFixture(t, 3*holdersChunk/iterFDRecordSize)
	only := progs[0]
	id := programIDOf(t, only)
	cmd := holdInChild(t, only)
	only.Close() // now held by the child alone

	its := iter.loadedIterators()
	var l countingLocker
	l.Lock()
	data, err := its.files.readUnlocking(nil, &l)
	if err != nil {
		t.Fatal(err)
	}
	if !l.held {
		t.Fatal("readUnlocking returned without the lock")
	}
	l.Unlock()
	if chunks := len(data) / holdersChunk; l.unlocks-1 < chunks {
		t.Errorf("scan of %d bytes let go of the lock %d times, want at least %d", len(data), l.unlocks-1, chunks)
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if _, err := iter.ReadProgram(id); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	want := []uint32{uint32(cmd.Process.Pid)}
	for range 20 {
		holders, err := iter.Holders()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(holders[id], want) {
			t.Fatalf("holders of program %d = %v, want only the child %v", id, holders[id], want)
		}
	}
}

// holdInChild starts a child process holding a copy of prog's fd until
// the test ends.
func holdInChild(t *testing.T, prog *ebpf.Program) *exec.Cmd {
	t.Helper()
	dup, err := unix.FcntlInt(uintptr(prog.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "prog")
	cmd := exec.Command("sleep", "30")
	cmd.ExtraFiles = []*os.File{f}
	err = cmd.Start()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}
