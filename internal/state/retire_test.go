package state

import (
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// monotonic checks, snapshot after snapshot, that every gadget row and the
// unowned row never decrease and that their deltas are the growth of their
// cumulative since the row's previous snapshot.
type monotonic struct {
	t    *testing.T
	last map[string]Row // by gadget ID; "" is the unowned row
}

func newMonotonic(t *testing.T) *monotonic {
	return &monotonic{t: t, last: map[string]Row{}}
}

func (m *monotonic) check(snap *Snapshot) {
	m.t.Helper()
	rows := append([]Row{snap.Unowned}, snap.Gadgets...)
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.GadgetID] = true
		prev, ok := m.last[r.GadgetID]
		m.last[r.GadgetID] = r
		if !ok {
			continue
		}
		if r.Runtime < prev.Runtime || r.Runcount < prev.Runcount || r.RecursionMisses < prev.RecursionMisses {
			m.t.Fatalf("gadget %q decreased: %d/%d/%d -> %d/%d/%d", r.GadgetID,
				prev.Runtime, prev.Runcount, prev.RecursionMisses, r.Runtime, r.Runcount, r.RecursionMisses)
		}
		if r.RuntimeDelta != r.Runtime-prev.Runtime || r.RuncountDelta != r.Runcount-prev.Runcount {
			m.t.Fatalf("gadget %q deltas %d/%d, cumulative grew by %d/%d", r.GadgetID,
				r.RuntimeDelta, r.RuncountDelta, r.Runtime-prev.Runtime, r.Runcount-prev.Runcount)
		}
	}
	for id := range m.last {
		if !seen[id] {
			delete(m.last, id) // the gadget went away
		}
	}
}

func gadgetRow(t *testing.T, snap *Snapshot, name string) Row {
	t.Helper()
	for _, r := range snap.Gadgets {
		if r.GadgetName == name {
			return r
		}
	}
	t.Fatalf("gadget %q not in %+v", name, snap.Gadgets)
	return Row{}
}

func wantRun(t *testing.T, what string, r Row, runtime, runcount uint64) {
	t.Helper()
	if r.Runtime != runtime || r.Runcount != runcount {
		t.Fatalf("%s: runtime/runcount %d/%d, want %d/%d", what, r.Runtime, r.Runcount, runtime, runcount)
	}
}

func progStats(id uint32, runtime, runcount uint64) loader.ProgramInfo {
	return loader.ProgramInfo{ID: id, Tag: tag(byte(id)), LoadTime: 1, RunTime: runtime, RunCount: runcount}
}

// A gadget keeps what a released program ran: its cumulative never
// decreases, and the release event carries the program's last values.
func TestGadgetKeepsReleasedProgram(t *testing.T) {
	k := newFakeKernel()
	k.procs[42] = loader.Process{PID: 42, StartTime: 1, Comm: "g", Exe: "/g"}
	k.progs[1] = progStats(1, 100, 1)
	k.progs[2] = progStats(2, 50, 2)
	k.holders[1], k.holders[2] = []uint32{42}, []uint32{42}
	tr, c := newTracker(t, k)
	m := newMonotonic(t)
	tr.apply(load(1, 42))
	tr.apply(load(2, 42))
	snap := sweep(t, tr)
	m.check(snap)
	wantRun(t, "first sweep", gadgetRow(t, snap, "g"), 150, 3)

	c.advance(time.Second)
	k.progs[1], k.progs[2] = progStats(1, 300, 3), progStats(2, 80, 4)
	snap = sweep(t, tr)
	m.check(snap)
	g := gadgetRow(t, snap, "g")
	wantRun(t, "second sweep", g, 380, 7)
	if g.RuntimeDelta != 230 || g.CPUPercent <= 0 {
		t.Fatalf("delta over one second: %+v", g.Totals)
	}

	// Program 2 runs on and is released before the next sweep reads it:
	// it counts with what the last sweep read. Program 1 stands still.
	k.progs[2] = progStats(2, 90, 5)
	delete(k.progs, 2)
	delete(k.holders, 2)
	ev := tr.apply(release(2))
	if ev == nil || ev.Runtime != 80 || ev.Runcount != 4 {
		t.Fatalf("release event must carry the last read values 80/4: %+v", ev)
	}
	c.advance(time.Second)
	snap = sweep(t, tr)
	m.check(snap)
	g = gadgetRow(t, snap, "g")
	wantRun(t, "after the release", g, 380, 7)
	if g.ProgramCount != 1 || g.RuntimeDelta != 0 || g.CPUPercent != 0 {
		t.Fatalf("after the release: %+v", g.Totals)
	}

	c.advance(time.Second)
	k.progs[1] = progStats(1, 310, 4)
	snap = sweep(t, tr)
	m.check(snap)
	wantRun(t, "program 1 runs on", gadgetRow(t, snap, "g"), 390, 8)

	// The last program goes: the gadget goes with it.
	delete(k.progs, 1)
	tr.apply(release(1))
	if snap = sweep(t, tr); len(snap.Gadgets) != 0 {
		t.Fatalf("a gadget without programs must go: %+v", snap.Gadgets)
	}
}

