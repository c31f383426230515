package state

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/bpfstats/tracker/internal/loader"
)

// auditKernel is a fakeKernel that lists every program in the read, as
// loader.Kernel does.
type auditKernel struct {
	*fakeKernel
	audits int
}

func (k *auditKernel) ReadAllPrograms(ids []uint32, fn func(uint32, *loader.ProgramInfo, error)) error {
	k.audits++
	listed, _ := k.ProgramIDs()
	all := append(listed, ids...)
	slices.Sort(all)
	for _, id := range slices.Compact(all) {
		info, err := k.ReadProgram(id)
		fn(id, &info, err)
	}
	return nil
}

// takeEvents returns the queued events as "kind id" strings and empties
// the queue.
func takeEvents(tr *Tracker) []string {
	var out []string
	tr.flush(RunConfig{OnEvent: func(ev *Event) { out = append(out, fmt.Sprintf("%s %d", ev.Kind, ev.ProgID)) }})
	return out
}

func release(id uint32) loader.ProgramEvent {
	return loader.ProgramEvent{Kind: loader.EventRelease, ProgramID: id, Tag: tag(byte(id))}
}

func prog(id uint32) loader.ProgramInfo {
	return loader.ProgramInfo{ID: id, Name: fmt.Sprintf("p%d", id), Type: 1, Tag: tag(byte(id)), LoadTime: uint64(id)}
}

// One sweep makes the inventory equal to the kernel's list, with or
// without an AuditReader, whatever the events said.
func TestSweepAuditRepairsBothWays(t *testing.T) {
	for _, withAudit := range []bool{false, true} {
		t.Run(fmt.Sprint("auditReader=", withAudit), func(t *testing.T) {
			fk := newFakeKernel()
			var k Kernel = fk
			ak := &auditKernel{fakeKernel: fk}
			if withAudit {
				k = ak
			}
			fk.procs[50] = loader.Process{PID: 50, StartTime: 1, Comm: "holder", Exe: "/holder"}
			for id := uint32(1); id <= 4; id++ {
				fk.progs[id] = prog(id)
			}
			c := newClock()
			tr := New(k, Options{Node: "n", now: c.now})
			tr.applyEvent(load(1, 0))
			tr.applyEvent(load(2, 0))
			takeEvents(tr)
			// 3 and 4 were loaded, their events lost; 2 was released, its
			// event lost too.
			delete(fk.progs, 2)
			fk.holders[3] = []uint32{50}
			snap, err := tr.sweep(inline{})
			if err != nil {
				t.Fatal(err)
			}
			if got := tr.programIDs(); !slices.Equal(got, []uint32{1, 3, 4}) {
				t.Fatalf("inventory %v, want [1 3 4]", got)
			}
			if c := snap.Counters; c.RepairsAdded != 2 || c.RepairsRemoved != 1 {
				t.Fatalf("counters %+v, want 2 added and 1 removed", c)
			}
			if withAudit && ak.audits != 1 {
				t.Fatalf("%d audit reads, want 1", ak.audits)
			}
			// Found by audit: read and owned by its holder at once.
			if r := programRow(t, snap, 3); r.ProgName != "p3" || r.GadgetName != "holder" {
				t.Fatalf("program found by audit: %+v", r)
			}
			// 2's load was published: so is its release; 3 and 4 were
			// never announced.
			if got := takeEvents(tr); !slices.Equal(got, []string{"release 2"}) {
				t.Fatalf("events %v, want [release 2]", got)
			}
			// The lost release of 2 arrives late: nothing more.
			tr.applyEvent(release(2))
			// 3's load event arrives late: published now, its release later.
			tr.applyEvent(load(3, 0))
			delete(fk.progs, 3)
			delete(fk.progs, 4)
			tr.sweep(inline{})
			if got := takeEvents(tr); !slices.Equal(got, []string{"load 3", "release 3"}) {
				t.Fatalf("events %v, want [load 3 release 3]", got)
			}
			if got := tr.programIDs(); !slices.Equal(got, []uint32{1}) {
				t.Fatalf("inventory %v, want [1]", got)
			}
		})
	}
}

// A reused ID found by the sweep is a release and a new program.
func TestSweepAuditIDReuse(t *testing.T) {
	k := newFakeKernel()
	k.progs[9] = prog(9)
	tr, _ := newTracker(t, k)
	tr.applyEvent(load(9, 0))
	sweep(t, tr)
	takeEvents(tr)
	k.progs[9] = loader.ProgramInfo{ID: 9, Name: "new", Tag: tag(77), LoadTime: 100}
	snap, _ := tr.sweep(inline{})
	if got := takeEvents(tr); !slices.Equal(got, []string{"release 9"}) {
		t.Fatalf("events %v, want the old program's release", got)
	}
	if r := programRow(t, snap, 9); r.ProgName != "new" {
		t.Fatalf("row %+v", r)
	}
}

