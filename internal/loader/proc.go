package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pfKthread is PF_KTHREAD from include/linux/sched.h: the flags bit
// (field 9 of /proc/<pid>/stat) that marks a kernel thread.
const pfKthread = 0x00200000

// ClockTicksPerSecond is USER_HZ, the unit of the times in
// /proc/<pid>/stat such as Process.StartTime. It is 100 on every
// architecture Linux and Go support together.
const ClockTicksPerSecond = 100

// gadgetEnvPrefix starts the environment variables that label a process.
const gadgetEnvPrefix = "BPFSTATS_GADGET_"

// bpfProgLink is the target of a /proc/<pid>/fd link to a BPF program.
const bpfProgLink = "anon_inode:bpf-prog"

// errNotExist makes an ESRCH (a process exiting while its /proc files are
// read) match os.ErrNotExist as ENOENT already does.
func errNotExist(err error) error {
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%w: %w", os.ErrNotExist, err)
	}
	return err
}

// parseStat reads the fields the tracker needs from the contents of
// /proc/<pid>/stat. The comm (field 2) is in parentheses and may itself
// contain spaces and parentheses, so the other fields are counted from the
// last ')'.
func parseStat(data []byte, p *Process) error {
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return errors.New("no comm in parentheses")
	}
	p.Comm = string(data[open+1 : end])
	// rest starts at field 3 (state).
	rest := data[end+1:]
	var ppid, flags, start []byte
	for field := 3; field <= 22; field++ {
		rest = bytes.TrimLeft(rest, " ")
		i := bytes.IndexByte(rest, ' ')
		if i < 0 {
			i = len(rest)
		}
		switch field {
		case 4:
			ppid = rest[:i]
		case 9:
			flags = rest[:i]
		case 22:
			start = bytes.TrimRight(rest[:i], "\n")
		}
		rest = rest[i:]
	}
	if len(start) == 0 {
		return errors.New("fewer than 22 fields")
	}
	v, err := strconv.ParseUint(string(ppid), 10, 32)
	if err != nil {
		return fmt.Errorf("field 4 (ppid): %w", err)
	}
	p.PPID = uint32(v)
	f, err := strconv.ParseUint(string(flags), 10, 32)
	if err != nil {
		return fmt.Errorf("field 9 (flags): %w", err)
	}
	p.Kernel = f&pfKthread != 0
	p.StartTime, err = strconv.ParseUint(string(start), 10, 64)
	if err != nil {
		return fmt.Errorf("field 22 (starttime): %w", err)
	}
	return nil
}

// parseGadgetLabels returns the BPFSTATS_GADGET_{NAME,IMAGE,ID} variables
// of a NUL-separated environment, keyed without the prefix; nil if none.
// The first definition of a variable wins, as with getenv(3).
func parseGadgetLabels(environ []byte) map[string]string {
	var labels map[string]string
	for len(environ) > 0 {
		entry := environ
		if i := bytes.IndexByte(environ, 0); i >= 0 {
			entry, environ = environ[:i], environ[i+1:]
		} else {
			environ = nil
		}
		if !bytes.HasPrefix(entry, []byte(gadgetEnvPrefix)) {
			continue
		}
		key, value, ok := bytes.Cut(entry[len(gadgetEnvPrefix):], []byte("="))
		if !ok {
			continue
		}
		switch string(key) {
		case "NAME", "IMAGE", "ID":
		default:
			continue
		}
		if labels == nil {
			labels = make(map[string]string, 3)
		}
		if _, dup := labels[string(key)]; !dup {
			labels[string(key)] = string(value)
		}
	}
	return labels
}

// fdinfoField returns the decimal value of the "key" line (key includes
// the colon, e.g. "prog_id:") of an fdinfo file.
func fdinfoField(data []byte, key string) (uint64, bool) {
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(line) <= len(key) || string(line[:len(key)]) != key {
			continue
		}
		var v uint64
		digits := 0
		for _, c := range line[len(key):] {
			switch {
			case c >= '0' && c <= '9':
				v = v*10 + uint64(c-'0')
				digits++
			case (c == ' ' || c == '\t') && digits == 0:
			default:
				return v, digits > 0
			}
		}
		return v, digits > 0
	}
	return 0, false
}

