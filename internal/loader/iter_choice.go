package loader

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrFewPrograms is why a OneSweep Kernel reads through bpf(2) and /proc
// rather than the iterators (see Iterators): with few programs and few
// open files that is cheaper than loading the iterators (decoding the
// kernel's BTF, verifying them), for one sweep.
var ErrFewPrograms = errors.New("few programs and open files: bpf(2) and /proc read them faster than the iterators load, for one sweep")

// Above either bound, one sweep through the iterators costs less than
// through bpf(2) (three syscalls per program) and /proc (a readlink per
// open file of every process), loading included. Loading them (rawLoad)
// costs about 11 ms more than not; measured whole one-shots on 2 vCPUs,
// median wall times: 300 programs and 1100 open files 18 ms without the
// iterators, 23 ms with; 600 and 1800 even (22 ms); 1000 and 2800 34 ms
// without, 25 ms with.
const (
	oneSweepIterMinPrograms = 800
	oneSweepIterMinFiles    = 2500
)

// oneSweepWantsIterators reports whether one sweep is cheaper through the
// iterators: when the system has many open files (/proc/sys/fs/file-nr)
// or many programs (a BPF_PROG_GET_NEXT_ID walk, stopped at the bound).
// When it cannot tell, it says yes. When it says no, ids are every program
// ID, from the walk.
func oneSweepWantsIterators() (want bool, ids []uint32) {
	if n, ok := openFiles(); !ok || n >= oneSweepIterMinFiles {
		return true, nil
	}
	var id uint32
	for range oneSweepIterMinPrograms {
		next, err := bpfNextID(unix.BPF_PROG_GET_NEXT_ID, id)
		if err == unix.ENOENT {
			return false, ids
		}
		if err != nil {
			return true, nil
		}
		ids = append(ids, next)
		id = next
	}
	return true, nil
}

// takeWalkedIDs returns, once, the program IDs oneSweepWantsIterators
// walked for a OneSweep Kernel without iterators, so that its ProgramIDs
// does not walk them again.
func (k *Kernel) takeWalkedIDs() ([]uint32, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ids := k.walkedIDs
	k.walkedIDs = nil
	return ids, ids != nil
}

// openFiles returns the number of allocated file handles of the system,
// the first field of /proc/sys/fs/file-nr.
func openFiles() (int, bool) {
	buf := make([]byte, 128)
	data, err := readSmallFile([]byte("/proc/sys/fs/file-nr\x00"), buf)
	if err != nil {
		return 0, false
	}
	field, _, _ := bytes.Cut(bytes.TrimSpace(data), []byte("\t"))
	n, err := strconv.Atoi(string(field))
	return n, err == nil
}

// holdersResult is the outcome of a /proc walk for Holders.
type holdersResult struct {
	holders map[uint32][]uint32
	err     error
}

// startHoldersAhead starts the /proc walk of the one Holders call of a
// OneSweep Kernel without iterators on a goroutine of its own, so that it
// overlaps the sweep's program and map reads; Holders then takes its
// result. The walk leaves this process out, which Holders scans itself
// when it takes the result: meanwhile this process opens short-lived fds
// of programs for its reads, which the early walk could see. Only for the
// host's /proc (where this process's PID is its own). k.mu is held.
func (k *Kernel) startHoldersAhead() {
	if k.procRoot != "/proc" {
		return
	}
	ahead := make(chan holdersResult, 1)
	k.holdersAhead = ahead
	self := uint32(os.Getpid())
	go func() {
		// On every CPU, up to 4: the walk, not the reads, is the
		// one-shot's longest chain.
		holders, err := holdersParallel("/proc", min(runtime.GOMAXPROCS(0), 4), self)
		ahead <- holdersResult{holders, err}
	}()
}

// takeHoldersAhead waits for the walk startHoldersAhead started, once,
// adds this process's own program fds, and returns the holders; false
// when there is none or it failed (the caller then walks again). k.mu is
// held, so no read of this Kernel has an fd open.
func (k *Kernel) takeHoldersAhead() (map[uint32][]uint32, bool) {
	if k.holdersAhead == nil {
		return nil, false
	}
	r := <-k.holdersAhead
	k.holdersAhead = nil
	if r.err != nil {
		return nil, false
	}
	if err := k.walker.holdersOf(k.procRoot, uint32(os.Getpid()), r.holders); err != nil {
		return nil, false
	}
	sortHolders(r.holders)
	return r.holders, true
}
