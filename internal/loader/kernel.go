package loader

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Kernel reads programs, maps and processes from the running kernel and
// /proc. It implements state.Kernel (and its extensions state.BatchReader,
// state.AuditReader, state.MetadataReader, state.CgroupResolver and
// state.AttachReader). The zero value is not usable; call NewKernel.
//
// Reads use raw bpf(2) calls and reused buffers: one program read is three
// syscalls (GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, close). Where they load (see
// Iterators), BPF iterators read all programs (ReadPrograms) and all
// program fd holders (Holders) in one go. Every fd a read opens is closed
// before it returns, so the tracker never keeps a program or map alive
// (except its own iterator programs, until Close). A Kernel is safe for
// concurrent use; reads are serialized because they share buffers (which
// also keeps Holders from seeing the Kernel's own short-lived fds; a
// holders scan lets single reads in between its chunks).
type Kernel struct {
	procRoot string
	opts     KernelOptions

	// mu guards every field below up to batchMu: the buffers of the
	// single reads (ReadProgram, ReadMap, ReadProcess, Holders) and the
	// lazily loaded iterators. A read holds it for its whole duration and
	// never calls out while holding it.
	mu       sync.Mutex
	progInfo sysProgInfo
	mapInfo  sysMapInfo
	mapIDs   []uint32
	path     []byte
	fdinfo   []byte
	walker   procWalker
	fileBuf  []byte // task_file iterator output
	// lastHolders sizes the next Holders map.
	lastHolders int
	procReader  procReader
	iters       *iterators
	// holdersAhead, when not nil, delivers the /proc walk a OneSweep
	// Kernel without iterators started early (see startHoldersAhead).
	holdersAhead chan holdersResult
	// walkedIDs are the program IDs a OneSweep Kernel listed to choose
	// against the iterators, for its next ProgramIDs (see takeWalkedIDs).
	walkedIDs []uint32
	// mapsAhead is a OneSweep Kernel's early read of every map (see
	// startMapsAhead); nil otherwise. It has a lock of its own.
	mapsAhead *mapsAhead
	closed    bool
	// metaMapInfo and metaCache serve ReadProgramMetadata.
	metaMapInfo sysMapInfoBTF
	metaCache   map[metadataKey]map[string]string

	// batchMu guards the fields below, owned by ReadPrograms and by the
	// iterator path of appendProgramIDs. It is separate from mu because
	// ReadPrograms holds it across its calls of fn, and fn may do single
	// reads (each taking mu); lock order is batchMu, then mu.
	batchMu sync.Mutex
	// progBuf is the part the bpf_prog iterators' output goes through
	// (see readRecords), of progPart bytes (0: iterPart; tests make it
	// small to cut records across reads).
	progBuf    []byte
	progPart   int
	batchInfo  ProgramInfo
	wanted     idSet
	pendingSet idSet
	pending    []uint32
	scratchIDs []uint32
	// reported lists the IDs ReadAllPrograms reported so far.
	reported []uint32
	names    nameCache
	// known and knownNext are the map ID caches of the last and the
	// current sweep.
	known, knownNext progCache

	// holdersMu serializes Holders, which lets go of mu between the
	// chunks of its scan (fileBuf, walker and lastHolders stay its own);
	// lock order is holdersMu, batchMu, mu.
	holdersMu sync.Mutex

	// cgroups resolves cgroup IDs (CgroupPath), with a lock of its own.
	cgroups cgroupPaths
	// links describes BPF links (ReadAttachments), with a lock of its own.
	links linkTargets
}

// KernelOptions configures NewKernelWithOptions.
type KernelOptions struct {
	// ProcRoot is the /proc to read processes and Holders from; "" means
	// /proc. The holders iterator is used only with the host's /proc.
	ProcRoot string
	// NoIterators makes ReadPrograms and Holders use bpf(2) and /proc
	// only, never BPF iterators.
	NoIterators bool
	// OneSweep is for a Kernel that serves one sweep (a one-shot): only
	// the iterators that sweep reads through are loaded (iter/bpf_prog
	// with map IDs, iter/task_file), not the one that makes later sweeps
	// cheaper, and each runs once: the output of its self-check at load
	// is what every later read through it (ProgramIDs, ReadPrograms,
	// ReadAllPrograms, Holders) returns, a consistent view of the
	// programs and their holders as of the load. Single reads (bpf(2),
	// /proc) stay live. With few programs and open files the iterators
	// are not loaded at all (Iterators reports ErrFewPrograms). When they
	// are, every map of the system is read while they load, and ReadMaps
	// hands out those values (see startMapsAhead).
	OneSweep bool
	// BeforeIterators, when set, is called once before a OneSweep Kernel
	// loads its iterators (with the Kernel's lock held), and not when few
	// programs make it read through bpf(2) and /proc instead: a one-shot
	// readies its heap there for the megabytes that reading thousands of
	// programs allocates.
	BeforeIterators func()
}

