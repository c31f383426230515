// Package register tells the bpfstats tracker which gadget a program
// belongs to, for runners that cannot label their programs' objects.
//
// A registration is one entry of a BPF hash map the tracker pins at
// DefaultPath: the key is the program's ID and tag (Key), the value the
// gadget's ID, name and image (Value). It lives in the kernel, so the
// tracker need not run when a runner registers, and a restarted tracker
// finds every registration again; the tracker removes the entry once the
// program is gone. Labels in the program's own object
// (bpf_metadata_gadget_*) win over a registration; a registration wins
// over the loader's environment (BPFSTATS_GADGET_*). See
// docs/registration.md for the byte layout and a bpftool command line.
//
// Registering needs what loading needs (CAP_BPF, or CAP_SYS_ADMIN before
// Linux 5.8) and write access to the pinned map (mode 0600, owned by
// root). Requires Linux 4.4 (pinned maps).
package register

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Registry is the tracker's registry map, opened for writing.
type Registry struct {
	m *ebpf.Map
}

// Open opens the registry map pinned at path (DefaultPath, unless the
// tracker was told another with --registry). The tracker creates it when
// it starts: a missing map means no tracker ran since the bpffs was
// mounted (or --registry is off), and is an error wrapping os.ErrNotExist.
func Open(path string) (*Registry, error) {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return nil, fmt.Errorf("opening registry %s: %w", path, err)
	}
	if err := CheckMap(m.Type(), m.KeySize(), m.ValueSize()); err != nil {
		m.Close()
		return nil, fmt.Errorf("registry %s: %w", path, err)
	}
	return &Registry{m: m}, nil
}

// CheckMap returns an error unless a map of type typ with keys and values
// of those sizes has the registry's layout.
func CheckMap(typ ebpf.MapType, keySize, valueSize uint32) error {
	if typ != ebpf.Hash || keySize != KeySize || valueSize != ValueSize {
		return fmt.Errorf("not a registry map: %s with %d-byte keys and %d-byte values, want %s with %d and %d",
			typ, keySize, valueSize, ebpf.Hash, KeySize, ValueSize)
	}
	return nil
}

// Register records that the program progID belongs to gadget g, replacing
// any earlier registration of it. It opens the program by ID to read its
// tag, which needs CAP_SYS_ADMIN; RegisterProgram does not.
func (r *Registry) Register(progID uint32, g Gadget) error {
	attr := &struct{ id, next, openFlags uint32 }{id: progID}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_GET_FD_BY_ID, uintptr(unsafe.Pointer(attr)), unsafe.Sizeof(*attr))
	if errno != 0 {
		return fmt.Errorf("opening program %d: %w", progID, errno)
	}
	defer unix.Close(int(fd))
	return r.register(int(fd), g)
}

// RegisterProgram records that prog belongs to gadget g, replacing any
// earlier registration of it.
func (r *Registry) RegisterProgram(prog *ebpf.Program, g Gadget) error {
	return r.register(prog.FD(), g)
}

func (r *Registry) register(progFD int, g Gadget) error {
	if r.m == nil {
		return errors.New("registry is closed")
	}
	key, err := programKey(progFD)
	if err != nil {
		return err
	}
	value, err := NewValue(g)
	if err != nil {
		return fmt.Errorf("registering program %d: %w", key.ProgID, err)
	}
	if err := r.m.Update(&key, &value, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("registering program %d: %w", key.ProgID, err)
	}
	return nil
}

// Close closes the map; registrations stay. It is idempotent.
func (r *Registry) Close() error {
	if r.m == nil {
		return nil
	}
	err := r.m.Close()
	r.m = nil
	return err
}

// Register records in the registry at DefaultPath that the program progID
// belongs to gadget g (see Registry.Register).
func Register(progID uint32, g Gadget) error {
	r, err := Open(DefaultPath)
	if err != nil {
		return err
	}
	defer r.Close()
	return r.Register(progID, g)
}

// RegisterProgram records in the registry at DefaultPath that prog
// belongs to gadget g (see Registry.RegisterProgram).
func RegisterProgram(prog *ebpf.Program, g Gadget) error {
	r, err := Open(DefaultPath)
	if err != nil {
		return err
	}
	defer r.Close()
	return r.RegisterProgram(prog, g)
}

// programKey reads the ID and tag of the program fd. It reads them with
// one BPF_OBJ_GET_INFO_BY_FD rather than ebpf.Program.Info, which may
// load feature probes.
func programKey(fd int) (Key, error) {
	// struct bpf_prog_info up to tag; the kernel fills what info_len asks.
	info := new(struct {
		typ, id uint32
		tag     [8]byte
	})
	// info is an unsafe.Pointer (the __u64 of 64-bit targets) so that
	// the runtime keeps it valid if the stack moves.
	attr := &struct {
		fd, infoLen uint32
		info        unsafe.Pointer
	}{uint32(fd), uint32(unsafe.Sizeof(*info)), unsafe.Pointer(info)}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET_INFO_BY_FD, uintptr(unsafe.Pointer(attr)), unsafe.Sizeof(*attr))
	if errno != 0 {
		return Key{}, fmt.Errorf("reading program info: %w", errno)
	}
	return Key{ProgID: info.id, Tag: info.tag}, nil
}
