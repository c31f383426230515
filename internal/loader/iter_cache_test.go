package loader

import (
	"slices"
	"testing"
)

// TestCompactKnown checks that dropping the map IDs of programs gone from
// the cache keeps those of the programs left, and happens only once the
// dead IDs outnumber the live ones.
func TestCompactKnown(t *testing.T) {
	k := &Kernel{}
	want := map[uint32][]uint32{}
	for id := uint32(1); id <= 1000; id++ {
		maps := []uint32{id * 10, id*10 + 1, id*10 + 2}
		k.known.add(id, uint64(id), knownIdentity{typ: id, name: "p"}, maps)
		want[id] = maps
	}
	// Keep every tenth program, in place, as readProgramsCached does.
	w, live := 0, 0
	for _, p := range k.known.progs {
		if p.id%10 == 0 {
			k.known.progs[w] = p
			w, live = w+1, live+int(p.nrMaps)
		}
	}
	k.known.progs = k.known.progs[:w]
	k.compactKnown(live * 10) // few dead IDs for so many live ones: kept
	if len(k.known.mapIDs) != 3000 {
		t.Fatalf("compacted with few dead IDs: %d map IDs left", len(k.known.mapIDs))
	}
	k.compactKnown(live)
	if len(k.known.mapIDs) != live {
		t.Errorf("after compaction: %d map IDs, want %d", len(k.known.mapIDs), live)
	}
	for i := range k.known.progs {
		p := &k.known.progs[i]
		if got := k.known.ids(p); !slices.Equal(got, want[p.id]) || p.loadTime != uint64(p.id) || p.typ != p.id {
			t.Errorf("program %d after compaction: maps %v load time %d type %d, want maps %v", p.id, got, p.loadTime, p.typ, want[p.id])
		}
	}
}
