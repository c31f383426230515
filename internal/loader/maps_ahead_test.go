package loader

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfstats/tracker/internal/testutil"
)

// newTestMap creates a map for the test and returns its ID.
func newTestMap(t *testing.T, spec *ebpf.MapSpec) uint32 {
	t.Helper()
	m, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal("creating BPF map: ", err)
	}
	t.Cleanup(func() { m.Close() })
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return uint32(id)
}

// newMixedMaps creates n maps of two kinds and sizes (arrays and hashes,
// alternating) and returns their IDs.
func newMixedMaps(t *testing.T, n int) []uint32 {
	t.Helper()
	var ids []uint32
	for i := range n {
		spec := &ebpf.MapSpec{Name: "tk_rm_arr", Type: ebpf.Array, KeySize: 4, ValueSize: 8 + uint32(i), MaxEntries: 16}
		if i%2 == 1 {
			spec = &ebpf.MapSpec{Name: "tk_rm_hash", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 64 + uint32(i)}
		}
		ids = append(ids, newTestMap(t, spec))
	}
	return ids
}

// A OneSweep Kernel's early read of every map serves ReadMaps with the
// values a read now gives (memlock equal to bpftool's), each once; a map
// created after it is read when asked for.
func TestMapsAheadServesReadMaps(t *testing.T) {
	testutil.RequireRoot(t)
	k, err := NewKernelWithOptions(KernelOptions{OneSweep: true, NoIterators: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	early := newMixedMaps(t, 2*mapsPerWorker)
	k.mu.Lock()
	k.mapsAhead = startMapsAhead(nil)
	k.mu.Unlock()
	late := newTestMap(t, &ebpf.MapSpec{Name: "tk_ahead_late", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 2})

	// Every early map was read ahead, and the late one may or may not
	// have been (the walk may still have been running when it came).
	<-k.mapsAhead.done
	for _, id := range early {
		if k.mapsAhead.infos[id] == nil {
			t.Fatalf("map %d, created before the early read, missing from it", id)
		}
	}
	ids := append(early, late)
	i := 0
	k.ReadMaps(ids, func(id uint32, info *MapInfo, err error) {
		if id != ids[i] {
			t.Fatalf("call %d for map %d, want %d (the order of ids)", i, id, ids[i])
		}
		i++
		if err != nil {
			t.Fatalf("map %d: %v", id, err)
		}
		want, err := k.ReadMap(id)
		if err != nil {
			t.Fatal(err)
		}
		if *info != want {
			t.Errorf("map %d: ReadMaps %+v, ReadMap now %+v", id, *info, want)
		}
		if i%29 == 1 || id == late { // bpftool is slow: a sample
			checkMemlockByBpftool(t, id, info.Memlock)
		}
	})
	if i != len(ids) {
		t.Fatalf("%d calls for %d IDs", i, len(ids))
	}
	for _, id := range ids {
		if k.mapsAhead.infos[id] != nil {
			t.Errorf("map %d: its early read is still kept after ReadMaps took it", id)
		}
	}
}
