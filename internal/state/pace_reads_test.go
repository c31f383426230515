package state

import (
	"slices"
	"testing"

	"github.com/bpfstats/tracker/internal/loader"
)

// stallingMapKernel is a fake kernel reading maps in batches whose first
// batch stops until the test releases it.
type stallingMapKernel struct {
	*fakeKernel
	reading chan struct{}
	resume  chan struct{}
	stalled bool
}

func (k *stallingMapKernel) ReadMaps(ids []uint32, fn func(uint32, *loader.MapInfo, error)) {
	if !k.stalled {
		k.stalled = true
		close(k.reading)
		<-k.resume
	}
	for _, id := range ids {
		info, err := k.ReadMap(id)
		fn(id, &info, err)
	}
}

// An event is applied, and published, while a sweep reads a batch of
// maps (thousands of maps take tens of milliseconds): it does not wait
// for the read, and the maps read count in the snapshot after it.
func TestRunAppliesEventsDuringMapRead(t *testing.T) {
	const n = 2 * mapBatchMin
	fk := newFakeKernel()
	k := &stallingMapKernel{fakeKernel: fk, reading: make(chan struct{}), resume: make(chan struct{})}
	for id := uint32(1); id <= n; id++ {
		p := progStats(id, 10, 1)
		p.MapIDs = []uint32{1000 + id}
		fk.progs[id] = p
		fk.maps[1000+id] = loader.MapInfo{ID: 1000 + id, Memlock: 4096}
	}
	const late = n + 1
	fk.progs[late] = progStats(late, 10, 1)
	tr := New(k, Options{Node: "n1", Source: "test"})
	snap := loadDuringStall(t, tr, k.reading, k.resume, late, 1)
	var memlock uint64
	for _, r := range snap.Programs {
		memlock += r.MapMemory
	}
	if len(snap.Programs) != n+1 || memlock != n*4096 {
		t.Fatalf("snapshot: %d programs, map memory %d, want %d and %d", len(snap.Programs), memlock, n+1, n*4096)
	}
}

// mapBatchKernel is a fakeKernel that reads maps in batches.
type mapBatchKernel struct{ *fakeKernel }

func (k mapBatchKernel) ReadMaps(ids []uint32, fn func(uint32, *loader.MapInfo, error)) {
	for _, id := range ids {
		info, err := k.ReadMap(id)
		fn(id, &info, err)
	}
}

// yieldCounter is the inline pacer, counting its yields and its yields
// to loads.
type yieldCounter struct {
	inline
	yields, loads int
}

func (c *yieldCounter) yield() { c.yields++ }

func (c *yieldCounter) yieldLoads() { c.loads++ }

// Reading the maps of thousands of programs yields to events every
// yieldEvery programs or maps in each of its passes, not only while it
// reads: the passes over every map take milliseconds too.
func TestReadMapsYieldsInEveryPass(t *testing.T) {
	const n = 20 * yieldEvery
	fk := newFakeKernel()
	for id := uint32(1); id <= n; id++ {
		p := progStats(id, 10, 1)
		p.MapIDs = []uint32{100000 + id}
		fk.progs[id] = p
		fk.maps[100000+id] = loader.MapInfo{ID: 100000 + id, Memlock: 4096}
	}
	tr := New(mapBatchKernel{fk}, Options{Node: "n1", Source: "test"})
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	c := &yieldCounter{}
	tr.pace = c
	if err := tr.readAll(); err != nil {
		t.Fatal(err)
	}
	tr.readMaps() // the maps are known from here on
	tr.mapsStale, c.yields = true, 0
	tr.readMaps()
	// The batch's pass over programs, clearing the used marks, the pass
	// over programs and forgetting unused maps: 20 yields each.
	if want := 4 * 20; c.yields < want {
		t.Fatalf("%d yields reading the maps of %d programs, want at least %d", c.yields, n, want)
	}
	if len(tr.maps) != n {
		t.Fatalf("%d maps known, want %d", len(tr.maps), n)
	}
}

// stallingLinkKernel is a linkKernel whose first walk of the links stops
// until the test releases it.
type stallingLinkKernel struct {
	*linkKernel
	reading, resume chan struct{}
	stalled         bool
}

func (k *stallingLinkKernel) ReadAttachments(fn func(progID uint32, attach string)) error {
	if !k.stalled {
		k.stalled = true
		close(k.reading)
		<-k.resume
	}
	return k.linkKernel.ReadAttachments(fn)
}

// An event is applied, and published, while a sweep walks the links (a
// node with thousands of links takes milliseconds): it does not wait for
// the walk.
func TestRunAppliesEventsDuringLinkWalk(t *testing.T) {
	lk := &linkKernel{fakeKernel: newFakeKernel(), links: []attachment{{1, "xdp:lo"}}}
	lk.progs[1] = progStats(1, 10, 1)
	const late = 2
	lk.progs[late] = progStats(late, 10, 1)
	k := &stallingLinkKernel{linkKernel: lk, reading: make(chan struct{}), resume: make(chan struct{})}
	tr := New(k, Options{Node: "n1", Source: "test"})
	snap := loadDuringStall(t, tr, k.reading, k.resume, late, 1)
	if r := programRow(t, snap, 1); !slices.Equal(r.Attach, []string{"xdp:lo"}) {
		t.Fatalf("program 1 attached to %q after the walk, want xdp:lo", r.Attach)
	}
}
