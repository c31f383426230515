package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// iterLoadOptions are the options the iterator objects load with through
// cilium/ebpf (when rawLoad fails): one BTF cache for all of them, so that
// the kernel's BTF is decoded once, and CO-RE relocations resolved against
// vmlinux alone.
//
// cilium/ebpf (v0.22) decodes vmlinux BTF to find an iterator's attach
// target (bpf_iter_<name>) whatever the options, and with it every type
// that target reaches (about 10 ms each on 2 vCPUs): that is why rawLoad
// exists. Without KernelTypes its relocations would also decode the BTF of
// every loaded module as candidate targets, which the iterators (core
// kernel types only) never need.
func iterLoadOptions() *ebpf.CollectionOptions {
	cache := btf.NewCache()
	opts := &ebpf.CollectionOptions{Cache: cache}
	if kernel, err := cache.Kernel(); err == nil {
		opts.Programs.KernelTypes = kernel
	}
	return opts
}

// vmlinuxBTFPath is where the kernel exposes its BTF (Linux 5.4 with
// CONFIG_DEBUG_INFO_BTF).
const vmlinuxBTFPath = "/sys/kernel/btf/vmlinux"

// BTF kinds (include/uapi/linux/btf.h) the scan tells apart.
const (
	btfKindInt      = 1
	btfKindPtr      = 2
	btfKindArray    = 3
	btfKindStruct   = 4
	btfKindUnion    = 5
	btfKindEnum     = 6
	btfKindFwd      = 7
	btfKindTypedef  = 8
	btfKindVolatile = 9
	btfKindConst    = 10
	btfKindRestrict = 11
	btfKindFunc     = 12
	btfKindProto    = 13
	btfKindVar      = 14
	btfKindDatasec  = 15
	btfKindFloat    = 16
	btfKindDeclTag  = 17
	btfKindTypeTag  = 18
	btfKindEnum64   = 19
)

// btfRecordSize is the size of a type record of kind with vlen entries:
// the 12-byte struct btf_type and what follows it.
func btfRecordSize(kind, vlen uint32) uint32 {
	switch kind {
	case btfKindInt, btfKindVar, btfKindDeclTag:
		return 16
	case btfKindArray:
		return 24
	case btfKindStruct, btfKindUnion, btfKindDatasec, btfKindEnum64:
		return 12 + 12*vlen
	case btfKindEnum, btfKindProto:
		return 12 + 8*vlen
	default:
		return 12
	}
}

// kernelTypes is what the iterators need of the kernel's BTF, taken from
// it without decoding it: the IDs of some functions (attach targets,
// kfuncs), and a small spec of the structs the iterators relocate
// against.
type kernelTypes struct {
	// spec holds the kernel structs and unions named by the iterator
	// object, and every type they embed (not what they point to: a
	// pointer to a type outside the spec points to void). Field offsets
	// are the kernel's; type IDs are not (see kernelID).
	spec *btf.Spec
	// kernelID maps a type ID of spec to the kernel's (index ID-1).
	kernelID []btf.TypeID
	// funcs are the kernel IDs of the functions asked for that exist.
	funcs map[string]btf.TypeID
}

// scanKernelTypes reads the kernel BTF at path for the struct and union
// names in structs (flavour suffixes "___x" stripped by the caller) and the
// function names in funcs. One pass over the type records, without
// decoding them: for an iterator this replaces cilium/ebpf's decoding of
// all of vmlinux BTF and of every type an attach target reaches.
func scanKernelTypes(path string, structs, funcs map[string]bool) (*kernelTypes, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening kernel BTF: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening kernel BTF: %w", err)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		// Older kernels cannot map it: read it.
		if data, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("reading kernel BTF: %w", err)
		}
		return kernelTypesOf(data, structs, funcs)
	}
	defer unix.Munmap(data) //nolint:errcheck // nothing kept points into it
	return kernelTypesOf(data, structs, funcs)
}

// rawBTF is a BTF blob's type and string sections.
type rawBTF struct {
	types, strs []byte
	// offs[id] is the offset of type id's record in types (id 0 is void).
	offs []uint32
	// named are the structs, unions and functions with a name asked for
	// (see btfNames), in ID order.
	named []uint32
}

// btfNames are the struct (and union) and function names a scan looks
// for, with a set of their first two bytes that turns most other names
// away without hashing them.
type btfNames struct {
	structs, funcs map[string]bool
	prefix         [1 << 16 / 64]uint64
}

func newBTFNames(structs, funcs map[string]bool) *btfNames {
	n := &btfNames{structs: structs, funcs: funcs}
	for _, set := range []map[string]bool{structs, funcs} {
		for name := range set {
			var p [2]byte
			copy(p[:], name)
			key := uint32(p[0]) | uint32(p[1])<<8
			n.prefix[key/64] |= 1 << (key % 64)
		}
	}
	return n
}

