package loader

import (
	"sync"

	"github.com/cilium/ebpf"
)

// mapShape is what the memlock of a map of a shapeFixed type is a
// function of: two such maps of one shape have the same memlock.
type mapShape struct {
	typ, keySize, valueSize, maxEntries, flags uint32
}

// bpfFNoPrealloc is BPF_F_NO_PREALLOC.
const bpfFNoPrealloc = 1

// shapeFixed reports whether the memlock the kernel reports for a map of
// mi's type and flags is a function of its shape alone (type, key and
// value sizes, max_entries, flags), fixed when the map is created: the
// arrays, and the hash maps that preallocate every element. Up to Linux
// 6.3 that holds for every map (memlock is the charge computed from the
// shape at creation, or the footprint computed from it since 5.11);
// since 6.4 each type reports its own usage, and the hash maps without
// preallocation, the tries, the storage maps, sockhash and the devmaps
// count the elements they hold. Per-CPU types also count the possible
// CPUs, fixed while the system runs. Only the types listed here are
// trusted to be fixed; the others are read one by one.
func shapeFixed(mi *sysMapInfo) bool {
	switch ebpf.MapType(mi.Type) {
	case ebpf.Array, ebpf.PerCPUArray, ebpf.ProgramArray, ebpf.PerfEventArray,
		ebpf.CGroupArray, ebpf.ArrayOfMaps, ebpf.RingBuf:
		return true
	case ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash, ebpf.HashOfMaps:
		return mi.MapFlags&bpfFNoPrealloc == 0
	}
	return false
}

// memlockByShape remembers the memlock read from the fdinfo of one map of
// each shape, for the other maps of that shape: on a node whose agents
// create thousands of maps of a few shapes, a map read is then two
// bpf(2) calls instead of that and an open and read of /proc (two thirds
// of its cost). It lives for one ReadMaps call and is shared by its
// workers.
type memlockByShape struct {
	mu     sync.Mutex
	shapes map[mapShape]uint64
}

// shapeOf returns mi's shape and whether its memlock is fixed by it.
func shapeOf(mi *sysMapInfo) (mapShape, bool) {
	if !shapeFixed(mi) {
		return mapShape{}, false
	}
	return mapShape{mi.Type, mi.KeySize, mi.ValueSize, mi.MaxEntries, mi.MapFlags}, true
}

// get returns the memlock of a map of mi's shape read before, if any.
func (m *memlockByShape) get(mi *sysMapInfo) (uint64, bool) {
	s, ok := shapeOf(mi)
	if !ok || m == nil {
		return 0, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	memlock, ok := m.shapes[s]
	return memlock, ok
}

// put remembers the memlock of a map of mi's shape.
func (m *memlockByShape) put(mi *sysMapInfo, memlock uint64) {
	s, ok := shapeOf(mi)
	if !ok || m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.shapes == nil {
		m.shapes = make(map[mapShape]uint64)
	}
	m.shapes[s] = memlock
}

// MemlockGrows reports whether the memlock of a map like info follows
// what it holds (Linux 6.4+), so that a reader keeping it must read it
// again: maps without preallocation (BPF_F_NO_PREALLOC: hash maps, tries,
// storage maps), sockhash maps and devmaps. Before 6.4 their value is
// fixed too.
func (info *MapInfo) MemlockGrows() bool {
	switch ebpf.MapType(info.Type) {
	case ebpf.SockHash, ebpf.DevMap, ebpf.DevMapHash:
		return true
	}
	return info.Flags&bpfFNoPrealloc != 0
}
