package loader

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// iterLoader loads the iterator programs: by rawLoad, against the kernel
// types scanKernelTypes found, or, when that fails for another reason than
// the kernel lacking what a program needs, through cilium/ebpf (which
// decodes the kernel's BTF). Safe for concurrent use.
type iterLoader struct {
	kernel *kernelTypes
	mu     sync.Mutex
	// rawErr is why rawLoad is not used (scanning failed), or the last
	// error it returned that sent a load to cilium/ebpf; nil while none
	// did (a kernelLacksError does not).
	rawErr error
	// ciliumOpts, built on first use: decoding the kernel BTF is what
	// rawLoad spares.
	ciliumOpts func() *ebpf.CollectionOptions
}

// newIterLoader scans the kernel BTF at btfPath for what the programs of
// spec relocate against, attach to and call.
func newIterLoader(spec *ebpf.CollectionSpec, btfPath string) *iterLoader {
	ld := &iterLoader{ciliumOpts: sync.OnceValue(iterLoadOptions)}
	if spec.Types == nil {
		ld.rawErr = errors.New("iterator object without BTF")
		return ld
	}
	structs := make(map[string]bool)
	for typ := range spec.Types.All() {
		switch typ.(type) {
		case *btf.Struct, *btf.Union:
			if name := typ.TypeName(); name != "" {
				structs[essentialName(name)] = true
			}
		}
	}
	funcs := make(map[string]bool)
	for _, ps := range spec.Programs {
		if ps.AttachType == ebpf.AttachTraceIter {
			funcs["bpf_iter_"+ps.AttachTo] = true
		}
		for _, ins := range ps.Instructions {
			if ins.IsKfuncCall() {
				funcs[ins.Reference()] = true
			}
		}
	}
	ld.kernel, ld.rawErr = scanKernelTypes(btfPath, structs, funcs)
	return ld
}

// load loads the named programs of spec (a copy of the loader's, with
// its variables set) and returns them in that order.
func (ld *iterLoader) load(spec *ebpf.CollectionSpec, names ...string) ([]*ebpf.Program, error) {
	ld.mu.Lock()
	useRaw := ld.rawErr == nil
	ld.mu.Unlock()
	if useRaw {
		progs, err := rawLoad(ld.kernel, spec, names...)
		if err == nil {
			return progs, nil
		}
		// The scan read all of vmlinux's BTF, where the kernel's own
		// kfuncs and iterator targets are (the only ones these programs
		// use): cilium/ebpf would fail the same way, after decoding it.
		// The other iterators still load raw.
		if lacks := (*kernelLacksError)(nil); errors.As(err, &lacks) {
			return nil, err
		}
		ld.mu.Lock()
		ld.rawErr = err
		ld.mu.Unlock()
	}
	coll, err := ebpf.NewCollectionWithOptions(onlyPrograms(spec, names), *ld.ciliumOpts())
	if err != nil {
		return nil, err
	}
	progs := make([]*ebpf.Program, len(names))
	for i, name := range names {
		progs[i] = coll.DetachProgram(name)
	}
	coll.Close()
	return progs, nil
}

// rawError reports why the last load that went through cilium/ebpf did
// not go through rawLoad (nil when none did).
func (ld *iterLoader) rawError() error {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.rawErr
}

// onlyPrograms is spec with only the named programs, the maps they use
// and the variables in those (what LoadAndAssign would create for them).
func onlyPrograms(spec *ebpf.CollectionSpec, names []string) *ebpf.CollectionSpec {
	cpy := *spec
	cpy.Programs = make(map[string]*ebpf.ProgramSpec, len(names))
	cpy.Maps = make(map[string]*ebpf.MapSpec)
	for _, name := range names {
		ps := spec.Programs[name]
		cpy.Programs[name] = ps
		if ps == nil {
			continue
		}
		for _, ins := range ps.Instructions {
			if ms := spec.Maps[ins.Reference()]; ins.IsLoadFromMap() && ms != nil {
				cpy.Maps[ins.Reference()] = ms
			}
		}
	}
	// A variable whose section is not created would fail the load.
	cpy.Variables = make(map[string]*ebpf.VariableSpec)
	for name, vs := range spec.Variables {
		if cpy.Maps[vs.SectionName] != nil {
			cpy.Variables[name] = vs
		}
	}
	return &cpy
}

// kernelLacksError says that the kernel's BTF has no function a program
// needs: a kfunc it calls or its iterator's target. It wraps
// ebpf.ErrNotSupported.
type kernelLacksError struct{ what string }

func (e *kernelLacksError) Error() string {
	return "no " + e.what + " in the kernel BTF: not supported"
}

func (e *kernelLacksError) Unwrap() error { return ebpf.ErrNotSupported }

