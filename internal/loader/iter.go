package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
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
	attr := sysIterCreateAttr{LinkFD: uint32(it.link.FD())}
	fd, err := bpfSyscall(unix.BPF_ITER_CREATE, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return buf[:0], fmt.Errorf("creating iterator: %w", err)
	}
	defer unix.Close(fd)
	chunk := 8 * os.Getpagesize()
	buf = buf[:0]
	for {
		if cap(buf)-len(buf) < chunk {
			buf = slices.Grow(buf, max(chunk, cap(buf)))
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
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
	}
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
	progs, files       *bpfIter
	progsErr, filesErr error
}

func (its *iterators) close() error {
	err := errors.Join(its.progs.close(), its.files.close())
	its.progs, its.files = nil, nil
	return err
}

// errIteratorsOff is the reason given when a Kernel was told not to use
// iterators.
var errIteratorsOff = errors.New("iterators turned off")

// loadIterators loads and checks both iterators. withFiles is false when
// Holders must read a /proc other than the host's.
func loadIterators(withFiles bool, cache *btf.Cache) *iterators {
	its := &iterators{progsErr: errIteratorsOff, filesErr: errIteratorsOff}
	if cache == nil {
		cache = btf.NewCache()
	}
	opts := &ebpf.CollectionOptions{Cache: cache}
	spec, err := loadIter()
	if err != nil {
		err = fmt.Errorf("loading iterator object: %w", err)
		its.progsErr, its.filesErr = err, err
		return its
	}
	its.progs, its.progsErr = loadProgIter(spec, opts)
	if withFiles {
		its.files, its.filesErr = loadFileIter(spec, opts)
	} else {
		its.filesErr = errors.New("proc root is not /proc")
	}
	return its
}

