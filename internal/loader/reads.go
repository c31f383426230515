package loader

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"strconv"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ProgramIDs walks every program ID (BPF_PROG_GET_NEXT_ID), in ascending
// order. Requires Linux 4.13.
func (k *Kernel) ProgramIDs() ([]uint32, error) {
	return k.appendProgramIDs(nil)
}

// appendProgramIDs is ProgramIDs appending to dst, so that a caller can
// reuse one slice from sweep to sweep. Once the bpf_prog iterator is
// loaded (by ReadPrograms or Iterators), one run of it lists the IDs
// instead of one syscall per program. Requires Linux 4.13.
func (k *Kernel) appendProgramIDs(dst []uint32) ([]uint32, error) {
	if ids, ok := k.takeWalkedIDs(); ok {
		return append(dst, ids...), nil
	}
	if out, ok := k.appendProgramIDsIter(dst); ok {
		return out, nil
	}
	return walkProgramIDs(dst)
}

// walkProgramIDs appends every program ID to dst, in ascending order, with
// BPF_PROG_GET_NEXT_ID. Requires Linux 4.13.
func walkProgramIDs(dst []uint32) ([]uint32, error) {
	return walkIDs(unix.BPF_PROG_GET_NEXT_ID, "program", dst)
}

// walkIDs appends the ID of every object of one kind (cmd is one of the
// BPF_*_GET_NEXT_ID commands), in ID order, to dst.
func walkIDs(cmd uintptr, kind string, dst []uint32) ([]uint32, error) {
	var id uint32
	for {
		next, err := bpfNextID(cmd, id)
		if err == unix.ENOENT {
			return dst, nil
		}
		if err != nil {
			return dst, fmt.Errorf("walking %s IDs after %d: %w", kind, id, err)
		}
		dst = append(dst, next)
		id = next
	}
}

// ReadProgram opens the program by ID, reads its info and closes it again.
// An error wrapping os.ErrNotExist means the program is gone. Requires
// Linux 4.15 (map IDs); run time and count need 5.1, recursion misses 5.12.
func (k *Kernel) ReadProgram(id uint32) (ProgramInfo, error) {
	var info ProgramInfo
	err := k.readProgramInto(id, &info)
	return info, err
}

// readProgramInto is ReadProgram filling info in place: the map IDs reuse
// info.MapIDs' storage and the name string is kept when it did not change,
// so reading the same program every interval does not allocate.
func (k *Kernel) readProgramInto(id uint32, info *ProgramInfo) error {
	k.mu.Lock()
	defer k.mu.Unlock()

	fd, err := bpfFDByID(unix.BPF_PROG_GET_FD_BY_ID, id)
	if err != nil {
		return fmt.Errorf("opening program %d: %w", id, err)
	}
	err = k.readProgramFD(fd)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("reading info of program %d: %w", id, err)
	}

	pi := &k.progInfo
	if pi.ID != id {
		return fmt.Errorf("reading info of program %d: kernel returned ID %d", id, pi.ID)
	}
	info.ID = pi.ID
	info.Type = pi.Type
	info.Tag = pi.Tag
	if name := cString(pi.Name[:]); string(name) != info.Name {
		info.Name = string(name)
	}
	info.LoadTime = pi.LoadTime
	info.RunTime = pi.RunTimeNs
	info.RunCount = pi.RunCnt
	info.RecursionMisses = pi.RecursionMisses
	info.MapIDs = append(info.MapIDs[:0], k.mapIDs[:pi.NrMapIDs]...)
	return nil
}

// readProgramFD fills k.progInfo and k.mapIDs for the program fd, growing
// k.mapIDs when the program uses more maps than it holds.
func (k *Kernel) readProgramFD(fd int) error {
	for {
		k.progInfo = sysProgInfo{
			NrMapIDs: uint32(len(k.mapIDs)),
			MapIDs:   uint64(uintptr(unsafe.Pointer(&k.mapIDs[0]))),
		}
		if err := bpfObjInfo(fd, unsafe.Pointer(&k.progInfo), unsafe.Sizeof(k.progInfo)); err != nil {
			return err
		}
		if int(k.progInfo.NrMapIDs) <= len(k.mapIDs) {
			return nil
		}
		k.mapIDs = make([]uint32, k.progInfo.NrMapIDs)
	}
}

// ReadMap opens the map by ID, reads its info and fdinfo memlock, closes
// it. An error wrapping os.ErrNotExist means the map is gone. Requires
// Linux 4.13.
func (k *Kernel) ReadMap(id uint32) (MapInfo, error) {
	var info MapInfo
	err := k.readMapInto(id, &info)
	return info, err
}

// readMapInto is ReadMap filling info in place, keeping the name string
// when it did not change.
func (k *Kernel) readMapInto(id uint32, info *MapInfo) error {
	k.mu.Lock()
	defer k.mu.Unlock()

	fd, err := bpfFDByID(unix.BPF_MAP_GET_FD_BY_ID, id)
	if err != nil {
		return fmt.Errorf("opening map %d: %w", id, err)
	}
	defer unix.Close(fd)

	k.mapInfo = sysMapInfo{}
	if err := bpfObjInfo(fd, unsafe.Pointer(&k.mapInfo), unsafe.Sizeof(k.mapInfo)); err != nil {
		return fmt.Errorf("reading info of map %d: %w", id, err)
	}
	memlock, err := k.selfFdinfoField(fd, "memlock:")
	if err != nil {
		return fmt.Errorf("reading memlock of map %d: %w", id, err)
	}

	fillMapInfo(info, &k.mapInfo, memlock)
	return nil
}

