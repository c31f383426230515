package state

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// fakeKernel is an in-memory kernel: programs, maps, processes and holders
// that tests change between sweeps.
type fakeKernel struct {
	progs   map[uint32]loader.ProgramInfo
	maps    map[uint32]loader.MapInfo
	procs   map[uint32]loader.Process
	holders map[uint32][]uint32
	// mapReads counts ReadMap calls, to prove the cache.
	mapReads int
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{
		progs:   map[uint32]loader.ProgramInfo{},
		maps:    map[uint32]loader.MapInfo{},
		procs:   map[uint32]loader.Process{},
		holders: map[uint32][]uint32{},
	}
}

func (k *fakeKernel) ProgramIDs() ([]uint32, error) {
	var ids []uint32
	for id := range k.progs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

func (k *fakeKernel) ReadProgram(id uint32) (loader.ProgramInfo, error) {
	p, ok := k.progs[id]
	if !ok {
		return p, fmt.Errorf("program %d: %w", id, os.ErrNotExist)
	}
	return p, nil
}

func (k *fakeKernel) ReadMap(id uint32) (loader.MapInfo, error) {
	k.mapReads++
	m, ok := k.maps[id]
	if !ok {
		return m, fmt.Errorf("map %d: %w", id, os.ErrNotExist)
	}
	return m, nil
}

func (k *fakeKernel) ReadProcess(pid uint32) (loader.Process, error) {
	p, ok := k.procs[pid]
	if !ok {
		return p, fmt.Errorf("process %d: %w", pid, os.ErrNotExist)
	}
	return p, nil
}

func (k *fakeKernel) Holders() (map[uint32][]uint32, error) { return k.holders, nil }

// clock is a manual time source.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Unix(1_700_000_000, 0)} }
func tag(b byte) [8]byte                 { return [8]byte{b, b, b, b, b, b, b, b} }
func load(id uint32, pid uint32) loader.ProgramEvent {
	return loader.ProgramEvent{Kind: loader.EventLoad, ProgramID: id, Tag: tag(byte(id)), PID: pid}
}

func newTracker(t *testing.T, k *fakeKernel) (*Tracker, *clock) {
	t.Helper()
	c := newClock()
	return New(k, Options{Node: "n1", Source: "test", now: c.now}), c
}

func sweep(t *testing.T, tr *Tracker) *Snapshot {
	t.Helper()
	snap, err := tr.Sweep()
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	return snap
}

func programRow(t *testing.T, snap *Snapshot, id uint32) Row {
	t.Helper()
	for _, r := range snap.Programs {
		if r.ProgID == id {
			return *r
		}
	}
	t.Fatalf("program %d not in snapshot %+v", id, snap.Programs)
	return Row{}
}

func TestFirstSweepHasNoDelta(t *testing.T) {
	k := newFakeKernel()
	k.progs[7] = loader.ProgramInfo{ID: 7, Name: "p", Tag: tag(7), LoadTime: 1, RunTime: 5000, RunCount: 10}
	tr, c := newTracker(t, k)
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	snap := sweep(t, tr)
	r := programRow(t, snap, 7)
	if r.Runtime != 5000 || r.Runcount != 10 {
		t.Fatalf("cumulative values: got %d/%d", r.Runtime, r.Runcount)
	}
	if r.RuntimeDelta != 0 || r.RuncountDelta != 0 || r.CPUPercent != 0 {
		t.Fatalf("first sweep must have no delta, got %+v", r)
	}
	if snap.Elapsed != 0 {
		t.Fatalf("first snapshot elapsed = %v, want 0", snap.Elapsed)
	}

	// 2 s later the program ran 100 ms more: 5% of one CPU.
	c.advance(2 * time.Second)
	k.progs[7] = loader.ProgramInfo{ID: 7, Name: "p", Tag: tag(7), LoadTime: 1, RunTime: 5000 + 100_000_000, RunCount: 30}
	snap = sweep(t, tr)
	r = programRow(t, snap, 7)
	if r.RuntimeDelta != 100_000_000 || r.RuncountDelta != 20 {
		t.Fatalf("deltas: got %d/%d", r.RuntimeDelta, r.RuncountDelta)
	}
	if r.CPUPercent < 4.999 || r.CPUPercent > 5.001 {
		t.Fatalf("cpu%% = %v, want 5", r.CPUPercent)
	}
	if snap.Elapsed != 2*time.Second {
		t.Fatalf("elapsed = %v", snap.Elapsed)
	}
}

func TestDeltaUsesEachProgramsOwnReadTime(t *testing.T) {
	k := newFakeKernel()
	k.progs[1] = loader.ProgramInfo{ID: 1, LoadTime: 1}
	tr, c := newTracker(t, k)
	tr.apply(load(1, 0))
	sweep(t, tr)
	// Program 2 appears later: its first sweep has no delta even though
	// program 1's has.
	c.advance(time.Second)
	k.progs[1] = loader.ProgramInfo{ID: 1, LoadTime: 1, RunTime: 1e9, RunCount: 1}
	k.progs[2] = loader.ProgramInfo{ID: 2, LoadTime: 2, RunTime: 7e9, RunCount: 9}
	tr.apply(load(2, 0))
	snap := sweep(t, tr)
	if r := programRow(t, snap, 1); r.CPUPercent < 99.9 || r.CPUPercent > 100.1 {
		t.Fatalf("program 1 cpu%% = %v, want 100", r.CPUPercent)
	}
	if r := programRow(t, snap, 2); r.RuntimeDelta != 0 || r.CPUPercent != 0 {
		t.Fatalf("program 2 must have no delta on its first read: %+v", r)
	}
}

func TestIDReuseStartsOver(t *testing.T) {
	k := newFakeKernel()
	k.procs[100] = loader.Process{PID: 100, StartTime: 5, Comm: "a", Exe: "/bin/a"}
	k.procs[200] = loader.Process{PID: 200, StartTime: 6, Comm: "b", Exe: "/bin/b"}
	k.progs[9] = loader.ProgramInfo{ID: 9, Tag: tag(1), LoadTime: 1, RunTime: 900, RunCount: 9}
	tr, c := newTracker(t, k)
	tr.apply(loader.ProgramEvent{Kind: loader.EventLoad, ProgramID: 9, Tag: tag(1), PID: 100})
	sweep(t, tr)

	// The release was missed; ID 9 now names another program with lower
	// counters. A load event with another tag replaces it.
	k.progs[9] = loader.ProgramInfo{ID: 9, Tag: tag(2), LoadTime: 2, RunTime: 10, RunCount: 1}
	if ev := tr.apply(loader.ProgramEvent{Kind: loader.EventLoad, ProgramID: 9, Tag: tag(2), PID: 200}); ev == nil {
		t.Fatal("load of a reused ID must be reported")
	}
	c.advance(time.Second)
	snap := sweep(t, tr)
	r := programRow(t, snap, 9)
	if r.RuntimeDelta != 0 || r.Runtime != 10 || r.GadgetName != "b" {
		t.Fatalf("reused ID must start over with its new owner: %+v", r)
	}
	if len(snap.Gadgets) != 1 || snap.Gadgets[0].GadgetName != "b" {
		t.Fatalf("old owner's gadget must be gone: %+v", snap.Gadgets)
	}

	// Without any event: the sweep notices the load time changed.
	k.progs[9] = loader.ProgramInfo{ID: 9, Tag: tag(3), LoadTime: 3, RunTime: 5, RunCount: 1}
	c.advance(time.Second)
	snap = sweep(t, tr)
	if r := programRow(t, snap, 9); r.RuntimeDelta != 0 || r.Runtime != 5 {
		t.Fatalf("load time change must reset the program: %+v", r)
	}
}

func TestDuplicateLoadAndUnknownRelease(t *testing.T) {
	k := newFakeKernel()
	k.progs[3] = loader.ProgramInfo{ID: 3, Tag: tag(3), LoadTime: 1}
	tr, _ := newTracker(t, k)
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	// The snapshot already has it; the event arriving late publishes its
	// load (so that its release can be), once.
	if ev := tr.apply(load(3, 0)); ev == nil || ev.Kind != "load" {
		t.Fatalf("late load: %+v", ev)
	}
	if ev := tr.apply(load(3, 0)); ev != nil {
		t.Fatalf("duplicate load reported: %+v", ev)
	}
	if ev := tr.apply(loader.ProgramEvent{Kind: loader.EventRelease, ProgramID: 99}); ev != nil {
		t.Fatalf("release of an unknown program reported: %+v", ev)
	}
	if len(tr.programs) != 1 {
		t.Fatalf("inventory has %d programs, want 1", len(tr.programs))
	}
	ev := tr.apply(loader.ProgramEvent{Kind: loader.EventRelease, ProgramID: 3, Tag: tag(3)})
	if ev == nil || ev.Kind != "release" || ev.ProgID != 3 {
		t.Fatalf("release: %+v", ev)
	}
	if len(tr.programs) != 0 {
		t.Fatal("released program still in inventory")
	}
	c := tr.counters
	if c.EventsLoad != 2 || c.EventsRelease != 2 {
		t.Fatalf("counters: %+v", c)
	}
}

func TestVanishedProgramDroppedQuietly(t *testing.T) {
	k := newFakeKernel()
	k.progs[4] = loader.ProgramInfo{ID: 4, LoadTime: 1}
	tr, _ := newTracker(t, k)
	tr.apply(load(4, 0))
	delete(k.progs, 4)
	snap := sweep(t, tr)
	if len(snap.Programs) != 0 || len(tr.programs) != 0 {
		t.Fatalf("vanished program kept: %+v", snap.Programs)
	}
}

func TestResyncAddsAndRemoves(t *testing.T) {
	k := newFakeKernel()
	k.progs[1] = loader.ProgramInfo{ID: 1, LoadTime: 1}
	k.progs[2] = loader.ProgramInfo{ID: 2, LoadTime: 1}
	tr, _ := newTracker(t, k)
	k.progs[5] = loader.ProgramInfo{ID: 5, LoadTime: 1}
	tr.apply(load(1, 0))
	tr.apply(load(5, 0))
	delete(k.progs, 5) // released while events were lost
	added, removed, err := tr.Resync()
	if err != nil {
		t.Fatal(err)
	}
	if added != 1 || removed != 1 {
		t.Fatalf("resync added %d removed %d, want 1 and 1", added, removed)
	}
	if got := tr.programIDs(); !slices.Equal(got, []uint32{1, 2}) {
		t.Fatalf("inventory %v, want [1 2]", got)
	}
	if tr.counters.Resyncs != 1 {
		t.Fatal("resync not counted")
	}
}

// A labelled process with two programs sharing one of three maps is one
// gadget whose map memory counts the shared map once.
func TestGadgetAggregationDistinctMaps(t *testing.T) {
	k := newFakeKernel()
	k.procs[42] = loader.Process{PID: 42, StartTime: 77, Comm: "gadgetd", Exe: "/usr/bin/gadgetd",
		Labels: map[string]string{labelName: "mytraceopen", labelImage: "trace_open:latest"}}
	k.maps[10] = loader.MapInfo{ID: 10, Memlock: 1000}
	k.maps[11] = loader.MapInfo{ID: 11, Memlock: 200}
	k.maps[12] = loader.MapInfo{ID: 12, Memlock: 30}
	k.progs[1] = loader.ProgramInfo{ID: 1, Name: "a", LoadTime: 1, RunTime: 100, RunCount: 1, MapIDs: []uint32{10, 11}}
	k.progs[2] = loader.ProgramInfo{ID: 2, Name: "b", LoadTime: 1, RunTime: 50, RunCount: 2, MapIDs: []uint32{11, 12}}
	k.progs[3] = loader.ProgramInfo{ID: 3, Name: "kernel", LoadTime: 1, MapIDs: []uint32{12}}
	k.holders[1] = []uint32{42}
	k.holders[2] = []uint32{42}
	tr, _ := newTracker(t, k)
	tr.apply(load(1, 42))
	tr.apply(load(2, 42))
	tr.apply(load(3, 0))
	snap := sweep(t, tr)

	if len(snap.Gadgets) != 1 {
		t.Fatalf("want one gadget, got %+v", snap.Gadgets)
	}
	g := snap.Gadgets[0]
	if g.GadgetName != "mytraceopen" || g.GadgetImage != "trace_open:latest" {
		t.Fatalf("labels not used: %+v", g)
	}
	if g.GadgetID != gadgetID("n1", 42, 77, "") || len(g.GadgetID) != 11 {
		t.Fatalf("gadget id %q", g.GadgetID)
	}
	if g.ProgID != 0 || g.ProgName != "" {
		t.Fatalf("gadget row must have PROGID 0 and no name: %+v", g)
	}
	if g.MapCount != 3 || g.MapMemory != 1230 {
		t.Fatalf("distinct maps: count %d memory %d, want 3 and 1230", g.MapCount, g.MapMemory)
	}
	if g.Runtime != 150 || g.Runcount != 3 || g.ProgramCount != 2 {
		t.Fatalf("sums: %+v", g)
	}
	if !slices.Equal(g.PIDs, []uint32{42}) || !slices.Equal(g.Comms, []string{"gadgetd"}) {
		t.Fatalf("pids/comms: %v %v", g.PIDs, g.Comms)
	}
	// Per program, each counts the maps it uses.
	if r := programRow(t, snap, 2); r.MapCount != 2 || r.MapMemory != 230 || r.GadgetID != g.GadgetID {
		t.Fatalf("program row: %+v", r)
	}
	// The kernel-loaded program is unowned: listed only among programs.
	if r := programRow(t, snap, 3); r.GadgetID != "" || r.GadgetName != "" {
		t.Fatalf("unowned program has gadget columns: %+v", r)
	}
	if len(snap.Programs) != 3 {
		t.Fatalf("programs: %d", len(snap.Programs))
	}
	if u := snap.Unowned; u.ProgramCount != 1 || u.MapCount != 1 || u.MapMemory != 30 || u.GadgetID != "" {
		t.Fatalf("unowned totals: %+v", u)
	}

	// Maps are read once and cached across sweeps.
	reads := k.mapReads
	sweep(t, tr)
	if k.mapReads != reads {
		t.Fatalf("map cache missed: %d extra reads", k.mapReads-reads)
	}
}

func TestLabelledGadgetID(t *testing.T) {
	k := newFakeKernel()
	k.procs[5] = loader.Process{PID: 5, StartTime: 1, Comm: "x", Exe: "/x", Labels: map[string]string{labelID: "custom-id"}}
	k.progs[1] = loader.ProgramInfo{ID: 1, LoadTime: 1}
	tr, _ := newTracker(t, k)
	tr.apply(load(1, 5))
	snap := sweep(t, tr)
	if g := snap.Gadgets[0]; g.GadgetID != "custom-id" || g.GadgetName != "x" || g.GadgetImage != "/x" {
		t.Fatalf("unlabelled name/image must fall back to comm/exe, id to the label: %+v", g)
	}
}

func TestOwnershipFromHoldersAndOwnerExit(t *testing.T) {
	k := newFakeKernel()
	k.procs[10] = loader.Process{PID: 10, StartTime: 1, Comm: "loader", Exe: "/loader"}
	k.procs[20] = loader.Process{PID: 20, StartTime: 2, Comm: "holder", Exe: "/holder"}
	k.progs[1] = loader.ProgramInfo{ID: 1, LoadTime: 1}
	k.progs[2] = loader.ProgramInfo{ID: 2, LoadTime: 1}
	tr, _ := newTracker(t, k)
	// Program 1 predates the tracker: its owner is the process holding it.
	k.holders[1] = []uint32{20}
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	tr.apply(load(2, 10))
	snap := sweep(t, tr)
	if r := programRow(t, snap, 1); r.GadgetName != "holder" {
		t.Fatalf("pre-existing program owner: %+v", r)
	}
	if r := programRow(t, snap, 2); r.GadgetName != "loader" || r.Loader == nil || r.Loader.PID != 10 {
		t.Fatalf("loaded program owner: %+v", r)
	}

	// The loader exits, its program stays alive (pinned): unowned.
	delete(k.procs, 10)
	snap = sweep(t, tr)
	if r := programRow(t, snap, 2); r.GadgetID != "" {
		t.Fatalf("program of an exited owner with no holder must be unowned: %+v", r)
	}
	if len(snap.Gadgets) != 1 {
		t.Fatalf("exited owner's gadget must go: %+v", snap.Gadgets)
	}
	// Then a process takes an fd to it: it becomes the owner.
	k.holders[2] = []uint32{20}
	snap = sweepRescan(t, tr)
	if r := programRow(t, snap, 2); r.GadgetName != "holder" {
		t.Fatalf("holder must own an orphan program: %+v", r)
	}
	// A PID reused by another process instance is another gadget.
	k.procs[20] = loader.Process{PID: 20, StartTime: 99, Comm: "other", Exe: "/other"}
	snap = sweep(t, tr)
	if r := programRow(t, snap, 1); r.GadgetName != "other" || r.GadgetID != gadgetID("n1", 20, 99, "") {
		t.Fatalf("reused PID must make a new gadget: %+v", r)
	}
}

func TestKernelThreadLoaderIsUnowned(t *testing.T) {
	k := newFakeKernel()
	k.procs[2] = loader.Process{PID: 2, StartTime: 0, Comm: "kthreadd", Kernel: true}
	k.progs[1] = loader.ProgramInfo{ID: 1, LoadTime: 1}
	tr, _ := newTracker(t, k)
	ev := tr.apply(load(1, 2))
	if ev == nil || ev.Gadget != nil || ev.Loader == nil || ev.Loader.Comm != "kthreadd" {
		t.Fatalf("event: %+v", ev)
	}
	if snap := sweep(t, tr); len(snap.Gadgets) != 0 {
		t.Fatalf("kernel thread must own no gadget: %+v", snap.Gadgets)
	}
}

func TestLostEventsCounted(t *testing.T) {
	tr, _ := newTracker(t, newFakeKernel())
	tr.apply(loader.ProgramEvent{Kind: loader.EventLost, Lost: 12})
	tr.apply(loader.ProgramEvent{Kind: loader.EventLost})
	if got := tr.counters.EventsLost; got != 13 {
		t.Fatalf("lost = %d, want 13", got)
	}
}

func TestProgTypeName(t *testing.T) {
	if got := progTypeName(5); got != "tracepoint" {
		t.Fatal(got)
	}
	if got := progTypeName(1000); got != "1000" {
		t.Fatal(got)
	}
}

// batchKernel reads programs in one call, like the iterator.
type batchKernel struct {
	*fakeKernel
	batches int
}

func (k *batchKernel) ReadPrograms(ids []uint32, fn func(uint32, *loader.ProgramInfo, error)) error {
	k.batches++
	for _, id := range ids {
		info, err := k.ReadProgram(id)
		fn(id, &info, err)
	}
	return nil
}

func TestSweepPrefersBatchReader(t *testing.T) {
	fk := newFakeKernel()
	fk.progs[1] = loader.ProgramInfo{ID: 1, LoadTime: 1, RunTime: 10, RunCount: 1}
	fk.progs[2] = loader.ProgramInfo{ID: 2, LoadTime: 1}
	k := &batchKernel{fakeKernel: fk}
	c := newClock()
	tr := New(k, Options{now: c.now})
	tr.apply(load(1, 0))
	tr.apply(load(2, 0))
	delete(fk.progs, 2)
	snap, err := tr.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	if k.batches != 1 {
		t.Fatalf("batch reads: %d, want 1", k.batches)
	}
	if len(snap.Programs) != 1 || snap.Programs[0].Runtime != 10 || len(tr.programs) != 1 {
		t.Fatalf("batch sweep: %+v", snap.Programs)
	}
}

// Maps are read once, except the memory of maps that allocate as they grow.
func TestMapMemoryRefreshOnlyForDynamicMaps(t *testing.T) {
	k := newFakeKernel()
	k.maps[1] = loader.MapInfo{ID: 1, Memlock: 100}
	k.maps[2] = loader.MapInfo{ID: 2, Memlock: 10, Flags: 1 /* BPF_F_NO_PREALLOC */}
	k.progs[7] = loader.ProgramInfo{ID: 7, LoadTime: 1, MapIDs: []uint32{1, 2}}
	tr, _ := newTracker(t, k)
	tr.apply(load(7, 0))
	sweep(t, tr)
	k.maps[1] = loader.MapInfo{ID: 1, Memlock: 999}
	k.maps[2] = loader.MapInfo{ID: 2, Memlock: 50, Flags: 1}
	reads := k.mapReads
	r := programRow(t, sweep(t, tr), 7)
	if r.MapMemory != 150 {
		t.Fatalf("map memory %d, want 150 (fixed map cached, dynamic one refreshed)", r.MapMemory)
	}
	if k.mapReads != reads+1 {
		t.Fatalf("%d map reads in a sweep, want 1", k.mapReads-reads)
	}
}

func TestSelfGadgetNamed(t *testing.T) {
	k := newFakeKernel()
	k.procs[9] = loader.Process{PID: 9, StartTime: 1, Comm: "tracker", Exe: "/usr/local/bin/bpfstats-tracker"}
	k.progs[1] = loader.ProgramInfo{ID: 1, LoadTime: 1}
	c := newClock()
	tr := New(k, Options{Node: "n", now: c.now, Self: Self{PID: 9, Name: "bpfstats-tracker", Image: "bpfstats-tracker:v1"}})
	tr.apply(load(1, 9))
	snap := sweep(t, tr)
	if g := snap.Gadgets[0]; g.GadgetName != "bpfstats-tracker" || g.GadgetImage != "bpfstats-tracker:v1" {
		t.Fatalf("the tracker's own gadget: %+v", g)
	}
}

// flakySource fails some reads, then is closed by the test.
type flakySource struct {
	reads chan error
}

func (s *flakySource) Name() string { return "flaky" }
func (s *flakySource) Read() (loader.ProgramEvent, error) {
	err, ok := <-s.reads
	if !ok {
		return loader.ProgramEvent{}, loader.ErrClosed
	}
	return loader.ProgramEvent{}, err
}
func (s *flakySource) Close() error { return nil }

// A failed read is not the end: Run resyncs and reads on; only a source
// failing again and again ends it.
func TestRunSurvivesFailedReads(t *testing.T) {
	k := newFakeKernel()
	src := &flakySource{reads: make(chan error)}
	tr, _ := newTracker(t, k)
	snaps := make(chan *Snapshot, 16)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		done <- tr.Run(ctx, RunConfig{Source: src, Interval: time.Millisecond, OnSnapshot: func(s *Snapshot) {
			select {
			case snaps <- s:
			default:
			}
		}})
	}()
	src.reads <- errors.New("bad record")
	// The failure became a resync: the start-up one plus this one.
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-snaps:
			if s.Counters.Resyncs >= 2 {
				goto resynced
			}
		case err := <-done:
			t.Fatalf("Run ended on one failed read: %v", err)
		case <-deadline:
			t.Fatal("no resync after a failed read")
		}
	}
resynced:
	// The first failure was one; maxReadFailures more end it.
	for range maxReadFailures {
		src.reads <- errors.New("still bad")
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "still bad") {
		t.Fatalf("a source failing every read must end Run with its error, got %v", err)
	}
	if err := New(k, Options{}).Run(ctx, RunConfig{Source: src}); err == nil {
		t.Fatal("Run with no interval must fail")
	}
}

// programIDs returns the IDs in the inventory, sorted.
func (t *Tracker) programIDs() []uint32 {
	ids := slices.Collect(maps.Keys(t.programs))
	slices.Sort(ids)
	return ids
}
