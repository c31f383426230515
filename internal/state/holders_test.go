package state

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfstats/tracker/internal/loader"
)

// sweepRescan sweeps until the periodic holders scan ran, for a change
// no cheap check sees (a process taking an fd to a program already held):
// it shows within holdersRescanSweeps sweeps.
func sweepRescan(t *testing.T, tr *Tracker) *Snapshot {
	t.Helper()
	var snap *Snapshot
	for range holdersRescanSweeps {
		snap = sweep(t, tr)
	}
	return snap
}

// holderCountingKernel counts the holders scans.
type holderCountingKernel struct {
	*fakeKernel
	scans int
}

func (k *holderCountingKernel) Holders() (map[uint32][]uint32, error) {
	k.scans++
	return k.fakeKernel.Holders()
}

// The holders are scanned when the inventory or the processes changed,
// and at the documented period; not on every sweep of an unchanged
// inventory.
func TestHoldersScannedOnChange(t *testing.T) {
	k := &holderCountingKernel{fakeKernel: newFakeKernel()}
	k.procs[10] = loader.Process{PID: 10, StartTime: 1, Comm: "a", Exe: "/a"}
	k.procs[20] = loader.Process{PID: 20, StartTime: 2, Comm: "b", Exe: "/b"}
	k.progs[1], k.progs[2] = progStats(1, 10, 1), progStats(2, 10, 1)
	k.holders[1], k.holders[2] = []uint32{10}, []uint32{10, 20}
	c := newClock()
	tr := New(k, Options{Node: "n1", Source: "test", now: c.now})
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	scans := func(what string, want int) {
		t.Helper()
		c.advance(time.Second)
		snap := sweep(t, tr)
		if k.scans != want {
			t.Fatalf("%s: %d holders scans, want %d", what, k.scans, want)
		}
		if r := programRow(t, snap, 2); len(r.PIDs) != len(k.holders[2]) {
			t.Fatalf("%s: program 2 pids %v, holders %v", what, r.PIDs, k.holders[2])
		}
	}
	scans("first sweep", 1)
	k.progs[1] = progStats(1, 20, 2) // stats change nothing
	scans("unchanged inventory", 1)
	k.progs[3], k.holders[3] = progStats(3, 0, 0), []uint32{20}
	scans("a program found by the audit", 2)
	scans("unchanged again", 2)
	tr.applyEvent(loader.ProgramEvent{Kind: loader.EventRelease, ProgramID: 3, Tag: tag(3)})
	delete(k.progs, 3)
	delete(k.holders, 3)
	scans("a release", 3)
	delete(k.procs, 20)
	k.holders[2] = []uint32{10}
	scans("a holder exited", 4)
	k.procs[10] = loader.Process{PID: 10, StartTime: 9, Comm: "a2", Exe: "/a"}
	scans("an owner's PID reused", 5)
	for range holdersRescanSweeps - 1 {
		scans("within the period", 5)
	}
	scans("the period", 6)
}

// Maps are read when programs come or bind new maps, and a map whose
// memlock grows on every sweep; a sweep after which nothing changed reads
// none, and a released program's maps are forgotten.
func TestMapsReadOnChange(t *testing.T) {
	k := newFakeKernel()
	k.maps[7] = loader.MapInfo{ID: 7, Memlock: 100}
	k.maps[8] = loader.MapInfo{ID: 8, Memlock: 200}
	p := progStats(1, 10, 1)
	p.MapIDs = []uint32{7}
	k.progs[1] = p
	tr, _ := newTracker(t, k)
	reads := func(what string, want int, memory uint64) {
		t.Helper()
		k.mapReads = 0
		snap := sweep(t, tr)
		if k.mapReads != want {
			t.Errorf("%s: %d map reads, want %d", what, k.mapReads, want)
		}
		if len(snap.Programs) > 0 && snap.Programs[0].MapMemory != memory {
			t.Errorf("%s: map memory %d, want %d", what, snap.Programs[0].MapMemory, memory)
		}
	}
	reads("first sweep", 1, 100)
	reads("nothing changed", 0, 100)
	p.MapIDs = []uint32{7, 8}
	k.progs[1] = p
	reads("a map bound to the program", 1, 300)
	reads("nothing changed again", 0, 300)
	k.maps[9] = loader.MapInfo{ID: 9, Memlock: 50, Flags: bpfFNoPrealloc}
	p.MapIDs = []uint32{7, 8, 9}
	k.progs[1] = p
	reads("a growing map bound", 1, 350)
	k.maps[9] = loader.MapInfo{ID: 9, Memlock: 80, Flags: bpfFNoPrealloc}
	reads("the growing map reread", 1, 380)
	// A devmap counts its devices (Linux 6.4+) without the flag.
	k.maps[10] = loader.MapInfo{ID: 10, Type: uint32(ebpf.DevMap), Memlock: 20}
	p.MapIDs = []uint32{7, 8, 9, 10}
	k.progs[1] = p
	reads("a devmap bound", 2, 400)
	k.maps[10] = loader.MapInfo{ID: 10, Type: uint32(ebpf.DevMap), Memlock: 30}
	reads("both growing maps reread", 2, 410)
	delete(k.progs, 1)
	reads("the program released", 0, 0)
	if len(tr.maps) != 0 {
		t.Errorf("maps of a released program kept: %v", slices.Collect(maps.Keys(tr.maps)))
	}
}

// bpfFNoPrealloc is BPF_F_NO_PREALLOC.
const bpfFNoPrealloc = 1
