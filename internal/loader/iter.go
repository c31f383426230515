package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Layout of the iterator output (keep in sync with bpf/iter.bpf.c).
const (
	// iterProgHeaderSize is struct iter_prog_record up to map_ids.
	iterProgHeaderSize = 68
	// iterMaxMapIDs is ITER_MAX_MAP_IDS: a program using more maps is
	// re-read with bpf(2).
	iterMaxMapIDs = 64
	// iterMaxCPUs is ITER_MAX_CPUS.
	iterMaxCPUs = 1024
	// iterFDRecordSize is struct iter_fd_record.
	iterFDRecordSize = 8
)

// errProgramGone is what ReadPrograms reports for a program the
// iterator no longer lists.
var errProgramGone = fmt.Errorf("program is gone: %w", os.ErrNotExist)

// bpfIter is one attached BPF iterator.
type bpfIter struct {
	prog *ebpf.Program
	link *link.Iter
	// id is the iterator program's own ID, for the self-checks.
	id uint32
	// kept, when not nil, is the output of the self-check's run, which
	// every read returns instead of running the iterator again: a
	// OneSweep Kernel's one sweep reads the programs and their holders
	// as of the iterators' load, one run of each iterator in all.
	kept []byte
}

// attachIter attaches prog as an iterator and takes ownership of it.
func attachIter(prog *ebpf.Program) (*bpfIter, error) {
	l, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		prog.Close()
		return nil, fmt.Errorf("attaching iterator: %w", err)
	}
	id, err := programFDIDOf(prog.FD())
	if err != nil {
		l.Close()
		prog.Close()
		return nil, err
	}
	return &bpfIter{prog: prog, link: l, id: id}, nil
}

// programFDIDOf returns the ID of the program behind fd.
func programFDIDOf(fd int) (uint32, error) {
	info := new(sysProgInfo)
	if err := bpfObjInfo(fd, unsafe.Pointer(info), unsafe.Sizeof(*info)); err != nil {
		return 0, fmt.Errorf("reading iterator program info: %w", err)
	}
	return info.ID, nil
}

// read runs the iterator once and returns its whole output in buf's
// storage, grown as needed. Each read(2) of an iterator returns at most
// one seq_file buffer (8 pages), so a large output takes several.
func (it *bpfIter) read(buf []byte) ([]byte, error) {
	return it.readChunks(buf, 0, nil)
}

// holdersChunk is the size of one read(2) of the task_file iterator: the
// kernel visits files until it has this much output (512 program fds),
// about a millisecond at thousands of programs, so a single read waits
// at most that long for a holders scan (see readUnlocking).
const holdersChunk = 4096

// readUnlocking is read in read(2)s of holdersChunk bytes, with mu, which
// the caller holds, unlocked between them: the single reads that mu
// serializes (ReadProgram for a load event) then wait for one chunk, not
// for the whole scan. No read of the Kernel holds a short-lived program
// fd of its own while it does not hold mu, so none can show up as a
// holder of the tracker's in any chunk.
func (it *bpfIter) readUnlocking(buf []byte, mu sync.Locker) ([]byte, error) {
	return it.readChunks(buf, holdersChunk, mu)
}

// readChunks is read with each read(2) asking for at most limit bytes (0:
// all the room buf has) and, when mu is not nil, mu let go between them.
func (it *bpfIter) readChunks(buf []byte, limit int, mu sync.Locker) ([]byte, error) {
	if it.kept != nil {
		return it.kept, nil
	}
	fd, err := it.open()
	if err != nil {
		return buf[:0], err
	}
	defer unix.Close(fd)
	grow := max(8*os.Getpagesize(), limit)
	buf = buf[:0]
	for {
		if cap(buf)-len(buf) < grow {
			buf = slices.Grow(buf, max(grow, cap(buf)))
		}
		end := cap(buf)
		if limit > 0 {
			end = len(buf) + limit
		}
		n, err := unix.Read(fd, buf[len(buf):end])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return buf, fmt.Errorf("reading iterator: %w", err)
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
		if mu != nil {
			mu.Unlock()
			runtime.Gosched() // a waiter may take it before we do
			mu.Lock()
		}
	}
}

