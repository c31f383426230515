package loader

import (
	"errors"
	"os"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfstats/tracker/internal/testutil"
)

// ReadMaps, on its worker pool, reads what ReadMap reads, memlock equal
// to bpftool's bytes_memlock; a gone map is os.ErrNotExist, in its place.
func TestReadMapsMatchesReadMapAndBpftool(t *testing.T) {
	testutil.RequireRoot(t)
	k := newKernel(t)
	// Enough maps for several workers, of two kinds, and one ID of a map
	// that is gone.
	ids := newMixedMaps(t, 3*mapsPerWorker)
	gone, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	ginfo, _ := gone.Info()
	goneID, _ := ginfo.ID()
	gone.Close()
	// The last reference gone, the kernel frees the ID at once.
	if _, err := k.ReadMap(uint32(goneID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("closed map %d: ReadMap says %v, want os.ErrNotExist", goneID, err)
	}
	ids = append(ids[:5], append([]uint32{uint32(goneID)}, ids[5:]...)...)

	i := 0
	k.ReadMaps(ids, func(id uint32, info *MapInfo, err error) {
		if id != ids[i] {
			t.Fatalf("call %d for map %d, want %d (the order of ids)", i, id, ids[i])
		}
		i++
		if id == uint32(goneID) {
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
		if info.Name != want.Name || *info != (MapInfo{ID: want.ID, Type: want.Type, Name: info.Name, KeySize: want.KeySize,
			ValueSize: want.ValueSize, MaxEntries: want.MaxEntries, Flags: want.Flags, Memlock: want.Memlock}) {
			t.Errorf("map %d: ReadMaps %+v, ReadMap %+v", id, *info, want)
		}
		if i%37 == 1 { // bpftool is slow: a sample of both kinds
			checkMemlockByBpftool(t, id, info.Memlock)
		}
	})
	if i != len(ids) {
		t.Fatalf("%d calls for %d IDs", i, len(ids))
	}
}

// checkMemlockByBpftool checks a memlock read of map id, which must not
// be zero, against bpftool's bytes_memlock.
func checkMemlockByBpftool(t *testing.T, id uint32, memlock uint64) {
	t.Helper()
	var tool testutil.BpftoolMap
	testutil.Bpftool(t, &tool, "map", "show", "id", strconv.Itoa(int(id)))
	if memlock == 0 || memlock != tool.BytesMemlock {
		t.Errorf("map %d: memlock %d, bpftool bytes_memlock %d", id, memlock, tool.BytesMemlock)
	}
}