// rawLoad loads the named iterator programs of spec with BPF_PROG_LOAD
// itself: CO-RE relocations resolved by cilium/ebpf against kt.spec, type
// IDs mapped back to the kernel's, kfunc calls and attach targets from
// the scan, and the maps the programs use created here (and closed once
// the programs hold them). Requires Linux 5.8 (iterators).
func rawLoad(kt *kernelTypes, spec *ebpf.CollectionSpec, names ...string) (_ []*ebpf.Program, err error) {
	maps := make(map[string]*ebpf.Map)
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	var progs []*ebpf.Program
	defer func() {
		if err != nil {
			for _, p := range progs {
				p.Close()
			}
		}
	}()
	for _, name := range names {
		ps := spec.Programs[name]
		if ps == nil {
			return nil, fmt.Errorf("no program %s in the iterator object", name)
		}
		if ps.Type != ebpf.Tracing || ps.AttachType != ebpf.AttachTraceIter {
			return nil, fmt.Errorf("program %s is not an iterator", name)
		}
		insns, err := rawInstructions(kt, spec, ps, maps)
		if err != nil {
			return nil, fmt.Errorf("program %s: %w", name, err)
		}
		target, ok := kt.funcs["bpf_iter_"+ps.AttachTo]
		if !ok {
			return nil, fmt.Errorf("program %s: %w", name, &kernelLacksError{"bpf_iter_" + ps.AttachTo})
		}
		fd, err := progLoadIter(insns, ps, uint32(target))
		if err != nil {
			return nil, fmt.Errorf("loading program %s: %w", name, err)
		}
		p, err := ebpf.NewProgramFromFD(fd)
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("program %s: %w", name, err)
		}
		progs = append(progs, p)
	}
	return progs, nil
}

// rawInstructions returns ps's instructions marshalled for BPF_PROG_LOAD,
// relocated against kt, with the maps they use (created into maps when
// not there yet) and kfunc IDs filled in.
func rawInstructions(kt *kernelTypes, spec *ebpf.CollectionSpec, ps *ebpf.ProgramSpec, maps map[string]*ebpf.Map) ([]byte, error) {
	insns := make(asm.Instructions, len(ps.Instructions))
	copy(insns, ps.Instructions)
	var relos []*btf.CORERelocation
	var at []int
	for i := range insns {
		if relo := btf.CORERelocationMetadata(&insns[i]); relo != nil {
			relos = append(relos, relo)
			at = append(at, i)
		}
	}
	if len(relos) > 0 {
		noLocal := func(btf.Type) (btf.TypeID, error) {
			return 0, errors.New("local type IDs are not supported")
		}
		fixups, err := btf.CORERelocate(relos, []*btf.Spec{kt.spec}, spec.ByteOrder, noLocal)
		if err != nil {
			return nil, fmt.Errorf("CO-RE relocations: %w", err)
		}
		for i := range fixups {
			ins := &insns[at[i]]
			if err := fixups[i].Apply(ins); err != nil {
				return nil, fmt.Errorf("CO-RE relocation %v: %w", relos[i], err)
			}
			// A kernel type ID (bpf_core_type_id_kernel) comes out as
			// one of kt.spec's, whose IDs are not the kernel's.
			if strings.HasPrefix(fixups[i].String(), "target_type_id=") {
				id := ins.Constant
				if id < 1 || id > int64(len(kt.kernelID)) {
					return nil, fmt.Errorf("CO-RE relocation %v: type ID %d not in the kernel types", relos[i], id)
				}
				ins.Constant = int64(kt.kernelID[id-1])
			}
		}
	}
	for i := range insns {
		ins := &insns[i]
		switch {
		case ins.IsLoadFromMap() && ins.Reference() != "":
			m, err := mapFor(spec, ins.Reference(), maps)
			if err != nil {
				return nil, err
			}
			if err := ins.AssociateMap(m); err != nil {
				return nil, fmt.Errorf("map %s: %w", ins.Reference(), err)
			}
		case ins.IsKfuncCall():
			id, ok := kt.funcs[ins.Reference()]
			if !ok {
				return nil, &kernelLacksError{"kfunc " + ins.Reference()}
			}
			ins.Constant, ins.Offset = int64(id), 0 // 0: vmlinux
		}
	}
	var buf bytes.Buffer
	buf.Grow(int(insns.Size()))
	if err := insns.Marshal(&buf, spec.ByteOrder); err != nil {
		return nil, fmt.Errorf("marshalling instructions: %w", err)
	}
	return buf.Bytes(), nil
}

// mapFor returns the map named name, created from spec the first time.
func mapFor(spec *ebpf.CollectionSpec, name string, maps map[string]*ebpf.Map) (*ebpf.Map, error) {
	if m, ok := maps[name]; ok {
		return m, nil
	}
	ms := spec.Maps[name]
	if ms == nil {
		return nil, fmt.Errorf("no map %s in the iterator object", name)
	}
	ms, err := withVariables(spec, ms)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", name, err)
	}
	m, err := ebpf.NewMap(ms)
	if err != nil {
		return nil, fmt.Errorf("creating map %s: %w", name, err)
	}
	maps[name] = m
	return m, nil
}