// open starts a run of the iterator: read(2) on the fd returned reads its
// output, which the caller closes.
func (it *bpfIter) open() (int, error) {
	attr := sysIterCreateAttr{LinkFD: uint32(it.link.FD())}
	fd, err := bpfSyscall(unix.BPF_ITER_CREATE, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return -1, fmt.Errorf("creating iterator: %w", err)
	}
	return fd, nil
}

func (it *bpfIter) close() error {
	if it == nil {
		return nil
	}
	return errors.Join(it.link.Close(), it.prog.Close())
}

// iterators are the BPF iterators a Kernel reads through, each with the
// reason when it is not in use.
type iterators struct {
	// progs lists every program with its map IDs, progStats without;
	// progStats is loaded only with progs, and not for a OneSweep Kernel.
	progs, progStats   *bpfIter
	files              *bpfIter
	progsErr, filesErr error
	// maps lists every map (ReadMaps); nil when it did not load
	// (mapsErr says why), and the maps are read with bpf(2) alone.
	maps    *bpfIter
	mapsErr error
	// ahead is a OneSweep Kernel's early read of every map, which uses
	// maps: close waits for it.
	ahead *mapsAhead
	// rawErr is why the iterators were loaded through cilium/ebpf rather
	// than rawLoad (nil when all went through rawLoad).
	rawErr error
}

func (its *iterators) close() error {
	if its.ahead != nil {
		<-its.ahead.done
	}
	err := errors.Join(its.progs.close(), its.progStats.close(), its.files.close(), its.maps.close())
	its.progs, its.progStats, its.files, its.maps = nil, nil, nil, nil
	return err
}

// errIteratorsOff is the reason given when a Kernel was told not to use
// iterators.
var errIteratorsOff = errors.New("iterators turned off")

// loadIterators loads and checks the iterators. withFiles is false when
// Holders must read a /proc other than the host's. oneSweep is
// KernelOptions.OneSweep: the iterator without map IDs is not loaded, and
// the others keep the output of their checks for the reads of the one
// sweep (see bpfIter.kept). All are loaded before any program or file is
// checked, so that every check lists all of them. The loads share what
// they need of the kernel BTF (scanned once, first: see iterLoader) and
// run at the same time, as do the checks: most of a load is the kernel's
// verifier, which then keeps every CPU busy rather than one.
func loadIterators(withFiles, oneSweep bool) *iterators {
	its := &iterators{progsErr: errIteratorsOff, filesErr: errIteratorsOff, mapsErr: errIteratorsOff}
	spec, err := loadIter()
	if err != nil {
		err = fmt.Errorf("loading iterator object: %w", err)
		its.progsErr, its.filesErr, its.mapsErr = err, err, err
		return its
	}
	ld := newIterLoader(spec, vmlinuxBTFPath)
	var wg sync.WaitGroup
	wg.Go(func() {
		its.maps, its.mapsErr = loadMapIter(spec, ld, oneSweep)
		if oneSweep {
			its.ahead = startMapsAhead(its.maps)
		}
	})
	wg.Go(func() { its.progs, its.progStats, its.progsErr = loadProgIters(spec, ld, !oneSweep) })
	if withFiles {
		wg.Go(func() { its.files, its.filesErr = loadFileIter(spec, ld) })
	} else {
		its.filesErr = errors.New("proc root is not /proc")
	}
	wg.Wait()
	its.rawErr = ld.rawError()
	var filesData []byte
	wg.Go(func() {
		if its.progsErr == nil {
			if err := checkProgIters(its.progs, its.progStats, oneSweep); err != nil {
				its.progs, its.progStats, its.progsErr = nil, nil, err
			}
		}
	})
	wg.Go(func() {
		if its.files == nil {
			return
		}
		data, err := checkFileIter(its.files)
		if err != nil {
			its.files.close()
			its.files, its.filesErr = nil, fmt.Errorf("iter/task_file self-check: %w", err)
		}
		filesData = data
	})
	wg.Wait()
	// Not when the program iterators were closed meanwhile: the output
	// would list them.
	if its.files != nil && oneSweep && its.progsErr == nil {
		its.files.kept = filesData
	}
	return its
}

