package state

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// Rows are reused from snapshot to snapshot, and the rows of a snapshot
// handed out never change, whatever the later sweeps change.
func TestSnapshotRowsNeverChangeAfterwards(t *testing.T) {
	k := newFakeKernel()
	k.procs[10] = loader.Process{PID: 10, StartTime: 1, Comm: "a", Exe: "/a"}
	k.procs[20] = loader.Process{PID: 20, StartTime: 2, Comm: "b", Exe: "/b"}
	k.maps[100] = loader.MapInfo{ID: 100, Memlock: 10}
	k.maps[200] = loader.MapInfo{ID: 200, Memlock: 20, Flags: bpfFNoPrealloc}
	for id := uint32(1); id <= 3; id++ {
		info := progStats(id, 100, 1)
		info.MapIDs = []uint32{100, 200}
		k.progs[id] = info
		k.holders[id] = []uint32{10}
	}
	tr, c := newTracker(t, k)
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	first := sweep(t, tr)
	before, err := json.Marshal(first)
	if err != nil {
		t.Fatal(err)
	}

	c.advance(time.Second)
	second := sweep(t, tr)
	for i := range first.Programs {
		a, b := first.Programs[i], second.Programs[i]
		if &a.MapIDs[0] != &b.MapIDs[0] || &a.PIDs[0] != &b.PIDs[0] || &a.Comms[0] != &b.Comms[0] {
			t.Fatalf("program %d: an unchanged row's lists are not shared", a.ProgID)
		}
	}
	if g1, g2 := first.Gadgets[0], second.Gadgets[0]; &g1.MapIDs[0] != &g2.MapIDs[0] || &g1.PIDs[0] != &g2.PIDs[0] {
		t.Fatal("an unchanged gadget's lists are not shared")
	}

	// Stats, maps, memlock, holders and a holder's comm change.
	c.advance(time.Second)
	info := progStats(1, 500, 9)
	info.MapIDs = []uint32{200}
	k.progs[1] = info
	k.maps[200] = loader.MapInfo{ID: 200, Memlock: 50, Flags: bpfFNoPrealloc}
	k.holders[2] = []uint32{10, 20}
	k.procs[10] = loader.Process{PID: 10, StartTime: 7, Comm: "a2", Exe: "/a"}
	k.progs[4], k.holders[4] = progStats(4, 0, 0), []uint32{20}
	third := sweep(t, tr)
	after, err := json.Marshal(first)
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Fatalf("a later sweep changed a snapshot handed out:\n%s\n%s", before, after)
	}
	r1 := programRow(t, third, 1)
	if r1.Runtime != 500 || r1.MapCount != 1 || r1.MapMemory != 50 || r1.Comms[0] != "a2" {
		t.Fatalf("program 1's changes missing: %+v", r1)
	}
	if r2 := programRow(t, third, 2); len(r2.PIDs) != 2 || len(r2.Comms) != 2 || r2.MapMemory != 60 {
		t.Fatalf("program 2's holders or memlock missing: %+v", r2)
	}
	if r3 := programRow(t, third, 3); r3.MapMemory != 60 || r3.Comms[0] != "a2" {
		t.Fatalf("program 3's memlock or comm missing: %+v", r3)
	}
	if third.Unowned.ProgramCount != 0 || len(third.Gadgets) != 2 {
		t.Fatalf("gadgets after the owner's PID was reused: %+v", third.Gadgets)
	}
}
