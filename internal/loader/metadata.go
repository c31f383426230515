package loader

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// MetadataPrefix starts the names of the read-only global variables that
// label a program from inside its object, the convention "bpftool prog
// show" prints: const volatile char bpf_metadata_gadget_id[] and the like.
const MetadataPrefix = "bpf_metadata_"

// rodataSuffix ends the name of the map holding an object's read-only
// globals: ".rodata" (cilium/ebpf) or "<object>.rodata" (libbpf).
const rodataSuffix = ".rodata"

// ProgramMetadata is what a program's .rodata map says about it.
type ProgramMetadata struct {
	// Tag is the tag of the program read: the caller checks it against
	// the program it meant, whose ID may have been reused meanwhile.
	Tag [8]byte
	// Rodata is true when the program uses a map named "*.rodata" (its
	// loader may still bind one later, as libbpf does right after the
	// load with BPF_PROG_BIND_MAP).
	Rodata bool
	// Vars are the bpf_metadata_* variables keyed without the prefix
	// ("gadget_id"): char arrays as text up to the first NUL, integers in
	// decimal, other types left out. nil when there are none.
	Vars map[string]string
}

// sysMapInfoBTF is struct bpf_map_info up to btf_value_type_id.
type sysMapInfoBTF struct {
	sysMapInfo
	Ifindex               uint32 // 40
	BTFVmlinuxValueTypeID uint32 // 44
	NetnsDev              uint64 // 48
	NetnsIno              uint64 // 56
	BTFID                 uint32 // 64
	BTFKeyTypeID          uint32 // 68
	BTFValueTypeID        uint32 // 72
}

// sysBTFInfo is struct bpf_btf_info up to id.
type sysBTFInfo struct {
	BTF     uint64 // pointer to the raw BTF
	BTFSize uint32
	ID      uint32
}

// sysMapElemAttr is the union bpf_attr member of BPF_MAP_LOOKUP_ELEM.
type sysMapElemAttr struct {
	MapFD uint32
	_     uint32
	Key   uint64
	Value uint64
	Flags uint64
}

// bpfFRdonly is BPF_F_RDONLY: open a map read-only.
const bpfFRdonly = 1 << 3

// metadataKey names one .rodata map's contents: a map's ID and its BTF's
// ID, both reused only after their objects are gone.
type metadataKey struct{ mapID, btfID uint32 }

// metadataCacheMax bounds the cache of .rodata contents; it starts over
// when full.
const metadataCacheMax = 4096

// ReadProgramMetadata reads the bpf_metadata_* variables of program id
// from the .rodata map it uses, as "bpftool prog show" does: the map's
// BTF gives the variables' offsets in its DATASEC, one lookup of key 0
// their values. A program without a .rodata map costs one info read per
// map it uses; the variables of one .rodata map are read once and cached
// (they cannot change: the map is frozen), so the programs of one object
// share one read. An error wrapping os.ErrNotExist means the program is
// gone. Requires Linux 5.2 (map BTF with a DATASEC); before, no program
// has any.
func (k *Kernel) ReadProgramMetadata(id uint32) (ProgramMetadata, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	fd, err := bpfFDByID(unix.BPF_PROG_GET_FD_BY_ID, id)
	if err != nil {
		return ProgramMetadata{}, fmt.Errorf("opening program %d: %w", id, errNotExist(err))
	}
	err = k.readProgramFD(fd)
	unix.Close(fd)
	if err != nil {
		return ProgramMetadata{}, fmt.Errorf("reading info of program %d: %w", id, err)
	}
	md := ProgramMetadata{Tag: k.progInfo.Tag}
	for _, mapID := range k.mapIDs[:k.progInfo.NrMapIDs] {
		found, vars, err := k.rodataVars(mapID)
		if err != nil {
			return md, fmt.Errorf("reading metadata of program %d: %w", id, err)
		}
		if found {
			md.Rodata, md.Vars = true, vars
			break
		}
	}
	return md, nil
}

// rodataVars reads the bpf_metadata_* variables of map mapID when it is a
// .rodata map with BTF; found is false for any other map, or one gone.
func (k *Kernel) rodataVars(mapID uint32) (found bool, vars map[string]string, err error) {
	// Read-only: the tracker never writes a map.
	attr := sysIDAttr{ID: mapID, OpenFlags: bpfFRdonly}
	fd, err := bpfSyscall(unix.BPF_MAP_GET_FD_BY_ID, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return false, nil, nil // gone with the program, or not ours to read
	}
	defer unix.Close(fd)
	info := &k.metaMapInfo
	*info = sysMapInfoBTF{}
	if err := bpfObjInfo(fd, unsafe.Pointer(info), unsafe.Sizeof(*info)); err != nil {
		return false, nil, fmt.Errorf("reading info of map %d: %w", mapID, err)
	}
	if !bytes.HasSuffix(cString(info.Name[:]), []byte(rodataSuffix)) {
		return false, nil, nil
	}
	if info.BTFID == 0 || info.BTFValueTypeID == 0 || info.MaxEntries == 0 {
		return true, nil, nil // no BTF: nothing says where the variables are
	}
	key := metadataKey{mapID: mapID, btfID: info.BTFID}
	if vars, ok := k.metaCache[key]; ok {
		return true, vars, nil
	}
	vars, err = readRodataVars(fd, info)
	if err != nil {
		return true, nil, fmt.Errorf("map %d: %w", mapID, err)
	}
	if k.metaCache == nil || len(k.metaCache) >= metadataCacheMax {
		k.metaCache = make(map[metadataKey]map[string]string)
	}
	k.metaCache[key] = vars
	return true, vars, nil
}