// NewKernel returns a Kernel reading /proc at procRoot ("" means /proc).
// procRoot is used for processes and Holders; a map's memlock is always
// read from this process's own /proc/self/fdinfo.
func NewKernel(procRoot string) (*Kernel, error) {
	return NewKernelWithOptions(KernelOptions{ProcRoot: procRoot})
}

// NewKernelWithOptions is NewKernel with options. The BPF iterators are
// loaded on first use; Close releases them.
func NewKernelWithOptions(opts KernelOptions) (*Kernel, error) {
	procRoot := opts.ProcRoot
	if procRoot == "" {
		procRoot = "/proc"
	}
	fi, err := os.Stat(procRoot)
	if err != nil {
		return nil, fmt.Errorf("opening proc root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("proc root %s is not a directory", procRoot)
	}
	return &Kernel{
		procRoot: procRoot,
		opts:     opts,
		mapIDs:   make([]uint32, 64),
		path:     make([]byte, 0, 64),
		fdinfo:   make([]byte, 4096),
		walker:   newProcWalker(),
		procReader: procReader{
			stat: make([]byte, 4096),
			link: make([]byte, 4096),
		},
	}, nil
}

// Close releases the BPF iterators and the cgroup mount fd. The Kernel
// stays usable, reading through bpf(2) and /proc only. Close is idempotent.
func (k *Kernel) Close() error {
	// Wait for reads in flight (lock order: holdersMu, batchMu, mu).
	k.holdersMu.Lock()
	defer k.holdersMu.Unlock()
	k.batchMu.Lock()
	defer k.batchMu.Unlock()
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	k.cgroups.close()
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

// ProgramInfo is what one stats read returns for a program
// (BPF_OBJ_GET_INFO_BY_FD on a short-lived fd).
type ProgramInfo struct {
	ID   uint32
	Type uint32
	Name string
	Tag  [8]byte
	// LoadTime is bpf_prog_info.load_time: ns since boot. Together with
	// the ID it tells a reused ID apart.
	LoadTime uint64
	// RunTime and RunCount are cumulative since load, counted only while
	// stats are enabled (see EnableStats). Requires Linux 5.1.
	RunTime  uint64
	RunCount uint64
	// RecursionMisses requires Linux 5.12; 0 before.
	RecursionMisses uint64
	MapIDs          []uint32
}

// MapInfo describes one map. Everything but Memlock is fixed for the
// map's life.
type MapInfo struct {
	ID         uint32
	Type       uint32
	Name       string
	KeySize    uint32
	ValueSize  uint32
	MaxEntries uint32
	Flags      uint32
	// Memlock is the "memlock:" line of the map's fdinfo, in bytes.
	Memlock uint64
}

// Process is what the tracker knows of a user-space process.
type Process struct {
	PID uint32
	// StartTime is field 22 of /proc/<pid>/stat (clock ticks since boot):
	// with PID it names one process instance.
	StartTime uint64
	Comm      string
	// Exe is the target of /proc/<pid>/exe; empty when it cannot be read
	// (kernel threads, zombies).
	Exe string
	// PPID is the parent's thread group ID (field 4 of stat).
	PPID uint32
	// Kernel is true for kernel threads (PF_KTHREAD in field 9 of stat).
	Kernel bool
	// Labels are the BPFSTATS_GADGET_* variables of the process's
	// environment when it was first read, keyed without the prefix
	// ("NAME", "IMAGE", "ID").
	Labels map[string]string
	// Cgroup is the process's cgroup v2 path (the "0::" line of
	// /proc/<pid>/cgroup; the v1 name=systemd line on a host without
	// cgroup v2) when it was first read: see ParseCgroupPath. "" when it
	// cannot be read.
	Cgroup string
}

// BootOffset returns how far CLOCK_BOOTTIME is ahead of CLOCK_MONOTONIC
// now, in nanoseconds: the time the machine spent suspended. Event times
// (ProgramEvent.KernelTime) are CLOCK_MONOTONIC, process start times
// (Process.StartTime) count from boot including suspend: an event time
// plus this offset is on the start times' clock, and not earlier than the
// event really was but for the microseconds between the two clock reads
// (the offset only grows). 0 when a clock cannot be read.
func (k *Kernel) BootOffset() uint64 {
	var mono, boot unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono) != nil ||
		unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot) != nil {
		return 0
	}
	if d := boot.Nano() - mono.Nano(); d > 0 {
		return uint64(d)
	}
	return 0
}

// monotonicNow is CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns.
func monotonicNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}