// selfFdinfoField reads the key line of /proc/self/fdinfo/<fd>.
func (k *Kernel) selfFdinfoField(fd int, key string) (uint64, error) {
	k.path = append(k.path[:0], "/proc/self/fdinfo/"...)
	k.path = strconv.AppendInt(k.path, int64(fd), 10)
	k.path = append(k.path, 0)
	data, err := readSmallFile(k.path, k.fdinfo)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", k.path[:len(k.path)-1], err)
	}
	v, ok := fdinfoField(data, key)
	if !ok {
		return 0, fmt.Errorf("no %q line in %s", key, k.path[:len(k.path)-1])
	}
	return v, nil
}

// ReadProcess reads <procRoot>/<pid>: stat, exe, cgroup and the gadget
// labels of environ. An error wrapping os.ErrNotExist means the process has exited.
// Exe is empty when it cannot be read (kernel threads, zombies); Labels is
// nil when environ has none or cannot be read.
//
// environ and cgroup are read once per process instance (PID, start time
// and exe): later reads of the same instance are three syscalls for stat
// and one for exe.
func (k *Kernel) ReadProcess(pid uint32) (Process, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	r := &k.procReader
	pidName := strconv.AppendUint(r.pidName[:0], uint64(pid), 10)
	r.pidName = pidName

	r.path = appendPathZ(r.path[:0], []byte(k.procRoot), []byte("/"), pidName, []byte("/stat"))
	stat, err := readSmallFile(r.path, r.stat)
	if err != nil {
		return Process{}, fmt.Errorf("reading process %d: %w", pid, errNotExist(err))
	}
	p := Process{PID: pid}
	if err := parseStat(stat, &p); err != nil {
		return Process{}, fmt.Errorf("parsing %s/%d/stat: %w", k.procRoot, pid, err)
	}

	r.path = appendPathZ(r.path[:0], []byte(k.procRoot), []byte("/"), pidName, []byte("/exe"))
	var exe []byte
	if n, err := readlinkat(unix.AT_FDCWD, &r.path[0], r.link); err == nil && n < len(r.link) {
		exe = r.link[:n]
	}
	key := procKey{pid: pid, startTime: p.StartTime}
	if c, ok := r.cache[key]; ok && c.exe == string(exe) {
		p.Exe = c.exe
		p.Labels = maps.Clone(c.labels)
		p.Cgroup = c.cgroup
		return p, nil
	}
	p.Exe = string(exe)

	r.path = appendPathZ(r.path[:0], []byte(k.procRoot), []byte("/"), pidName, []byte("/cgroup"))
	if data, err := readWholeFile(r.path, &r.cgroup); err == nil {
		p.Cgroup = parseProcCgroup(data)
	}

	r.path = appendPathZ(r.path[:0], []byte(k.procRoot), []byte("/"), pidName, []byte("/environ"))
	env, err := readWholeFile(r.path, &r.environ)
	switch {
	case err == nil:
		p.Labels = parseGadgetLabels(env)
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH):
		return Process{}, fmt.Errorf("reading process %d: %w", pid, errNotExist(err))
	default:
		return p, nil // no access: not cached, tried again next time
	}
	if r.cache == nil || len(r.cache) >= procCacheMax {
		r.cache = make(map[procKey]procCacheEntry)
	}
	r.cache[key] = procCacheEntry{exe: p.Exe, labels: maps.Clone(p.Labels), cgroup: p.Cgroup}
	return p, nil
}

// Holders maps program IDs to the PIDs (thread group IDs, ascending)
// holding an fd to them. Where the task_file iterator loads (see
// Iterators), one iterator run finds them; otherwise Holders walks
// <procRoot>/<pid>/fd and reads the prog_id line of fdinfo for each
// "anon_inode:bpf-prog" link. Both give the same result. Processes that
// exit or deny access during the walk are skipped. Programs kept alive
// only by links, pins or attachments have no holder.
func (k *Kernel) Holders() (map[uint32][]uint32, error) {
	k.holdersMu.Lock()
	defer k.holdersMu.Unlock()
	k.mu.Lock()
	defer k.mu.Unlock()
	if h, ok := k.takeHoldersAhead(); ok {
		return h, nil
	}
	if holders, ok := k.holdersIter(); ok {
		sortHolders(holders)
		k.lastHolders = len(holders)
		return holders, nil
	}
	holders := make(map[uint32][]uint32, k.lastHolders)
	if err := k.walker.holders(k.procRoot, holders, 0); err != nil {
		return nil, fmt.Errorf("finding program holders: %w", err)
	}
	sortHolders(holders)
	return holders, nil
}

// EnableStats turns on run-time stats with BPF_ENABLE_STATS for as long as
// the returned Closer is open (or the process lives). Unlike the sysctl
// kernel.bpf_stats_enabled, stats go off again if the process dies.
// Requires Linux 5.8.
func EnableStats() (io.Closer, error) {
	attr := sysStatsAttr{Type: unix.BPF_STATS_RUN_TIME}
	fd, err := bpfSyscall(unix.BPF_ENABLE_STATS, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err == unix.EINVAL {
		return nil, fmt.Errorf("enabling BPF run-time stats (requires Linux 5.8): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("enabling BPF run-time stats: %w", err)
	}
	s := &statsFD{}
	s.fd.Store(int64(fd))
	return s, nil
}

// statsFD is the fd BPF_ENABLE_STATS returned.
type statsFD struct {
	fd atomic.Int64
}

// Close turns stats off unless another holder keeps them on. It is
// idempotent.
func (s *statsFD) Close() error {
	fd := s.fd.Swap(-1)
	if fd < 0 {
		return nil
	}
	if err := unix.Close(int(fd)); err != nil {
		return fmt.Errorf("closing BPF stats fd: %w", err)
	}
	return nil
}

// cString returns b up to its first NUL.
func cString(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}