// readRodataVars finds the bpf_metadata_* variables in the DATASEC that
// is the value type of the .rodata map fd and decodes them from its value.
func readRodataVars(fd int, info *sysMapInfoBTF) (map[string]string, error) {
	spec, err := readBTF(info.BTFID)
	if err != nil {
		return nil, err
	}
	typ, err := spec.TypeByID(btf.TypeID(info.BTFValueTypeID))
	if err != nil {
		return nil, fmt.Errorf("value type of BTF %d: %w", info.BTFID, err)
	}
	sec, ok := typ.(*btf.Datasec)
	if !ok {
		return nil, nil
	}
	var value []byte
	var vars map[string]string
	for _, vs := range sec.Vars {
		v, ok := vs.Type.(*btf.Var)
		if !ok || !strings.HasPrefix(v.Name, MetadataPrefix) {
			continue
		}
		if value == nil {
			if value, err = lookupKeyZero(fd, info.ValueSize); err != nil {
				return nil, err
			}
		}
		end := uint64(vs.Offset) + uint64(vs.Size)
		if end > uint64(len(value)) {
			continue
		}
		text, ok := formatVar(v.Type, value[vs.Offset:end])
		if !ok {
			continue
		}
		if vars == nil {
			vars = make(map[string]string, 4)
		}
		vars[strings.TrimPrefix(v.Name, MetadataPrefix)] = text
	}
	return vars, nil
}

// readBTF loads and parses the BTF object id.
func readBTF(id uint32) (*btf.Spec, error) {
	fd, err := bpfFDByID(unix.BPF_BTF_GET_FD_BY_ID, id)
	if err != nil {
		return nil, fmt.Errorf("opening BTF %d: %w", id, err)
	}
	defer unix.Close(fd)
	info := &sysBTFInfo{}
	if err := bpfObjInfo(fd, unsafe.Pointer(info), unsafe.Sizeof(*info)); err != nil {
		return nil, fmt.Errorf("reading size of BTF %d: %w", id, err)
	}
	raw := make([]byte, info.BTFSize)
	if len(raw) == 0 {
		return nil, fmt.Errorf("BTF %d is empty", id)
	}
	*info = sysBTFInfo{BTF: uint64(uintptr(unsafe.Pointer(&raw[0]))), BTFSize: uint32(len(raw))}
	if err := bpfObjInfo(fd, unsafe.Pointer(info), unsafe.Sizeof(*info)); err != nil {
		return nil, fmt.Errorf("reading BTF %d: %w", id, err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw[:min(int(info.BTFSize), len(raw))]))
	if err != nil {
		return nil, fmt.Errorf("parsing BTF %d: %w", id, err)
	}
	return spec, nil
}

// lookupKeyZero returns the value of key 0 of an array map fd.
func lookupKeyZero(fd int, valueSize uint32) ([]byte, error) {
	key := new(uint32)
	value := make([]byte, max(valueSize, 1))
	attr := &sysMapElemAttr{
		MapFD: uint32(fd),
		Key:   uint64(uintptr(unsafe.Pointer(key))),
		Value: uint64(uintptr(unsafe.Pointer(&value[0]))),
	}
	_, err := bpfSyscall(unix.BPF_MAP_LOOKUP_ELEM, unsafe.Pointer(attr), unsafe.Sizeof(*attr))
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	if err != nil {
		return nil, fmt.Errorf("looking up key 0: %w", err)
	}
	return value[:valueSize], nil
}

// formatVar renders a variable of type typ stored in b: a char array as
// text up to its first NUL, an integer in decimal (as bpftool does).
func formatVar(typ btf.Type, b []byte) (string, bool) {
	switch t := btf.UnderlyingType(typ).(type) {
	case *btf.Array:
		if elem, ok := btf.UnderlyingType(t.Type).(*btf.Int); ok && elem.Size == 1 {
			return string(cString(b)), true
		}
	case *btf.Int:
		if int(t.Size) != len(b) {
			return "", false
		}
		var u uint64
		switch t.Size {
		case 1:
			u = uint64(b[0])
		case 2:
			u = uint64(binary.NativeEndian.Uint16(b))
		case 4:
			u = uint64(binary.NativeEndian.Uint32(b))
		case 8:
			u = binary.NativeEndian.Uint64(b)
		default:
			return "", false
		}
		if t.Encoding == btf.Signed {
			shift := 64 - 8*t.Size
			return strconv.FormatInt(int64(u<<shift)>>shift, 10), true
		}
		if t.Encoding == btf.Bool {
			return strconv.FormatBool(u != 0), true
		}
		return strconv.FormatUint(u, 10), true
	}
	return "", false
}
