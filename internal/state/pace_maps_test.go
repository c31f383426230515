package state

import (
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