// parsePID returns the PID a /proc directory name stands for.
func parsePID(name []byte) (uint32, bool) {
	if len(name) == 0 || len(name) > 10 {
		return 0, false
	}
	var v uint64
	for _, c := range name {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	if v == 0 || v > 1<<32-1 {
		return 0, false
	}
	return uint32(v), true
}

// direntIter walks the struct linux_dirent64 records that getdents64
// wrote into a buffer.
type direntIter struct {
	buf []byte
	off int
}

// next returns the next entry name other than "." and "..". The byte
// after the name in the underlying buffer is NUL, so &name[0] is a C
// string valid until the buffer is refilled.
func (it *direntIter) next() ([]byte, bool) {
	const nameOff = 19 // d_ino u64, d_off s64, d_reclen u16, d_type u8
	for it.off+nameOff < len(it.buf) {
		rec := it.buf[it.off:]
		reclen := int(binary.NativeEndian.Uint16(rec[16:18]))
		if reclen <= nameOff || reclen > len(rec) {
			it.off = len(it.buf)
			return nil, false
		}
		it.off += reclen
		name := rec[nameOff:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		} else {
			continue // no terminator: never written by the kernel
		}
		if len(name) == 0 || (name[0] == '.' && (len(name) == 1 || (len(name) == 2 && name[1] == '.'))) {
			continue
		}
		return name, true
	}
	return nil, false
}

// openat opens pathZ, a NUL-terminated path, relative to dirfd without
// allocating. Flags always include O_CLOEXEC.
func openat(dirfd int, pathZ []byte, flags int) (int, error) {
	for {
		r, _, errno := unix.Syscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(&pathZ[0])),
			uintptr(flags|unix.O_CLOEXEC), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return -1, errno
		}
		return int(r), nil
	}
}

// readlinkat reads the link at nameZ (a C string inside a dirent buffer)
// relative to dirfd into buf and returns its length.
func readlinkat(dirfd int, nameZ *byte, buf []byte) (int, error) {
	r, _, errno := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(nameZ)),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// appendPathZ appends the parts of a path and a terminating NUL to dst.
func appendPathZ(dst []byte, parts ...[]byte) []byte {
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return append(dst, 0)
}

// procWalker holds the buffers Holders reuses from call to call.
type procWalker struct {
	procDents []byte
	fdDents   []byte
	link      []byte
	path      []byte
	fdinfo    []byte
}

func newProcWalker() procWalker {
	return procWalker{
		procDents: make([]byte, 32<<10),
		fdDents:   make([]byte, 32<<10),
		link:      make([]byte, 64),
		path:      make([]byte, 0, 64),
		fdinfo:    make([]byte, 4096),
	}
}

// holders walks procRoot/<tgid>/fd and adds every process holding a BPF
// program fd to holders, except process skip (0: none). Processes that
// vanish or deny access mid-walk are skipped.
func (w *procWalker) holders(procRoot string, holders map[uint32][]uint32, skip uint32) error {
	procFd, err := unix.Open(procRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", procRoot, err)
	}
	defer unix.Close(procFd)
	err = eachPID(procFd, w.procDents, skip, func(name []byte, pid uint32) {
		w.scanProcess(procFd, name, pid, holders)
	})
	if err != nil {
		return fmt.Errorf("reading %s: %w", procRoot, err)
	}
	return nil
}

// eachPID calls fn for each process directory of procFd, an open /proc,
// but skip's (0: none), reading the directory into dents. name is valid
// only during the call.
func eachPID(procFd int, dents []byte, skip uint32, fn func(name []byte, pid uint32)) error {
	for {
		n, err := unix.Getdents(procFd, dents)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		it := direntIter{buf: dents[:n]}
		for name, ok := it.next(); ok; name, ok = it.next() {
			if pid, ok := parsePID(name); ok && pid != skip {
				fn(name, pid)
			}
		}
	}
}

// holdersOf adds pid to holders for each BPF program it has an fd to,
// as holders does for every process.
func (w *procWalker) holdersOf(procRoot string, pid uint32, holders map[uint32][]uint32) error {
	procFd, err := unix.Open(procRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", procRoot, err)
	}
	defer unix.Close(procFd)
	w.scanProcess(procFd, strconv.AppendUint(nil, uint64(pid), 10), pid, holders)
	return nil
}

// scanProcess adds pid to holders for each BPF program it has an fd to.
// pidName is the /proc directory name of pid.
func (w *procWalker) scanProcess(procFd int, pidName []byte, pid uint32, holders map[uint32][]uint32) {
	p := &walkProc{pid: pid, name: pidName}
	for _, c := range w.listFds(procFd, p) {
		w.scanChunk(procFd, c, holders)
	}
}