// Every load published gets exactly one release, in every order the
// events and sweeps can come in.
func TestLoadsAndReleasesPair(t *testing.T) {
	for _, c := range []struct {
		name string
		// steps: "L" load event, "R" release event, "G" program gone from
		// the kernel, "S" sweep, "A" program appears in the kernel.
		steps string
		want  []string
	}{
		{"in order", "ALRG", []string{"load 1", "release 1"}},
		{"release first", "ARGL", []string{"load 1", "release 1"}},
		{"release first, sweep between", "ARGSL", []string{"load 1", "release 1"}},
		{"gone when the load is applied", "AGLR", []string{"load 1", "release 1"}},
		{"sweep finds it gone first", "ALGSR", []string{"load 1", "release 1"}},
		{"sweep finds it first", "ASLRG", []string{"load 1", "release 1"}},
		{"sweep finds it, release first", "ASRGL", []string{"load 1", "release 1"}},
		{"sweep finds it, and gone, then events", "ASGSLR", []string{"load 1", "release 1"}},
		{"load event lost", "ASGSR", nil},
		{"release event lost", "ALGS", []string{"load 1", "release 1"}},
		{"duplicates", "ALLRGR", []string{"load 1", "release 1"}},
		{"late release after expiry", "ARGSSSL", []string{"load 1", "release 1"}},
	} {
		// The perf source's events need a read by ID to name the
		// program, fentry's do not.
		for _, named := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/named=%v", c.name, named), func(t *testing.T) {
				checkPairing(t, c.steps, named, c.want)
			})
		}
	}
}

func checkPairing(t *testing.T, steps string, named bool, want []string) {
	k := newFakeKernel()
	tr, _ := newTracker(t, k)
	var got []string
	for i, s := range steps {
		switch s {
		case 'A':
			k.progs[1] = prog(1)
		case 'G':
			delete(k.progs, 1)
		case 'L':
			ev := load(1, 0)
			if named {
				ev.Name, ev.Type = "p1", 1
			}
			tr.applyEvent(ev)
		case 'R':
			tr.applyEvent(release(1))
		case 'S':
			if _, err := tr.sweep(inline{}); err != nil {
				t.Fatal(err)
			}
		}
		got = append(got, takeEvents(tr)...)
		// A load read by ID (not named by its event), or after its
		// release, is never inserted gone; a named one may be until its
		// release or the next sweep.
		_, inKernel := k.progs[1]
		_, inInventory := tr.programs[1]
		// (The release is kept goneSweeps sweeps.)
		r := strings.LastIndexByte(steps[:i], 'R')
		releasedBefore := r >= 0 && strings.Count(steps[r:i], "S") < goneSweeps
		if (s == 'R' || (s == 'L' && (!named || releasedBefore))) && inInventory && !inKernel {
			t.Fatalf("steps %s: gone program in the inventory after %c", steps, s)
		}
	}
	tr.sweep(inline{})
	got = append(got, takeEvents(tr)...)
	if !slices.Equal(got, want) {
		t.Fatalf("steps %s: events %v, want %v", steps, got, want)
	}
	if len(tr.programs) != 0 {
		t.Fatalf("steps %s: inventory %v, want empty", steps, tr.programIDs())
	}
}

// A load applied after its program is gone is named from the event.
func TestGoneLoadNamedFromEvent(t *testing.T) {
	k := newFakeKernel()
	k.procs[7] = loader.Process{PID: 7, StartTime: 1, Comm: "ld", Exe: "/ld"}
	tr, _ := newTracker(t, k)
	var evs []*Event
	tr.applyEvent(loader.ProgramEvent{Kind: loader.EventLoad, ProgramID: 3, Name: "short", Tag: tag(3), PID: 7})
	tr.flush(RunConfig{OnEvent: func(ev *Event) { evs = append(evs, ev) }})
	if len(evs) != 2 || evs[0].Kind != "load" || evs[1].Kind != "release" {
		t.Fatalf("events %+v, want a load and its release", evs)
	}
	for _, ev := range evs {
		if ev.ProgName != "short" || ev.Tag != "0303030303030303" || ev.Loader == nil || ev.Loader.Exe != "/ld" {
			t.Fatalf("event %+v (loader %+v)", ev, ev.Loader)
		}
	}
	if len(tr.programs) != 0 || len(tr.gadgets) != 0 || tr.counters.LoadsGone != 1 {
		t.Fatalf("inventory %v gadgets %d counters %+v", tr.programIDs(), len(tr.gadgets), tr.counters)
	}
}

