package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/pkg/register"
)

// Registration is one entry of the registry map: a runner said that the
// program ProgID with tag Tag belongs to Gadget (its labels cleaned, see
// register.Value.Gadget).
type Registration struct {
	ProgID uint32
	Tag    [8]byte
	Gadget register.Gadget
}

// Registry is the registration map the tracker pins on the bpffs, where
// runners that cannot label their objects register their programs (see
// package register for the layout). It holds no fd: every call opens the
// pin, so that a map removed and created again is the one read, and
// there is nothing to close.
type Registry struct {
	path string
	// keys and values are the batch lookup buffers, kept between reads.
	keys   []register.Key
	values []register.Value
	regs   []Registration
}

// registryBatch is how many entries one batch lookup reads.
const registryBatch = 256

// Registry file modes: only root reads and writes the map, only root
// enters its directory. An existing map keeps its mode: an operator may
// open it to a group of runners.
const (
	registryDirMode = 0o700
	registryMapMode = 0o600
)

// OpenRegistry returns the registry pinned at path, creating the map
// (and its directory) when absent: a hash map of register.MaxEntries
// entries allocated as they are inserted, mode 0600. An existing map must
// have the registry's layout. path must be on a bpffs. Requires Linux 4.6
// (BPF_F_NO_PREALLOC).
func OpenRegistry(path string) (*Registry, error) {
	r := &Registry{path: path}
	m, err := r.open()
	if err != nil {
		return nil, err
	}
	m.Close()
	return r, nil
}

// Path is where the registry is pinned.
func (r *Registry) Path() string { return r.path }

// open opens the pinned map, pinning a new one when there is none.
func (r *Registry) open() (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(r.path, nil)
	if errors.Is(err, os.ErrNotExist) {
		m, err = createRegistry(r.path)
	}
	if err != nil {
		return nil, fmt.Errorf("opening registry %s: %w", r.path, err)
	}
	if err := register.CheckMap(m.Type(), m.KeySize(), m.ValueSize()); err != nil {
		m.Close()
		return nil, fmt.Errorf("registry %s: %w", r.path, err)
	}
	return m, nil
}

// createRegistry creates the registry map and pins it at path. When
// another tracker pinned one first, that one is opened.
func createRegistry(path string) (*ebpf.Map, error) {
	dir := filepath.Dir(path)
	if err := checkBPFFS(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, registryDirMode); err != nil {
		return nil, fmt.Errorf("creating the registry directory: %w", err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       register.MapName,
		Type:       ebpf.Hash,
		KeySize:    register.KeySize,
		ValueSize:  register.ValueSize,
		MaxEntries: register.MaxEntries,
		Flags:      unix.BPF_F_NO_PREALLOC,
	})
	if err != nil {
		return nil, fmt.Errorf("creating the registry map: %w", err)
	}
	if err := m.Pin(path); err != nil {
		m.Close()
		if errors.Is(err, os.ErrExist) {
			return ebpf.LoadPinnedMap(path, nil)
		}
		return nil, fmt.Errorf("pinning the registry map: %w", err)
	}
	// The kernel pins with 0600 less the umask; say it explicitly.
	if err := os.Chmod(path, registryMapMode); err != nil {
		m.Close()
		return nil, fmt.Errorf("setting the registry's mode: %w", err)
	}
	return m, nil
}

// checkBPFFS returns an error unless dir, or its closest existing parent,
// is on a bpffs: pins live nowhere else, and mkdir on sysfs fails with
// an error that does not say so.
func checkBPFFS(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		var st unix.Statfs_t
		err := unix.Statfs(d, &st)
		if errors.Is(err, unix.ENOENT) && d != filepath.Dir(d) {
			continue
		}
		if err != nil {
			return fmt.Errorf("checking %s: %w", d, err)
		}
		if st.Type != unix.BPF_FS_MAGIC {
			return fmt.Errorf("%s is not on a bpf filesystem (%s is not a bpffs: mount one, as systemd does with mount -t bpf bpf /sys/fs/bpf)", dir, d)
		}
		return nil
	}
}

// Registrations reads every entry of the registry, in one batch lookup
// when the kernel has them (Linux 5.6), else one lookup per entry. The
// slice is valid until the next call.
func (r *Registry) Registrations() ([]Registration, error) {
	m, err := r.open()
	if err != nil {
		return nil, err
	}
	defer m.Close()
	r.regs = r.regs[:0]
	err = r.readBatches(m)
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.ENOSPC) {
		// No batch operations, or a hash bucket larger than the batch.
		r.regs = r.regs[:0]
		err = r.readEach(m)
	}
	if err != nil {
		return nil, fmt.Errorf("reading registry %s: %w", r.path, err)
	}
	return r.regs, nil
}

func (r *Registry) readBatches(m *ebpf.Map) error {
	if r.keys == nil {
		r.keys = make([]register.Key, registryBatch)
		r.values = make([]register.Value, registryBatch)
	}
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, r.keys, r.values, nil)
		for i := range n {
			r.add(&r.keys[i], &r.values[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (r *Registry) readEach(m *ebpf.Map) error {
	var key register.Key
	var value register.Value
	it := m.Iterate()
	for it.Next(&key, &value) {
		r.add(&key, &value)
	}
	return it.Err()
}

func (r *Registry) add(key *register.Key, value *register.Value) {
	r.regs = append(r.regs, Registration{ProgID: key.ProgID, Tag: key.Tag, Gadget: value.Gadget()})
}

// Remove deletes the entries of regs (those of programs that are gone)
// and returns how many it deleted; an entry already gone is not an error.
func (r *Registry) Remove(regs []Registration) (int, error) {
	if len(regs) == 0 {
		return 0, nil
	}
	m, err := r.open()
	if err != nil {
		return 0, err
	}
	defer m.Close()
	removed := 0
	var errs []error
	for _, reg := range regs {
		err := m.Delete(&register.Key{ProgID: reg.ProgID, Tag: reg.Tag})
		switch {
		case err == nil:
			removed++
		case !errors.Is(err, ebpf.ErrKeyNotExist):
			errs = append(errs, fmt.Errorf("removing the registration of program %d: %w", reg.ProgID, err))
		}
	}
	return removed, errors.Join(errs...)
}
