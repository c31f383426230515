package loader

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The attribute and info structs below mirror include/uapi/linux/bpf.h
// (keep in sync with it; reads_test.go checks the offsets). Only the
// leading fields the tracker reads are declared: the kernel accepts a
// shorter info_len, and an older kernel truncates a longer one.

// sysIDAttr is the union bpf_attr member used by BPF_*_GET_NEXT_ID and
// BPF_*_GET_FD_BY_ID: start_id and prog_id/map_id share the first word.
type sysIDAttr struct {
	ID        uint32 // start_id / prog_id / map_id
	NextID    uint32 // next_id
	OpenFlags uint32 // open_flags
}

// sysInfoAttr is the union bpf_attr member used by BPF_OBJ_GET_INFO_BY_FD.
type sysInfoAttr struct {
	BPFFd   uint32
	InfoLen uint32
	Info    uint64 // pointer to the info struct
}

// sysStatsAttr is the union bpf_attr member used by BPF_ENABLE_STATS.
type sysStatsAttr struct {
	Type uint32
}

// sysProgInfo is struct bpf_prog_info up to recursion_misses (Linux 5.12).
type sysProgInfo struct {
	Type                 uint32   // 0
	ID                   uint32   // 4
	Tag                  [8]byte  // 8
	JitedProgLen         uint32   // 16
	XlatedProgLen        uint32   // 20
	JitedProgInsns       uint64   // 24
	XlatedProgInsns      uint64   // 32
	LoadTime             uint64   // 40
	CreatedByUID         uint32   // 48
	NrMapIDs             uint32   // 52
	MapIDs               uint64   // 56, pointer to []uint32
	Name                 [16]byte // 64
	Ifindex              uint32   // 80
	GPLCompatible        uint32   // 84, bit field
	NetnsDev             uint64   // 88
	NetnsIno             uint64   // 96
	NrJitedKsyms         uint32   // 104
	NrJitedFuncLens      uint32   // 108
	JitedKsyms           uint64   // 112
	JitedFuncLens        uint64   // 120
	BTFID                uint32   // 128
	FuncInfoRecSize      uint32   // 132
	FuncInfo             uint64   // 136
	NrFuncInfo           uint32   // 144
	NrLineInfo           uint32   // 148
	LineInfo             uint64   // 152
	JitedLineInfo        uint64   // 160
	NrJitedLineInfo      uint32   // 168
	LineInfoRecSize      uint32   // 172
	JitedLineInfoRecSize uint32   // 176
	NrProgTags           uint32   // 180
	ProgTags             uint64   // 184
	RunTimeNs            uint64   // 192, Linux 5.1
	RunCnt               uint64   // 200, Linux 5.1
	RecursionMisses      uint64   // 208, Linux 5.12
}

// sysMapInfo is struct bpf_map_info up to name.
type sysMapInfo struct {
	Type       uint32   // 0
	ID         uint32   // 4
	KeySize    uint32   // 8
	ValueSize  uint32   // 12
	MaxEntries uint32   // 16
	MapFlags   uint32   // 20
	Name       [16]byte // 24
}

// bpfSyscall issues bpf(2). attr must not contain Go pointers other than
// to heap memory kept alive by the caller.
func bpfSyscall(cmd uintptr, attr unsafe.Pointer, size uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_BPF, cmd, uintptr(attr), size)
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

// bpfNextID returns the ID after start for cmd (BPF_PROG_GET_NEXT_ID or
// BPF_MAP_GET_NEXT_ID); ENOENT means there is none.
func bpfNextID(cmd uintptr, start uint32) (uint32, error) {
	attr := sysIDAttr{ID: start}
	if _, err := bpfSyscall(cmd, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); err != nil {
		return 0, err
	}
	return attr.NextID, nil
}

// bpfFDByID opens a new fd (O_CLOEXEC, set by the kernel) on the object
// with the given ID; cmd is BPF_PROG_GET_FD_BY_ID or BPF_MAP_GET_FD_BY_ID.
func bpfFDByID(cmd uintptr, id uint32) (int, error) {
	attr := sysIDAttr{ID: id}
	return bpfSyscall(cmd, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
}

// bpfObjInfo fills the info struct at info (size bytes) for fd with
// BPF_OBJ_GET_INFO_BY_FD. info and any buffer it points to must be heap
// memory: a goroutine stack may move while the address sits in attr as an
// integer.
func bpfObjInfo(fd int, info unsafe.Pointer, size uintptr) error {
	attr := sysInfoAttr{
		BPFFd:   uint32(fd),
		InfoLen: uint32(size),
		Info:    uint64(uintptr(info)),
	}
	_, err := bpfSyscall(unix.BPF_OBJ_GET_INFO_BY_FD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(info)
	return err
}

// sysIterCreateAttr is the union bpf_attr member used by BPF_ITER_CREATE.
type sysIterCreateAttr struct {
	LinkFD uint32
	Flags  uint32
}