// loadFileIter loads and attaches iter/task_file (checkFileIter checks
// it). Requires Linux 5.8
// (task_file iterators) and 6.2 (bpf_rdonly_cast).
func loadFileIter(spec *ebpf.CollectionSpec, ld *iterLoader) (*bpfIter, error) {
	progs, err := ld.load(spec.Copy(), "dump_prog_fds")
	if err != nil {
		return nil, fmt.Errorf("loading iter/task_file: %w", err)
	}
	it, err := attachIter(progs[0])
	if err != nil {
		return nil, fmt.Errorf("iter/task_file: %w", err)
	}
	return it, nil
}

// possibleCPUs parses /sys/devices/system/cpu/possible.
func possibleCPUs() ([]int, error) {
	raw, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return nil, fmt.Errorf("reading possible CPUs: %w", err)
	}
	cpus, err := parseCPUList(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("parsing possible CPUs %q: %w", raw, err)
	}
	return cpus, nil
}

// parseIterHolders adds the (PID, program) pairs of an iter/task_file
// output to holders, each PID once per program.
func parseIterHolders(data []byte, holders map[uint32][]uint32) {
	ne := binary.NativeEndian
	for ; len(data) >= iterFDRecordSize; data = data[iterFDRecordSize:] {
		pid, id := ne.Uint32(data[0:]), ne.Uint32(data[4:])
		if pid == 0 || id == 0 {
			continue
		}
		pids := holders[id]
		if slices.Contains(pids, pid) {
			continue // another fd, or another thread with its own fd table
		}
		holders[id] = append(pids, pid)
	}
}

// loadedIterators returns the Kernel's iterators, loading them on first
// use. It returns nil when they are turned off or the Kernel is closed.
func (k *Kernel) loadedIterators() *iterators {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.loadedIteratorsLocked()
}

// loadedIteratorsLocked is loadedIterators with k.mu held.
func (k *Kernel) loadedIteratorsLocked() *iterators {
	if k.iters == nil && !k.closed && !k.opts.NoIterators {
		want := true
		if k.opts.OneSweep {
			want, k.walkedIDs = oneSweepWantsIterators()
		}
		if want {
			if k.opts.OneSweep && k.opts.BeforeIterators != nil {
				k.opts.BeforeIterators()
			}
			k.iters = loadIterators(k.procRoot == "/proc", k.opts.OneSweep)
			k.mapsAhead = k.iters.ahead
		} else {
			k.iters = &iterators{progsErr: ErrFewPrograms, filesErr: ErrFewPrograms}
			k.startHoldersAhead()
		}
	}
	return k.iters
}

// IteratorLoadFallback reports why the iterators that loaded went through
// cilium/ebpf's decoding of the whole kernel BTF (about 20 ms more) rather
// than the tracker's own scan of it, or nil when they did not (or none
// loaded). It loads them when not done yet.
func (k *Kernel) IteratorLoadFallback() error {
	its := k.loadedIterators()
	if its == nil || its.progs == nil && its.files == nil && its.maps == nil {
		return nil
	}
	return its.rawErr
}

// Iterators loads the BPF iterators when not done yet and reports, for
// the program stats reads (ReadPrograms) and for Holders, nil when the
// iterator is in use or why the bpf(2) and /proc fallback is used
// instead. The iterators are programs themselves: until Close they are
// listed like any other, held by this process. Requires Linux 6.2.
func (k *Kernel) Iterators() (programs, holders error) {
	its := k.loadedIterators()
	if its == nil {
		if k.opts.NoIterators {
			return errIteratorsOff, errIteratorsOff
		}
		return ErrClosed, ErrClosed
	}
	return its.progsErr, its.filesErr
}

// holdersIter returns the holders of one run of the task_file iterator
// in a map sized for it (lastHolders programs, or for the run's records
// when lastHolders is 0: the first sweep), or false when the iterator is
// not in use or failed. k.mu and k.holdersMu are held; k.mu is let go
// between the iterator's reads (see readUnlocking).
func (k *Kernel) holdersIter() (map[uint32][]uint32, bool) {
	its := k.loadedIteratorsLocked()
	if its == nil || its.files == nil {
		return nil, false
	}
	data, err := its.files.readUnlocking(k.fileBuf, &k.mu)
	k.fileBuf = data[:0]
	if err != nil {
		return nil, false
	}
	size := k.lastHolders
	if size == 0 {
		size = len(data) / iterFDRecordSize
	}
	holders := make(map[uint32][]uint32, size)
	parseIterHolders(data, holders)
	return holders, true
}