// withVariables returns ms, a data section (.rodata, .bss), with the
// values of spec's variables in it: VariableSpec.Set writes only the
// variable, which cilium/ebpf copies into its section when it loads a
// collection.
func withVariables(spec *ebpf.CollectionSpec, ms *ebpf.MapSpec) (*ebpf.MapSpec, error) {
	var data []byte
	for _, vs := range spec.Variables {
		if vs.SectionName != ms.Name || vs.Value == nil {
			continue
		}
		if data == nil {
			if len(ms.Contents) != 1 {
				return nil, fmt.Errorf("data section with %d values", len(ms.Contents))
			}
			value, ok := ms.Contents[0].Value.([]byte)
			if !ok {
				return nil, fmt.Errorf("data section value of type %T", ms.Contents[0].Value)
			}
			data = bytes.Clone(value)
		}
		if uint64(vs.Offset)+uint64(len(vs.Value)) > uint64(len(data)) {
			return nil, fmt.Errorf("variable %s past the end of its section", vs.Name)
		}
		copy(data[vs.Offset:], vs.Value)
	}
	if data == nil {
		return ms, nil
	}
	ms = ms.Copy()
	ms.Contents = []ebpf.MapKV{{Key: uint32(0), Value: data}}
	return ms, nil
}

// sysProgLoadAttr is the union bpf_attr member used by BPF_PROG_LOAD, up
// to attach_btf_obj_fd (Linux 5.11). Keep in sync with
// include/uapi/linux/bpf.h; reads_test.go checks the offsets. The
// __aligned_u64 pointers are unsafe.Pointer (8 bytes on 64-bit
// platforms, the only ones the tracker builds for), so that what they
// point to stays alive, and right if a stack moves, until the call.
type sysProgLoadAttr struct {
	ProgType           uint32         // 0
	InsnCnt            uint32         // 4
	Insns              unsafe.Pointer // 8
	License            unsafe.Pointer // 16
	LogLevel           uint32         // 24
	LogSize            uint32         // 28
	LogBuf             unsafe.Pointer // 32
	KernVersion        uint32         // 40
	ProgFlags          uint32         // 44
	ProgName           [16]byte       // 48
	ProgIfindex        uint32         // 64
	ExpectedAttachType uint32         // 68
	ProgBTFFd          uint32         // 72
	FuncInfoRecSize    uint32         // 76
	FuncInfo           uint64         // 80
	FuncInfoCnt        uint32         // 88
	LineInfoRecSize    uint32         // 92
	LineInfo           uint64         // 96
	LineInfoCnt        uint32         // 104
	AttachBTFID        uint32         // 108
	AttachBTFObjFd     uint32         // 112
	_                  uint32         // 116
}

// progLoadIter loads insns as ps, an iterator attached to the kernel
// function target, and returns the program's fd. On failure it loads
// again with the verifier's log, whose last line goes in the error.
func progLoadIter(insns []byte, ps *ebpf.ProgramSpec, target uint32) (int, error) {
	license := append([]byte(ps.License), 0)
	attr := &sysProgLoadAttr{
		ProgType:           uint32(unix.BPF_PROG_TYPE_TRACING),
		InsnCnt:            uint32(len(insns) / asm.InstructionSize),
		Insns:              unsafe.Pointer(&insns[0]),
		License:            unsafe.Pointer(&license[0]),
		ProgFlags:          ps.Flags,
		ExpectedAttachType: uint32(unix.BPF_TRACE_ITER),
		AttachBTFID:        target,
	}
	copy(attr.ProgName[:len(attr.ProgName)-1], ps.Name)
	fd, err := bpfSyscall(unix.BPF_PROG_LOAD, unsafe.Pointer(attr), unsafe.Sizeof(*attr))
	if err == nil {
		return fd, nil
	}
	log := make([]byte, 1<<20)
	attr.LogLevel, attr.LogSize, attr.LogBuf = 1, uint32(len(log)), unsafe.Pointer(&log[0])
	if fd, lerr := bpfSyscall(unix.BPF_PROG_LOAD, unsafe.Pointer(attr), unsafe.Sizeof(*attr)); lerr == nil {
		unix.Close(fd) // loads with the log on, not without: give the first error
	}
	return -1, fmt.Errorf("%w (verifier: %s)", err, verifierReason(log))
}

// verifierReason returns the line of a verifier log that says why it
// refused: the last one before its closing statistics.
func verifierReason(log []byte) string {
	if i := bytes.IndexByte(log, 0); i >= 0 {
		log = log[:i]
	}
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		line := strings.TrimSpace(lines[i])
		if line != "" && !strings.HasPrefix(line, "processed ") && !strings.HasPrefix(line, "verification time") && !strings.HasPrefix(line, "stack depth") {
			return line
		}
	}
	return "no log"
}
