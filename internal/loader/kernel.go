package loader

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
}