// The process an event names is the loader only if it had started by the
// event's time: a reused PID names a younger process.
func TestAttributionChecksStartTime(t *testing.T) {
	const sec = uint64(1e9)
	k := newFakeKernel()
	// Started 100 s after boot (10000 ticks).
	k.procs[30] = loader.Process{PID: 30, StartTime: 100 * loader.ClockTicksPerSecond, Comm: "young", Exe: "/young"}
	k.progs[1] = prog(1)
	k.progs[2] = prog(2)
	tr, _ := newTracker(t, k)

	// Event at 50 s: process 30 did not exist yet.
	tr.applyEvent(loader.ProgramEvent{Kind: loader.EventLoad, ProgramID: 1, Tag: tag(1), PID: 30, KernelTime: 50 * sec})
	// Event at 100 s exactly, and at 100 s minus less than a tick: can be it.
	tr.applyEvent(loader.ProgramEvent{Kind: loader.EventLoad, ProgramID: 2, Tag: tag(2), PID: 30, KernelTime: 100*sec - sec/200})
	snap := sweep(t, tr)
	if r := programRow(t, snap, 1); r.GadgetID != "" || (r.Loader != nil && r.Loader.Exe != "") {
		t.Fatalf("program loaded before its PID's process started is owned by it: %+v %+v", r, r.Loader)
	}
	if r := programRow(t, snap, 2); r.GadgetName != "young" {
		t.Fatalf("program loaded within a tick of the process start is not owned by it: %+v", r)
	}
	if tr.counters.AttributionsRejected != 1 {
		t.Fatalf("rejected %d, want 1", tr.counters.AttributionsRejected)
	}
	// A holder proves otherwise: then it owns it.
	k.holders[1] = []uint32{30}
	if r := programRow(t, sweepRescan(t, tr), 1); r.GadgetName != "young" {
		t.Fatalf("holder must own the program: %+v", r)
	}
}

// With the loader's start time in the event (fentry), the process at the
// PID must be that very instance: an older or younger one is not blamed.
func TestAttributionChecksLoaderStartTime(t *testing.T) {
	const sec = uint64(1e9)
	k := newFakeKernel()
	k.procs[30] = loader.Process{PID: 30, StartTime: 100 * loader.ClockTicksPerSecond, Comm: "now", Exe: "/now"}
	for id := uint32(1); id <= 3; id++ {
		k.progs[id] = prog(id)
	}
	tr, _ := newTracker(t, k)
	load := func(id uint32, start uint64) {
		tr.applyEvent(loader.ProgramEvent{Kind: loader.EventLoad, ProgramID: id, Tag: tag(byte(id)), PID: 30,
			KernelTime: 200 * sec, LoaderStartTime: start})
	}
	load(1, 100*sec+sec/1000) // the same instance: within its tick
	load(2, 40*sec)           // an older process that had PID 30 and exited
	load(3, 100*sec+sec/50)   // two ticks off: another instance
	snap := sweep(t, tr)
	if r := programRow(t, snap, 1); r.GadgetName != "now" {
		t.Fatalf("program of the instance the event names is not owned by it: %+v", r)
	}
	for _, id := range []uint32{2, 3} {
		if r := programRow(t, snap, id); r.GadgetID != "" {
			t.Fatalf("program %d owned by a process the event does not name: %+v", id, r)
		}
	}
	if tr.counters.AttributionsRejected != 2 {
		t.Fatalf("rejected %d, want 2", tr.counters.AttributionsRejected)
	}
}

// Kernel threads are recognised by their flag, not by an empty exe.
func TestKernelThreadByFlag(t *testing.T) {
	k := newFakeKernel()
	k.procs[2] = loader.Process{PID: 2, Comm: "kworker", Exe: "/looks/like/user", Kernel: true}
	k.procs[3] = loader.Process{PID: 3, StartTime: 5, Comm: "zombie"} // no exe, not a kernel thread
	k.progs[1] = prog(1)
	k.progs[2] = prog(2)
	tr, _ := newTracker(t, k)
	tr.applyEvent(load(1, 2))
	tr.applyEvent(load(2, 3))
	snap := sweep(t, tr)
	if r := programRow(t, snap, 1); r.GadgetID != "" || r.Loader == nil || r.Loader.Comm != "kworker" {
		t.Fatalf("kernel thread's program: %+v", r)
	}
	if r := programRow(t, snap, 2); r.GadgetName != "zombie" {
		t.Fatalf("a user process without a readable exe owns its program: %+v", r)
	}
}

// With event PIDs off, only holders own.
func TestIgnoreEventPIDs(t *testing.T) {
	k := newFakeKernel()
	k.procs[10] = loader.Process{PID: 10, StartTime: 1, Comm: "hostpid", Exe: "/unrelated"}
	k.procs[20] = loader.Process{PID: 20, StartTime: 1, Comm: "holder", Exe: "/holder"}
	k.progs[1] = prog(1)
	c := newClock()
	tr := New(k, Options{Node: "n", now: c.now, IgnoreEventPIDs: true})
	tr.applyEvent(load(1, 10))
	snap := sweep(t, tr)
	if r := programRow(t, snap, 1); r.GadgetID != "" || r.Loader != nil {
		t.Fatalf("event PID used: %+v", r)
	}
	k.holders[1] = []uint32{20}
	if r := programRow(t, sweepRescan(t, tr), 1); r.GadgetName != "holder" {
		t.Fatalf("holder must own: %+v", r)
	}
}