// wanted reports whether the type record rec names something asked for.
// The kind comes first: it is in the record, the name in another section.
func (n *btfNames) wanted(r *rawBTF, rec []byte) bool {
	le := binary.LittleEndian
	set := n.funcs
	switch le.Uint32(rec[4:]) >> 24 & 0x1f {
	case btfKindStruct, btfKindUnion:
		set = n.structs
	case btfKindFunc:
	default:
		return false
	}
	off := le.Uint32(rec)
	if off == 0 || uint64(off)+1 >= uint64(len(r.strs)) {
		return false
	}
	// The section ends with a NUL: the byte after the first exists.
	key := uint32(r.strs[off]) | uint32(r.strs[off+1])<<8
	return n.prefix[key/64]&(1<<(key%64)) != 0 && set[string(r.name(off))]
}

var errBadBTF = errors.New("malformed BTF")

// parseRawBTF indexes the type records of data and finds those names
// asks for.
func parseRawBTF(data []byte, names *btfNames) (*rawBTF, error) {
	le := binary.LittleEndian
	if len(data) < 24 || le.Uint16(data) != 0xeb9f {
		return nil, fmt.Errorf("%w: no little-endian BTF header", errBadBTF)
	}
	hdrLen := uint64(le.Uint32(data[4:]))
	typeOff, typeLen := hdrLen+uint64(le.Uint32(data[8:])), uint64(le.Uint32(data[12:]))
	strOff, strLen := hdrLen+uint64(le.Uint32(data[16:])), uint64(le.Uint32(data[20:]))
	if typeOff+typeLen > uint64(len(data)) || strOff+strLen > uint64(len(data)) || strLen == 0 {
		return nil, fmt.Errorf("%w: sections out of bounds", errBadBTF)
	}
	r := &rawBTF{types: data[typeOff : typeOff+typeLen], strs: data[strOff : strOff+strLen]}
	if r.strs[len(r.strs)-1] != 0 {
		return nil, fmt.Errorf("%w: string section not terminated", errBadBTF)
	}
	// About 24 bytes per record in vmlinux.
	r.offs = make([]uint32, 1, 1+len(r.types)/24)
	for off := uint32(0); uint64(off) < typeLen; {
		if uint64(off)+12 > typeLen {
			return nil, fmt.Errorf("%w: truncated type record", errBadBTF)
		}
		info := le.Uint32(r.types[off+4:])
		size := btfRecordSize(info>>24&0x1f, info&0xffff)
		if uint64(off)+uint64(size) > typeLen {
			return nil, fmt.Errorf("%w: truncated type record", errBadBTF)
		}
		r.offs = append(r.offs, off)
		if names.wanted(r, r.types[off:]) {
			r.named = append(r.named, uint32(len(r.offs)-1))
		}
		off += size
	}
	return r, nil
}

// name returns the string at off (nil when out of bounds).
func (r *rawBTF) name(off uint32) []byte {
	if uint64(off) >= uint64(len(r.strs)) {
		return nil
	}
	s := r.strs[off:]
	return s[:bytes.IndexByte(s, 0)]
}

// record returns type id's record, its kind and vlen.
func (r *rawBTF) record(id uint32) (rec []byte, kind, vlen uint32) {
	rec = r.types[r.offs[id]:]
	info := binary.LittleEndian.Uint32(rec[4:])
	kind, vlen = info>>24&0x1f, info&0xffff
	return rec[:btfRecordSize(kind, vlen)], kind, vlen
}

// embedded calls fn with every type id's record refers to other than
// through a pointer: what lays it out.
func embedded(rec []byte, kind, vlen uint32, fn func(uint32)) {
	le := binary.LittleEndian
	switch kind {
	case btfKindStruct, btfKindUnion:
		for i := uint32(0); i < vlen; i++ {
			fn(le.Uint32(rec[12+12*i+4:]))
		}
	case btfKindArray:
		fn(le.Uint32(rec[12:]))
		fn(le.Uint32(rec[16:]))
	case btfKindTypedef, btfKindVolatile, btfKindConst, btfKindRestrict, btfKindTypeTag:
		fn(le.Uint32(rec[8:]))
	}
}

