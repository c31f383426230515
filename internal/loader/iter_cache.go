package loader

import (
	"cmp"
	"slices"
)

// nameCache interns program names, so that reading the same programs
// every sweep does not allocate their names again.
type nameCache struct {
	m    map[string]string
	last string // programs listed together often share a name
}

// nameCacheMax bounds a nameCache; it starts over when full.
const nameCacheMax = 1 << 14

func (c *nameCache) intern(b []byte) string {
	if string(b) == c.last {
		return c.last
	}
	s, ok := c.m[string(b)]
	if !ok {
		if c.m == nil || len(c.m) >= nameCacheMax {
			c.m = make(map[string]string)
		}
		s = string(b)
		c.m[s] = s
	}
	c.last = s
	return s
}

// knownProg is what ReadPrograms remembers of a program from one sweep
// to the next: its map IDs, which stay valid while its tag and map count
// do (BPF_PROG_BIND_MAP only appends), and what is fixed at load, which
// the stats iterator then leaves out. The ID alone names one program
// until the kernel's cyclic ID allocator wraps, after 2^31 more loads;
// the tag (a hash of its instructions) tells a reused ID apart unless the
// new program is the same code with the same maps.
type knownProg struct {
	id       uint32
	nrMaps   uint32
	loadTime uint64
	off      uint32 // of the first map ID in progCache.mapIDs
	knownIdentity
}

// knownIdentity is what of a program is fixed at load: its type, tag and
// name.
type knownIdentity struct {
	typ  uint32
	tag  [8]byte
	name string
}

// progCache holds the map IDs of the programs of the last sweep, in
// ascending ID order like the iterator's output.
type progCache struct {
	progs  []knownProg
	mapIDs []uint32
}

func (c *progCache) reset() {
	c.progs = c.progs[:0]
	c.mapIDs = c.mapIDs[:0]
}

func (c *progCache) add(id uint32, loadTime uint64, ident knownIdentity, mapIDs []uint32) {
	c.progs = append(c.progs, knownProg{id: id, nrMaps: uint32(len(mapIDs)), loadTime: loadTime, off: uint32(len(c.mapIDs)), knownIdentity: ident})
	c.mapIDs = append(c.mapIDs, mapIDs...)
}

// insert adds a program out of ID order.
func (c *progCache) insert(id uint32, loadTime uint64, ident knownIdentity, mapIDs []uint32) {
	i, found := slices.BinarySearchFunc(c.progs, id, func(p knownProg, id uint32) int { return cmp.Compare(p.id, id) })
	kp := knownProg{id: id, nrMaps: uint32(len(mapIDs)), loadTime: loadTime, off: uint32(len(c.mapIDs)), knownIdentity: ident}
	c.mapIDs = append(c.mapIDs, mapIDs...)
	if found {
		c.progs[i] = kp
		return
	}
	c.progs = slices.Insert(c.progs, i, kp)
}

func (c *progCache) ids(kp *knownProg) []uint32 { return c.mapIDs[kp.off : kp.off+kp.nrMaps] }

// compactKnown rewrites k.known's map IDs without those of programs gone
// (left behind when the cache is kept in place) once they outnumber the
// live ones, live being how many its programs hold; k.knownNext is the
// scratch space, so that steady sweeps allocate nothing.
func (k *Kernel) compactKnown(live int) {
	if len(k.known.mapIDs) <= 2*live+1024 {
		return
	}
	next := &k.knownNext
	next.reset()
	for i := range k.known.progs {
		p := &k.known.progs[i]
		next.add(p.id, p.loadTime, p.knownIdentity, k.known.ids(p))
	}
	k.known, k.knownNext = k.knownNext, k.known
}

// idSet is a reusable set of IDs: a bitmap over their range when it is
// small, a map otherwise.
type idSet struct {
	base uint32
	bits []uint64
	m    map[uint32]struct{}
}

// idSetMaxRange is the widest ID range kept as a bitmap (512 KiB).
const idSetMaxRange = 1 << 22

func (s *idSet) reset(ids []uint32) {
	s.m = nil
	if len(ids) == 0 {
		s.bits = s.bits[:0]
		return
	}
	lo, hi := slices.Min(ids), slices.Max(ids)
	if hi-lo >= idSetMaxRange {
		s.bits = s.bits[:0]
		s.m = make(map[uint32]struct{}, len(ids))
		for _, id := range ids {
			s.m[id] = struct{}{}
		}
		return
	}
	words := int((hi-lo)/64 + 1)
	if cap(s.bits) < words {
		s.bits = make([]uint64, words)
	} else {
		s.bits = s.bits[:words]
		clear(s.bits)
	}
	s.base = lo
	for _, id := range ids {
		off := id - lo
		s.bits[off/64] |= 1 << (off % 64)
	}
}

// take removes id and reports whether it was in the set.
func (s *idSet) take(id uint32) bool {
	if s.m != nil {
		_, ok := s.m[id]
		delete(s.m, id)
		return ok
	}
	if id < s.base {
		return false
	}
	off := id - s.base
	w := int(off / 64)
	if w >= len(s.bits) {
		return false
	}
	bit := uint64(1) << (off % 64)
	ok := s.bits[w]&bit != 0
	s.bits[w] &^= bit
	return ok
}

// has reports whether id is in the set.
func (s *idSet) has(id uint32) bool {
	if s.m != nil {
		_, ok := s.m[id]
		return ok
	}
	if id < s.base {
		return false
	}
	off := id - s.base
	w := int(off / 64)
	return w < len(s.bits) && s.bits[w]&(1<<(off%64)) != 0
}