// fdinfoProgID reads the prog_id line of /proc/<pid>/fdinfo/<fd>.
func (w *procWalker) fdinfoProgID(procFd int, pidName, fdName []byte) (uint32, bool) {
	w.path = appendPathZ(w.path[:0], pidName, []byte("/fdinfo/"), fdName)
	data, err := readSmallFileAt(procFd, w.path, w.fdinfo)
	if err != nil {
		return 0, false
	}
	id, ok := fdinfoField(data, "prog_id:")
	return uint32(id), ok && id != 0 && id <= 1<<32-1
}

// sortHolders sorts each PID list; /proc lists PIDs in ascending order
// already, so this is usually a no-op check.
func sortHolders(holders map[uint32][]uint32) {
	for _, pids := range holders {
		if !slices.IsSorted(pids) {
			slices.Sort(pids)
		}
	}
}

// procReader holds the buffers and the per-instance cache of
// Kernel.ReadProcess.
type procReader struct {
	pidName []byte
	path    []byte
	stat    []byte
	link    []byte
	environ []byte
	cgroup  []byte
	cache   map[procKey]procCacheEntry
}

// procKey names a process instance.
type procKey struct {
	pid       uint32
	startTime uint64
}

// procCacheEntry is what ReadProcess keeps of an instance's first read.
type procCacheEntry struct {
	exe    string
	labels map[string]string
	cgroup string
}

// procCacheMax bounds the ReadProcess cache; it starts over when full.
const procCacheMax = 4096

// readSmallFile reads a /proc file whose content the kernel produces in
// one go (stat, fdinfo) with a single read(2): a read that does not fill
// buf returns the whole file. pathZ is NUL-terminated.
func readSmallFile(pathZ []byte, buf []byte) ([]byte, error) {
	return readSmallFileAt(unix.AT_FDCWD, pathZ, buf)
}

// readSmallFileAt is readSmallFile with pathZ relative to dirfd.
func readSmallFileAt(dirfd int, pathZ []byte, buf []byte) ([]byte, error) {
	fd, err := openat(dirfd, pathZ, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == len(buf) {
			return nil, fmt.Errorf("more than %d bytes", len(buf))
		}
		return buf[:n], nil
	}
}

// readWholeFile reads pathZ until EOF into *buf, growing it as needed.
func readWholeFile(pathZ []byte, buf *[]byte) ([]byte, error) {
	fd, err := openat(unix.AT_FDCWD, pathZ, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	b := (*buf)[:0]
	for {
		if cap(b)-len(b) < 4096 {
			b = slices.Grow(b, max(4096, cap(b)))
		}
		n, err := unix.Read(fd, b[len(b):cap(b)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			*buf = b
			return nil, err
		}
		if n == 0 {
			*buf = b
			return b, nil
		}
		b = b[:len(b)+n]
	}
}

// InChildPIDNamespace reports whether this process runs in a PID namespace
// below the host's (a container without the host PID namespace). There,
// PIDs that hooks read in the kernel (the fentry source's) name host
// processes, not the ones this process sees in /proc, and must not be
// looked up. The initial PID namespace has a fixed inode number
// (PROC_PID_INIT_INO); any other one behind /proc/self/ns/pid is a child.
// Neither /proc/1/ns/pid (the container's own init) nor the NSpid line of
// /proc/self/status (which lists PIDs only from the namespace /proc was
// mounted in down, one entry in a container) can tell. Requires Linux 3.8.
func InChildPIDNamespace() (bool, error) {
	return inChildPIDNamespace("/proc/self/ns/pid")
}

// procPIDInitIno is PROC_PID_INIT_INO of include/linux/proc_ns.h.
const procPIDInitIno = 0xEFFFFFFC

func inChildPIDNamespace(nsFile string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(nsFile, &st); err != nil {
		return false, fmt.Errorf("reading PID namespace: %w", err)
	}
	return st.Ino != procPIDInitIno, nil
}

// ProcessStartTime returns the start time of process pid, in clock ticks
// since boot (as Process.StartTime), reading only /proc/<pid>/stat: the
// cheap way to tell whether a process seen before still runs. An error
// wrapping os.ErrNotExist means it has exited.
func (k *Kernel) ProcessStartTime(pid uint32) (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	r := &k.procReader
	r.pidName = strconv.AppendUint(r.pidName[:0], uint64(pid), 10)
	r.path = appendPathZ(r.path[:0], []byte(k.procRoot), []byte("/"), r.pidName, []byte("/stat"))
	stat, err := readSmallFile(r.path, r.stat)
	if err != nil {
		return 0, fmt.Errorf("reading process %d: %w", pid, errNotExist(err))
	}
	var p Process
	if err := parseStat(stat, &p); err != nil {
		return 0, fmt.Errorf("parsing %s/%d/stat: %w", k.procRoot, pid, err)
	}
	return p.StartTime, nil
}