// kernelTypesOf is scanKernelTypes on BTF already in memory.
func kernelTypesOf(data []byte, structs, funcs map[string]bool) (*kernelTypes, error) {
	r, err := parseRawBTF(data, newBTFNames(structs, funcs))
	if err != nil {
		return nil, err
	}
	kt := &kernelTypes{funcs: make(map[string]btf.TypeID, len(funcs))}
	keep := make([]bool, len(r.offs))
	var todo []uint32
	for _, id := range r.named {
		rec, kind, _ := r.record(id)
		if kind == btfKindFunc {
			kt.funcs[string(r.name(binary.LittleEndian.Uint32(rec)))] = btf.TypeID(id)
			continue
		}
		keep[id] = true
		todo = append(todo, id)
	}
	for len(todo) > 0 {
		id := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		rec, kind, vlen := r.record(id)
		embedded(rec, kind, vlen, func(t uint32) {
			if t != 0 && t < uint32(len(keep)) && !keep[t] {
				keep[t] = true
				todo = append(todo, t)
			}
		})
	}
	blob, kernelID, err := compactBTF(r, keep)
	if err != nil {
		return nil, err
	}
	kt.kernelID = kernelID
	if kt.spec, err = btf.LoadSpecFromReader(bytes.NewReader(blob)); err != nil {
		return nil, fmt.Errorf("loading the kernel types the iterators use: %w", err)
	}
	return kt, nil
}

// compactBTF writes the types of r marked in keep as a BTF blob of their
// own, numbered from 1 in kernel order, with only their strings. A
// reference to a type not kept becomes void (only pointers have them).
// kernelID[i] is the kernel ID of the blob's type i+1.
func compactBTF(r *rawBTF, keep []bool) ([]byte, []btf.TypeID, error) {
	le := binary.LittleEndian
	newID := make(map[uint32]uint32)
	var kernelID []btf.TypeID
	for id, k := range keep {
		if k {
			kernelID = append(kernelID, btf.TypeID(id))
			newID[uint32(id)] = uint32(len(kernelID))
		}
	}
	strs := newBTFStrings(r)
	var types []byte
	for _, kid := range kernelID {
		rec, kind, vlen := r.record(uint32(kid))
		start := len(types)
		types = append(types, rec...)
		out := types[start:]
		for _, at := range btfNameOffsets(kind, vlen) {
			n, err := strs.add(le.Uint32(out[at:]))
			if err != nil {
				return nil, nil, err
			}
			le.PutUint32(out[at:], n)
		}
		remap := func(at int) {
			le.PutUint32(out[at:], newID[le.Uint32(out[at:])])
		}
		switch kind {
		case btfKindPtr, btfKindTypedef, btfKindVolatile, btfKindConst, btfKindRestrict, btfKindTypeTag:
			remap(8)
		case btfKindArray:
			remap(12)
			remap(16)
		case btfKindStruct, btfKindUnion:
			for i := 0; i < int(vlen); i++ {
				remap(12 + 12*i + 4)
			}
		case btfKindInt, btfKindEnum, btfKindEnum64, btfKindFwd, btfKindFloat:
		default:
			// Only what a struct embeds is kept: no functions,
			// variables or sections.
			return nil, nil, fmt.Errorf("%w: type %d of kind %d embedded in a struct", errBadBTF, kid, kind)
		}
	}
	blob := make([]byte, 24, 24+len(types)+len(strs.data))
	le.PutUint16(blob, 0xeb9f)
	blob[2] = 1 // version
	le.PutUint32(blob[4:], 24)
	le.PutUint32(blob[12:], uint32(len(types)))
	le.PutUint32(blob[16:], uint32(len(types)))
	le.PutUint32(blob[20:], uint32(len(strs.data)))
	return append(append(blob, types...), strs.data...), kernelID, nil
}

// btfStrings is the string section of a compacted BTF: the strings of r
// it was asked for, each once.
type btfStrings struct {
	r    *rawBTF
	data []byte
	at   map[uint32]uint32 // offset in r to offset in data
}

func newBTFStrings(r *rawBTF) *btfStrings {
	return &btfStrings{r: r, data: []byte{0}, at: map[uint32]uint32{0: 0}}
}

// add returns the offset of r's string at off in the new section.
func (s *btfStrings) add(off uint32) (uint32, error) {
	if n, ok := s.at[off]; ok {
		return n, nil
	}
	str := s.r.name(off)
	if str == nil {
		return 0, fmt.Errorf("%w: name offset %d out of bounds", errBadBTF, off)
	}
	n := uint32(len(s.data))
	s.data = append(append(s.data, str...), 0)
	s.at[off] = n
	return n, nil
}

// btfNameOffsets returns where a record of kind with vlen entries holds
// name offsets: its own, and its members' or values'.
func btfNameOffsets(kind, vlen uint32) []uint32 {
	at := []uint32{0}
	switch kind {
	case btfKindStruct, btfKindUnion, btfKindEnum64:
		for i := uint32(0); i < vlen; i++ {
			at = append(at, 12+12*i)
		}
	case btfKindEnum:
		for i := uint32(0); i < vlen; i++ {
			at = append(at, 12+8*i)
		}
	}
	return at
}

// essentialName strips a CO-RE flavour ("task_struct___old" is
// task_struct).
func essentialName(name string) string {
	if i := strings.LastIndex(name, "___"); i > 0 {
		return name[:i]
	}
	return name
}