// loadProgIter loads and checks iter/bpf_prog. Requires Linux 5.8
// (bpf_prog iterators), 5.19 (bpf_map_lookup_percpu_elem) and 6.2
// (bpf_rdonly_cast).
func loadProgIter(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) (*bpfIter, error) {
	spec = spec.Copy()
	cpus, err := possibleCPUs()
	if err != nil {
		return nil, err
	}
	if len(cpus) > iterMaxCPUs {
		return nil, fmt.Errorf("%d possible CPUs, iterator handles %d", len(cpus), iterMaxCPUs)
	}
	var list [iterMaxCPUs]uint32
	for i, cpu := range cpus {
		list[i] = uint32(cpu)
	}
	if err := spec.Variables["nr_possible_cpus"].Set(uint32(len(cpus))); err != nil {
		return nil, fmt.Errorf("setting nr_possible_cpus: %w", err)
	}
	if err := spec.Variables["possible_cpus"].Set(list); err != nil {
		return nil, fmt.Errorf("setting possible_cpus: %w", err)
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"dump_progs"`
	}
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		return nil, fmt.Errorf("loading iter/bpf_prog: %w", err)
	}
	it, err := attachIter(objs.Prog)
	if err != nil {
		return nil, fmt.Errorf("iter/bpf_prog: %w", err)
	}
	if err := checkProgIter(it); err != nil {
		it.close()
		return nil, fmt.Errorf("iter/bpf_prog self-check: %w", err)
	}
	return it, nil
}

// checkProgIter compares the iterator's record of its own program with
// what bpf(2) says of it.
func checkProgIter(it *bpfIter) error {
	data, err := it.read(nil)
	if err != nil {
		return err
	}
	var got ProgramInfo
	found := false
	err = walkIterProgs(data, func(rec []byte) {
		if binary.NativeEndian.Uint32(rec) == it.id {
			parseIterProg(rec, &got, nil)
			found = true
		}
	})
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("own program %d not listed", it.id)
	}
	want := new(sysProgInfo)
	if err := bpfObjInfo(it.prog.FD(), unsafe.Pointer(want), unsafe.Sizeof(*want)); err != nil {
		return fmt.Errorf("reading own program info: %w", err)
	}
	if got.Type != want.Type || got.Tag != want.Tag || got.LoadTime != want.LoadTime ||
		got.Name != string(cString(want.Name[:])) || uint32(len(got.MapIDs)) != want.NrMapIDs {
		return fmt.Errorf("iterator says type %d tag %x load time %d name %q %d maps, bpf(2) says %d %x %d %q %d",
			got.Type, got.Tag, got.LoadTime, got.Name, len(got.MapIDs),
			want.Type, want.Tag, want.LoadTime, cString(want.Name[:]), want.NrMapIDs)
	}
	return nil
}

// loadFileIter loads and checks iter/task_file. Requires Linux 5.8
// (task_file iterators) and 6.2 (bpf_rdonly_cast).
func loadFileIter(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) (*bpfIter, error) {
	var objs struct {
		Prog *ebpf.Program `ebpf:"dump_prog_fds"`
	}
	if err := spec.Copy().LoadAndAssign(&objs, opts); err != nil {
		return nil, fmt.Errorf("loading iter/task_file: %w", err)
	}
	it, err := attachIter(objs.Prog)
	if err != nil {
		return nil, fmt.Errorf("iter/task_file: %w", err)
	}
	if err := checkFileIter(it); err != nil {
		it.close()
		return nil, fmt.Errorf("iter/task_file self-check: %w", err)
	}
	return it, nil
}

// checkFileIter checks that the iterator finds this process holding the
// iterator's own program. It fails where the program files are not
// recognised, or where this process is in another PID namespace than
// the kernel's (the iterator reports global PIDs).
func checkFileIter(it *bpfIter) error {
	data, err := it.read(nil)
	if err != nil {
		return err
	}
	holders := make(map[uint32][]uint32)
	parseIterHolders(data, holders)
	if !slices.Contains(holders[it.id], uint32(os.Getpid())) {
		return fmt.Errorf("this process (PID %d) not found holding program %d (holders %v): another PID namespace?",
			os.Getpid(), it.id, holders[it.id])
	}
	return nil
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

// walkIterProgs calls fn with each record of an iter/bpf_prog output.
func walkIterProgs(data []byte, fn func(rec []byte)) error {
	for len(data) > 0 {
		rec, rest, err := nextIterProg(data)
		if err != nil {
			return err
		}
		fn(rec)
		data = rest
	}
	return nil
}

// nextIterProg splits the first record off a non-empty iter/bpf_prog output.
func nextIterProg(data []byte) (rec, rest []byte, err error) {
	if len(data) < iterProgHeaderSize {
		return nil, nil, fmt.Errorf("iterator output: %d trailing bytes", len(data))
	}
	n := min(binary.NativeEndian.Uint32(data[64:]), iterMaxMapIDs)
	size := iterProgHeaderSize + 4*int(n)
	if len(data) < size {
		return nil, nil, fmt.Errorf("iterator output: record of %d bytes, %d left", size, len(data))
	}
	return data[:size], data[size:], nil
}

// parseIterProg fills info from one iter/bpf_prog record. MapIDs reuses
// info's storage; names, when not nil, interns the name. It reports
// false when the program has more maps than the record holds.
func parseIterProg(rec []byte, info *ProgramInfo, names *nameCache) bool {
	ne := binary.NativeEndian
	info.ID = ne.Uint32(rec[0:])
	info.Type = ne.Uint32(rec[4:])
	copy(info.Tag[:], rec[8:16])
	info.LoadTime = ne.Uint64(rec[16:])
	info.RunTime = ne.Uint64(rec[24:])
	info.RunCount = ne.Uint64(rec[32:])
	info.RecursionMisses = ne.Uint64(rec[40:])
	name := cString(rec[48:64])
	if names != nil {
		info.Name = names.intern(name)
	} else {
		info.Name = string(name)
	}
	nr := ne.Uint32(rec[64:])
	info.MapIDs = info.MapIDs[:0]
	for off := iterProgHeaderSize; off+4 <= len(rec); off += 4 {
		info.MapIDs = append(info.MapIDs, ne.Uint32(rec[off:]))
	}
	return nr <= iterMaxMapIDs
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

// nameCache interns program names, so that reading the same programs
// every sweep does not allocate their names again.
type nameCache struct {
	m    map[string]string
	last string // programs listed together often share a name
}

// nameCacheMax bounds a nameCache; it starts over when full.
const nameCacheMax = 1 << 14

func (c *nameCache) intern(b []byte) string {
	if string(b) == c.last {
		return c.last
	}
	s, ok := c.m[string(b)]
	if !ok {
		if c.m == nil || len(c.m) >= nameCacheMax {
			c.m = make(map[string]string)
		}
		s = string(b)
		c.m[s] = s
	}
	c.last = s
	return s
}

// idSet is a reusable set of IDs: a bitmap over their range when it is
// small, a map otherwise.
type idSet struct {
	base uint32
	bits []uint64
	m    map[uint32]struct{}
}

// idSetMaxRange is the widest ID range kept as a bitmap (512 KiB).
const idSetMaxRange = 1 << 22

func (s *idSet) reset(ids []uint32) {
	s.m = nil
	if len(ids) == 0 {
		s.bits = s.bits[:0]
		return
	}
	lo, hi := slices.Min(ids), slices.Max(ids)
	if hi-lo >= idSetMaxRange {
		s.bits = s.bits[:0]
		s.m = make(map[uint32]struct{}, len(ids))
		for _, id := range ids {
			s.m[id] = struct{}{}
		}
		return
	}
	words := int((hi-lo)/64 + 1)
	if cap(s.bits) < words {
		s.bits = make([]uint64, words)
	} else {
		s.bits = s.bits[:words]
		clear(s.bits)
	}
	s.base = lo
	for _, id := range ids {
		off := id - lo
		s.bits[off/64] |= 1 << (off % 64)
	}
}

// take removes id and reports whether it was in the set.
func (s *idSet) take(id uint32) bool {
	if s.m != nil {
		_, ok := s.m[id]
		delete(s.m, id)
		return ok
	}
	if id < s.base {
		return false
	}
	off := id - s.base
	w := int(off / 64)
	if w >= len(s.bits) {
		return false
	}
	bit := uint64(1) << (off % 64)
	ok := s.bits[w]&bit != 0
	s.bits[w] &^= bit
	return ok
}

// has reports whether id is in the set.
func (s *idSet) has(id uint32) bool {
	if s.m != nil {
		_, ok := s.m[id]
		return ok
	}
	if id < s.base {
		return false
	}
	off := id - s.base
	w := int(off / 64)
	return w < len(s.bits) && s.bits[w]&(1<<(off%64)) != 0
}

// loadedIterators returns the Kernel's iterators, loading them on first
// use. It returns nil when they are turned off or the Kernel is closed.
func (k *Kernel) loadedIterators() *iterators {
	k.iterMu.Lock()
	defer k.iterMu.Unlock()
	if k.iters == nil && !k.closed && !k.opts.NoIterators {
		k.iters = loadIterators(k.procRoot == "/proc", k.opts.BTF)
	}
	return k.iters
}

// Iterators loads the BPF iterators when not done yet and reports, for
// the program stats reads (ReadPrograms) and for Holders, nil when the
// iterator is in use or why the bpf(2) and /proc fallback is used
// instead. Requires Linux 6.2.
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

// Close releases the BPF iterators. The Kernel stays usable, reading
// through bpf(2) and /proc only. Close is idempotent.
func (k *Kernel) Close() error {
	k.iterMu.Lock()
	defer k.iterMu.Unlock()
	k.closed = true
	if k.iters == nil {
		return nil
	}
	err := k.iters.close()
	k.iters = nil
	if err != nil {
		return fmt.Errorf("closing BPF iterators: %w", err)
	}
	return nil
}

// ReadPrograms reads every program of ids and calls fn once per ID, with
// its info or an error wrapping os.ErrNotExist when the program is gone.
// info is only valid during the call, and fn must not call ReadPrograms.
//
// Where the bpf_prog iterator loads (see Iterators), all programs are read
// with one iterator run, a few read(2) calls in all; otherwise, and for a
// program with more than 64 maps, with three bpf(2) calls per program as
// ReadProgram does. Both give the same results. ids is not modified.
func (k *Kernel) ReadPrograms(ids []uint32, fn func(id uint32, info *ProgramInfo, err error)) error {
	k.batchMu.Lock()
	defer k.batchMu.Unlock()

	var it *bpfIter
	if its := k.loadedIterators(); its != nil {
		it = its.progs
	}
	if it == nil || len(ids) == 0 {
		k.readProgramsSyscall(ids, fn)
		return nil
	}
	data, err := it.read(k.progBuf)
	k.progBuf = data[:0]
	if err != nil {
		// Nothing was delivered yet: the fallback reads them all.
		k.readProgramsSyscall(ids, fn)
		return nil
	}
	set := &k.wanted
	set.reset(ids)
	info := &k.batchInfo
	var cut error
	for rest := data; len(rest) > 0; {
		var rec []byte
		if rec, rest, cut = nextIterProg(rest); cut != nil {
			break
		}
		id := binary.NativeEndian.Uint32(rec)
		if !set.take(id) {
			continue
		}
		if !parseIterProg(rec, info, &k.names) {
			// More maps than the record holds.
			err := k.ReadProgramInto(id, info)
			fn(id, info, err)
			continue
		}
		fn(id, info, nil)
	}
	for _, id := range ids {
		if !set.take(id) {
			continue
		}
		if cut != nil {
			// The output was cut short: read the rest one by one.
			err := k.ReadProgramInto(id, info)
			fn(id, info, err)
			continue
		}
		*info = ProgramInfo{MapIDs: info.MapIDs[:0]}
		fn(id, info, fmt.Errorf("reading program %d: %w", id, errProgramGone))
	}
	return nil
}

// readProgramsSyscall is ReadPrograms through bpf(2).
func (k *Kernel) readProgramsSyscall(ids []uint32, fn func(id uint32, info *ProgramInfo, err error)) {
	info := &k.batchInfo
	for _, id := range ids {
		err := k.ReadProgramInto(id, info)
		fn(id, info, err)
	}
}

// holdersIter fills holders with one run of the task_file iterator and
// reports false when the iterator is not in use or failed.
func (k *Kernel) holdersIter(holders map[uint32][]uint32) bool {
	its := k.loadedIterators()
	if its == nil || its.files == nil {
		return false
	}
	data, err := its.files.read(k.fileBuf)
	k.fileBuf = data[:0]
	if err != nil {
		return false
	}
	parseIterHolders(data, holders)
	return true
}