// A program released between a sweep's read and its snapshot counts in
// its gadget with that read.
func TestReleaseDuringSweepCounted(t *testing.T) {
	k := newFakeKernel()
	k.procs[42] = loader.Process{PID: 42, StartTime: 1, Comm: "g", Exe: "/g"}
	k.progs[1], k.progs[2] = progStats(1, 10, 1), progStats(2, 20, 1)
	k.holders[1], k.holders[2] = []uint32{42}, []uint32{42}
	tr, c := newTracker(t, k)
	m := newMonotonic(t)
	tr.apply(load(1, 42))
	tr.apply(load(2, 42))
	m.check(sweep(t, tr))
	c.advance(time.Second)
	k.progs[2] = progStats(2, 25, 2)
	released := false
	snap, err := tr.sweep(yielding(func() {
		if !released {
			released = true
			delete(k.progs, 2)
			tr.apply(release(2))
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	m.check(snap)
	wantRun(t, "release during the sweep", gadgetRow(t, snap, "g"), 35, 3)
}

// When an owner exits, its programs pass to another holder: the old
// gadget never decreased before it went, the new one counts only what the
// programs ran after the hand-over, so that old plus new is every run
// once.
func TestOwnerExitHandsOverWithoutDoubleCount(t *testing.T) {
	k := newFakeKernel()
	labels := map[string]string{labelName: "tool", labelImage: "tool:1"}
	k.procs[10] = loader.Process{PID: 10, StartTime: 1, Comm: "a", Exe: "/tool", Labels: labels}
	k.procs[20] = loader.Process{PID: 20, StartTime: 2, Comm: "b", Exe: "/tool", Labels: labels}
	k.progs[1], k.progs[2], k.progs[3] = progStats(1, 100, 1), progStats(2, 200, 2), progStats(3, 50, 1)
	k.holders[1], k.holders[2], k.holders[3] = []uint32{10, 20}, []uint32{10, 20}, []uint32{20}
	tr, c := newTracker(t, k)
	m := newMonotonic(t)
	tr.apply(load(1, 10))
	tr.apply(load(2, 10))
	tr.apply(load(3, 20))
	gadgetOf := func(snap *Snapshot, pid uint32) (Row, bool) {
		for _, r := range snap.Gadgets {
			if snap.GadgetInfo[r.GadgetID].Owner.PID == pid {
				return r, true
			}
		}
		return Row{}, false
	}
	snap := sweep(t, tr)
	m.check(snap)
	c.advance(time.Second)
	k.progs[1], k.progs[2], k.progs[3] = progStats(1, 150, 2), progStats(2, 250, 3), progStats(3, 60, 2)
	snap = sweep(t, tr)
	m.check(snap)
	a, _ := gadgetOf(snap, 10)
	b, _ := gadgetOf(snap, 20)
	wantRun(t, "owner a", a, 400, 5)
	wantRun(t, "owner b", b, 60, 2)
	lastA := a

	// a exits; its programs ran on since the last snapshot and pass to b.
	delete(k.procs, 10)
	k.holders[1], k.holders[2] = []uint32{20}, []uint32{20}
	k.progs[1], k.progs[2], k.progs[3] = progStats(1, 170, 3), progStats(2, 260, 4), progStats(3, 65, 3)
	c.advance(time.Second)
	snap = sweep(t, tr)
	m.check(snap)
	if _, ok := gadgetOf(snap, 10); ok || len(snap.Gadgets) != 1 {
		t.Fatalf("the exited owner's gadget must go: %+v", snap.Gadgets)
	}
	b, _ = gadgetOf(snap, 20)
	if b.ProgramCount != 3 {
		t.Fatalf("b must hold the three programs: %+v", b)
	}
	// b: its own 65/3, plus what 1 and 2 ran after a's last snapshot.
	wantRun(t, "owner b after the hand-over", b, 65+(170-150)+(260-250), 3+(3-2)+(4-3))
	// Every run is counted once: a's last report plus b is the kernel's sum.
	if got, want := lastA.Runtime+b.Runtime, uint64(170+260+65); got != want {
		t.Fatalf("a's last plus b = %d, kernel sum %d", got, want)
	}

	c.advance(time.Second)
	k.progs[1] = progStats(1, 200, 5)
	snap = sweep(t, tr)
	m.check(snap)
	b, _ = gadgetOf(snap, 20)
	wantRun(t, "b runs on", b, 95+30, 5+2)
	if b.RuntimeDelta != 30 || b.RuncountDelta != 2 {
		t.Fatalf("b's delta: %+v", b.Totals)
	}
}

// The unowned row keeps what its programs ran when they get an owner or
// are released; a program found at start-up goes whole to the owner it
// settles with.
func TestUnownedMonotonic(t *testing.T) {
	k := newFakeKernel()
	k.procs[20] = loader.Process{PID: 20, StartTime: 2, Comm: "h", Exe: "/h"}
	k.progs[1], k.progs[2], k.progs[3] = progStats(1, 100, 1), progStats(2, 200, 2), progStats(3, 7000, 70)
	// Program 3 predates the tracker and is held by 20.
	k.holders[3] = []uint32{20}
	tr, c := newTracker(t, k)
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	m := newMonotonic(t)
	snap := sweep(t, tr)
	m.check(snap)
	wantRun(t, "unowned", snap.Unowned, 300, 3)
	wantRun(t, "a program found at start-up counts whole in its gadget", gadgetRow(t, snap, "h"), 7000, 70)

	// Program 1 gets a holder: it passes to h's gadget; program 2 is released.
	c.advance(time.Second)
	k.progs[1], k.progs[2] = progStats(1, 110, 2), progStats(2, 220, 3)
	snap = sweep(t, tr)
	m.check(snap)
	wantRun(t, "unowned grows", snap.Unowned, 330, 5)
	k.holders[1] = []uint32{20}
	k.progs[1] = progStats(1, 115, 3)
	delete(k.progs, 2)
	tr.apply(release(2))
	c.advance(time.Second)
	snap = sweep(t, tr)
	m.check(snap)
	wantRun(t, "unowned keeps what left it", snap.Unowned, 330, 5)
	if snap.Unowned.ProgramCount != 0 {
		t.Fatalf("unowned programs: %+v", snap.Unowned)
	}
	wantRun(t, "h counts program 1 from the hand-over", gadgetRow(t, snap, "h"), 7000+5, 70+1)
}
