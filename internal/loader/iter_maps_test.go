package loader

import (
	"errors"
	"os"
	"slices"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/bpfstats/tracker/internal/testutil"
)

// The map iterator lists each map as bpf(2) describes it, and ReadMaps
// through it gives ReadMap's values: a map gone before the call is
// os.ErrNotExist, one created after the iterator's run is read anyway.
func TestReadMapsThroughIterator(t *testing.T) {
	testutil.RequireRoot(t)
	testReadMapsThroughIterator(t)
}

// TestReadMapsThroughIterator in the kernels of the VM matrix, where
// struct bpf_map is laid out differently.
func TestVMReadMapsThroughIterator(t *testing.T) {
	requireVM(t)
	testReadMapsThroughIterator(t)
}

func testReadMapsThroughIterator(t *testing.T) {
	k := newKernel(t)
	testutil.SkipIfUnsupported(t, k.MapIterator(), "iter/bpf_map")
	ids := newMixedMaps(t, mapIterMin+3*mapsPerWorker)
	for variant := range uint32(2) {
		for _, spec := range shapeSpecs(variant) {
			spec.Name = "tk_iter_shape"
			ids = append(ids, newTestMap(t, spec))
		}
	}
	gone, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	ginfo, _ := gone.Info()
	goneID, _ := ginfo.ID()
	gone.Close()
	ids = append(ids, uint32(goneID))
	slices.Sort(ids)

	known, listed, ok := k.listMaps(ids)
	if !ok {
		t.Fatal("listMaps did not use the iterator")
	}
	for i, id := range ids {
		if id == uint32(goneID) {
			if listed[i] {
				t.Errorf("gone map %d listed", id)
			}
			continue
		}
		if !listed[i] {
			t.Fatalf("map %d not listed", id)
		}
		want := bpfMapInfoOf(t, id)
		if known[i] != want {
			t.Errorf("map %d: iterator says %+v, bpf(2) %+v", id, known[i], want)
		}
	}

	// A late map: past the iterator's run when the read is a OneSweep
	// Kernel's (its listing is kept from the load), and in any case
	// read like the others.
	late := newTestMap(t, &ebpf.MapSpec{Name: "tk_iter_late", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 3})
	ids = append(ids, late)
	readMapsAsReadMap(t, k, ids, uint32(goneID))
}

// readMapsAsReadMap checks that ReadMaps calls back once per map of ids
// with ReadMap's values, and os.ErrNotExist for the map gone (0: none).
func readMapsAsReadMap(t *testing.T, k *Kernel, ids []uint32, gone uint32) {
	t.Helper()
	n := 0
	k.ReadMaps(ids, func(id uint32, info *MapInfo, err error) {
		n++
		if id == gone {
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("gone map %d: %v, want os.ErrNotExist", id, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("map %d: %v", id, err)
		}
		want, err := k.ReadMap(id)
		if err != nil {
			t.Fatal(err)
		}
		if *info != want {
			t.Errorf("map %d: ReadMaps %+v, ReadMap %+v", id, *info, want)
		}
	})
	if n != len(ids) {
		t.Fatalf("%d calls for %d IDs", n, len(ids))
	}
}

// bpfMapInfoOf returns what bpf(2) says of map id.
func bpfMapInfoOf(t *testing.T, id uint32) sysMapInfo {
	t.Helper()
	m, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var info sysMapInfo
	if err := bpfObjInfo(m.FD(), unsafe.Pointer(&info), unsafe.Sizeof(info)); err != nil {
		t.Fatal(err)
	}
	return info
}

// A OneSweep Kernel's early read lists the maps with the iterator: every
// map made before the load is handed out with ReadMap's values.
func TestMapsAheadThroughIterator(t *testing.T) {
	testutil.RequireRoot(t)
	ids := newMixedMaps(t, 2*mapsPerWorker)
	k, err := NewKernelWithOptions(KernelOptions{OneSweep: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	k.mu.Lock()
	its := loadIterators(false, true)
	k.iters, k.mapsAhead = its, its.ahead
	k.mu.Unlock()
	testutil.SkipIfUnsupported(t, its.mapsErr, "iter/bpf_map")
	if its.ahead == nil || its.maps.kept == nil {
		t.Fatal("OneSweep iterators: no early read of the maps, or the map listing not kept")
	}
	<-its.ahead.done
	for _, id := range ids {
		if its.ahead.infos[id] == nil {
			t.Fatalf("map %d, created before the load, missing from the early read", id)
		}
	}
	readMapsAsReadMap(t, k, ids, 0)
}
