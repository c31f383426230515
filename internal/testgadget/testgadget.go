// Package testgadget provides real-kernel eBPF fixtures for tests: maps,
// programs that use maps, a program that runs on every syscall, and labelled
// child processes ("gadgets") that hold programs and maps.
//
// Everything is built with cilium/ebpf's assembler, so no C toolchain is
// needed. The fixtures need root (CAP_BPF and CAP_PERFMON) and close
// themselves through testing.TB.Cleanup. Packages that use StartGadget must
// call RunIfChild first thing in TestMain:
//
//	func TestMain(m *testing.M) {
//		testgadget.RunIfChild()
//		os.Exit(m.Run())
//	}
package testgadget

import (
	"errors"
	"fmt"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testutil"
)

// NewMap creates an array map with 4-byte keys and 8-byte values, closed
// when the test ends. maxEntries must be at least 1. Requires Linux 4.15
// (map names).
func NewMap(tb testing.TB, name string, maxEntries uint32) *ebpf.Map {
	tb.Helper()
	m, err := newArrayMap(name, maxEntries)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// LoadSocketFilter loads a socket filter that looks up key 0 in each of maps
// and returns 0, closed when the test ends. The kernel lists the maps as the
// program's used maps (bpf_prog_info.map_ids). The program never runs unless
// the test attaches it. Requires Linux 4.15 (program names).
func LoadSocketFilter(tb testing.TB, name string, maps ...*ebpf.Map) *ebpf.Program {
	tb.Helper()
	prog, err := newProgram(ebpf.SocketFilter, name, maps)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	return prog
}

// LoadSocketFilters loads n socket filters named prefix_0, prefix_1, ...,
// each with a one-entry map of its own, closed when the test ends: the
// many-programs fixture of the benchmarks.
func LoadSocketFilters(tb testing.TB, prefix string, n int) {
	tb.Helper()
	for i := range n {
		LoadSocketFilter(tb, fmt.Sprintf("%s_%d", prefix, i), NewMap(tb, prefix, 1))
	}
}

// AttachSysEnter loads a raw tracepoint program like LoadSocketFilter's and
// attaches it to sys_enter, so it runs on every syscall of every process:
// run time and run count rise (while stats are enabled, see
// ebpf.EnableStats) whenever the test makes syscalls, e.g. with Syscalls.
// Program and link are closed when the test ends. The test is skipped if
// the kernel does not know raw tracepoints, and fails on any other
// error. Requires Linux 4.17.
func AttachSysEnter(tb testing.TB, name string, maps ...*ebpf.Map) (*ebpf.Program, link.Link) {
	tb.Helper()
	prog, err := newProgram(ebpf.RawTracepoint, name, maps)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	l, err := attachSysEnter(prog)
	testutil.SkipIfUnknownAttachType(tb, err, "raw_tp")
	tb.Cleanup(func() { l.Close() })
	return prog, l
}

// LoadGetpidTracepoint is AttachSysEnter without maps, named "getpid_tp":
// a program whose run count rises when the test calls unix.Getpid (or any
// other syscall; so do all other processes).
func LoadGetpidTracepoint(tb testing.TB) (*ebpf.Program, link.Link) {
	tb.Helper()
	return AttachSysEnter(tb, "getpid_tp")
}

// Syscalls makes n getpid(2) calls, driving programs attached with
// AttachSysEnter or by a gadget's Attach programs.
func Syscalls(n int) {
	for range n {
		unix.Getpid()
	}
}

// ProgramID returns the kernel's ID of prog without the feature probes that
// ebpf.Program.Info may load (they would show up as extra programs).
func ProgramID(tb testing.TB, prog *ebpf.Program) uint32 {
	tb.Helper()
	id, err := objectID(prog.FD())
	if err != nil {
		tb.Fatalf("reading program ID: %v", err)
	}
	return id
}

// MapID returns the kernel's ID of m.
func MapID(tb testing.TB, m *ebpf.Map) uint32 {
	tb.Helper()
	id, err := objectID(m.FD())
	if err != nil {
		tb.Fatalf("reading map ID: %v", err)
	}
	return id
}

func newArrayMap(name string, maxEntries uint32) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: maxEntries,
	})
	if err != nil {
		return nil, fmt.Errorf("creating map %q: %w", name, err)
	}
	return m, nil
}

// newProgram assembles: for each map, look up key 0; then return 0. The map
// loads make the verifier record every map in the program's used maps.
func newProgram(typ ebpf.ProgramType, name string, maps []*ebpf.Map) (*ebpf.Program, error) {
	var insns asm.Instructions
	for _, m := range maps {
		ld := asm.LoadMapPtr(asm.R1, 0)
		if err := ld.AssociateMap(m); err != nil {
			return nil, fmt.Errorf("referencing map %v: %w", m, err)
		}
		insns = append(insns,
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			ld,
			asm.FnMapLookupElem.Call(),
		)
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 0), asm.Return())
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         typ,
		License:      "GPL",
		Instructions: insns,
	})
	if err != nil {
		return nil, fmt.Errorf("loading %s program %q: %w", typ, name, err)
	}
	return prog, nil
}

func attachSysEnter(prog *ebpf.Program) (link.Link, error) {
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: prog})
	if err != nil {
		return nil, fmt.Errorf("attaching raw_tp to sys_enter: %w", err)
	}
	return l, nil
}

// objectID reads the ID of a program or map fd with BPF_OBJ_GET_INFO_BY_FD.
// bpf_prog_info and bpf_map_info both start with u32 type, u32 id; the
// kernel fills only as much as info_len asks for.
func objectID(fd int) (uint32, error) {
	if fd < 0 {
		return 0, errors.New("closed fd")
	}
	var info struct{ typ, id uint32 }
	// The info pointer is an unsafe.Pointer (a __u64 on the 64-bit targets
	// this runs on) so that the garbage collector tracks it.
	attr := struct {
		fd, infoLen uint32
		info        unsafe.Pointer
	}{uint32(fd), uint32(unsafe.Sizeof(info)), unsafe.Pointer(&info)}
	const bpfObjGetInfoByFD = 15
	_, _, errno := unix.Syscall(unix.SYS_BPF, bpfObjGetInfoByFD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return 0, fmt.Errorf("BPF_OBJ_GET_INFO_BY_FD: %w", errno)
	}
	return info.id, nil
}
