package main

// The peers' ways of reading the kernel, reimplemented as baselines.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// sweepCilium reads every program the way Inspektor Gadget's bpfstats
// operator does: walk IDs with cilium/ebpf, NewProgramFromID, Info() for
// the run time, run count and map IDs, close. It makes no Stats() call:
// the kernel returns the run time and count in Info()'s first
// BPF_OBJ_GET_INFO_BY_FD (the cilium/ebpf version this module pins no
// longer exposes them on ProgramInfo, older ones did), so they cost
// nothing more. It returns how many programs it read.
func sweepCilium() (int, error) {
	n := 0
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			return n, fmt.Errorf("reading program %d: %w", id, err)
		}
		if _, ok := info.MapIDs(); !ok {
			return n, fmt.Errorf("program %d: no map IDs", id)
		}
		n++
	}
}

// bpfProgInfo is struct bpf_prog_info as bpftool passes it (the whole
// struct of this kernel's uapi, 6.x).
type bpfProgInfo struct {
	Type, ID             uint32
	Tag                  [8]byte
	JitedProgLen         uint32
	XlatedProgLen        uint32
	JitedProgInsns       uint64
	XlatedProgInsns      uint64
	LoadTime             uint64
	CreatedByUID         uint32
	NrMapIDs             uint32
	MapIDs               uint64
	Name                 [16]byte
	Ifindex              uint32
	GPLCompatible        uint32
	NetnsDev, NetnsIno   uint64
	NrJitedKsyms         uint32
	NrJitedFuncLens      uint32
	JitedKsyms           uint64
	JitedFuncLens        uint64
	BTFID                uint32
	FuncInfoRecSize      uint32
	FuncInfo             uint64
	NrFuncInfo           uint32
	NrLineInfo           uint32
	LineInfo             uint64
	JitedLineInfo        uint64
	NrJitedLineInfo      uint32
	LineInfoRecSize      uint32
	JitedLineInfoRecSize uint32
	NrProgTags           uint32
	ProgTags             uint64
	RunTimeNs, RunCnt    uint64
	RecursionMisses      uint64
	VerifiedInsns        uint32
	AttachBTFObjID       uint32
	AttachBTFID          uint32
	_                    uint32
}

func bpf(cmd uintptr, attr unsafe.Pointer, size uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_BPF, cmd, uintptr(attr), size)
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

// rawSweeper reads every program the way bpftool does: BPF_PROG_GET_NEXT_ID,
// BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD (with the map IDs), close.
type rawSweeper struct {
	info   *bpfProgInfo
	mapIDs []uint32
}

func newRawSweeper() *rawSweeper {
	return &rawSweeper{info: new(bpfProgInfo), mapIDs: make([]uint32, 64)}
}

func (s *rawSweeper) sweep() (int, error) {
	n := 0
	var id uint32
	for {
		idAttr := struct{ ID, Next, Flags uint32 }{ID: id}
		if _, err := bpf(unix.BPF_PROG_GET_NEXT_ID, unsafe.Pointer(&idAttr), unsafe.Sizeof(idAttr)); err != nil {
			if err == unix.ENOENT {
				return n, nil
			}
			return n, err
		}
		id = idAttr.Next
		fdAttr := struct{ ID, Next, Flags uint32 }{ID: id}
		fd, err := bpf(unix.BPF_PROG_GET_FD_BY_ID, unsafe.Pointer(&fdAttr), unsafe.Sizeof(fdAttr))
		if err != nil {
			continue
		}
		*s.info = bpfProgInfo{NrMapIDs: uint32(len(s.mapIDs)), MapIDs: uint64(uintptr(unsafe.Pointer(&s.mapIDs[0])))}
		infoAttr := struct {
			FD, Len uint32
			Info    uint64
		}{FD: uint32(fd), Len: uint32(unsafe.Sizeof(*s.info)), Info: uint64(uintptr(unsafe.Pointer(s.info)))}
		_, err = bpf(unix.BPF_OBJ_GET_INFO_BY_FD, unsafe.Pointer(&infoAttr), unsafe.Sizeof(infoAttr))
		runtime.KeepAlive(s)
		unix.Close(int(fd))
		if err != nil {
			return n, fmt.Errorf("reading program %d: %w", id, err)
		}
		n++
	}
}

// procHolders finds the holders of every program and their comms by
// walking /proc/*/fd, reading fdinfo for each bpf-prog link, then
// /proc/<pid>/comm: the way tools without a task_file iterator do it.
func procHolders() (map[uint32][]string, error) {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := make(map[uint32][]string)
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		base := "/proc/" + d.Name()
		fds, err := os.ReadDir(base + "/fd")
		if err != nil {
			continue
		}
		var comm string
		for _, fd := range fds {
			link, err := os.Readlink(base + "/fd/" + fd.Name())
			if err != nil || link != "anon_inode:bpf-prog" {
				continue
			}
			data, err := os.ReadFile(base + "/fdinfo/" + fd.Name())
			if err != nil {
				continue
			}
			id, ok := fdinfoProgID(data)
			if !ok {
				continue
			}
			if comm == "" {
				c, err := os.ReadFile(base + "/comm")
				if err != nil {
					break
				}
				comm = string(bytes.TrimSpace(c))
			}
			out[id] = append(out[id], comm)
		}
		_ = pid
	}
	return out, nil
}

func fdinfoProgID(data []byte) (uint32, bool) {
	for line := range bytes.Lines(data) {
		if v, ok := bytes.CutPrefix(line, []byte("prog_id:")); ok {
			id, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 32)
			return uint32(id), err == nil
		}
	}
	return 0, false
}
