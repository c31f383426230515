package state

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// chanSource delivers the events sent on its channel; closing the channel
// closes the source.
type chanSource chan loader.ProgramEvent

func (s chanSource) Name() string { return "chan" }
func (s chanSource) Read() (loader.ProgramEvent, error) {
	ev, ok := <-s
	if !ok {
		return ev, loader.ErrClosed
	}
	return ev, nil
}
func (s chanSource) Close() error { return nil }

// sweepingKernel tells, on sweeps, each time a sweep read the programs:
// the sign that the run loop is alive.
type sweepingKernel struct {
	*fakeKernel
	sweeps chan struct{}
}

// ReadAllPrograms reads the programs of ids and lists no other (see
// ProgramIDs).
func (k *sweepingKernel) ReadAllPrograms(ids []uint32, fn func(uint32, *loader.ProgramInfo, error)) error {
	select {
	case k.sweeps <- struct{}{}:
	default:
	}
	for _, id := range ids {
		info, err := k.ReadProgram(id)
		fn(id, &info, err)
	}
	return nil
}

// ProgramIDs lists nothing: the programs are loaded by the test's events
// after the start-up snapshot, so that every load is announced.
func (k *sweepingKernel) ProgramIDs() ([]uint32, error) { return nil, nil }

// runKernel is a fake kernel with programs 1..n, set up before Run starts:
// the loop only reads it.
func runKernel(n int) *sweepingKernel {
	k := newFakeKernel()
	for id := uint32(1); id <= uint32(n); id++ {
		k.progs[id] = progStats(id, 0, 0)
	}
	return &sweepingKernel{fakeKernel: k, sweeps: make(chan struct{}, 1)}
}

// startRun runs tr in the background; wait returns Run's error.
func startRun(t *testing.T, tr *Tracker, cfg RunConfig) (cancel func(), wait func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, cfg) }()
	t.Cleanup(cancel)
	return cancel, func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
			return nil
		}
	}
}

// latest keeps only the newest snapshot for the test to take.
func latest(snaps chan *Snapshot) func(*Snapshot) {
	return func(s *Snapshot) {
		select {
		case <-snaps:
		default:
		}
		snaps <- s
	}
}

// waitSnapshot waits for a snapshot that ok accepts.
func waitSnapshot(t *testing.T, snaps <-chan *Snapshot, what string, ok func(*Snapshot) bool) *Snapshot {
	t.Helper()
	deadline := time.After(10 * time.Second)
	var last *Snapshot
	for {
		select {
		case s := <-snaps:
			if ok(s) {
				return s
			}
			last = s
		case <-deadline:
			if last != nil {
				t.Fatalf("no snapshot with %s; last counters %+v", what, last.Counters)
			}
			t.Fatalf("no snapshot with %s", what)
		}
	}
}

// A stalled OnEvent holds up neither the events nor the sweeps: events are
// applied, the ones that do not fit the queue are counted, and those
// handed over keep their order.
func TestRunEventsNeverWaitForOnEvent(t *testing.T) {
	const n = 1000
	k := runKernel(n)
	tr, _ := newTracker(t, k.fakeKernel)
	tr.kernel = k
	src := make(chanSource)
	gate := make(chan struct{})
	var got []uint32 // written by the OnEvent goroutine, read after Run
	snaps := make(chan *Snapshot, 1)
	_, wait := startRun(t, tr, RunConfig{
		Source: src, Interval: time.Millisecond, EventQueue: 100,
		OnSnapshot: latest(snaps),
		OnEvent: func(ev *Event) {
			<-gate
			got = append(got, ev.ProgID)
		},
	})
	for id := uint32(1); id <= n; id++ {
		src <- load(id, 0)
	}
	snap := waitSnapshot(t, snaps, "every load applied", func(s *Snapshot) bool {
		return s.Counters.EventsLoad == n && len(s.Programs) == n
	})
	if snap.Counters.EventsDropped == 0 {
		t.Fatalf("a full queue must count drops: %+v", snap.Counters)
	}
	close(gate)
	close(src)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	// Run ended on its own: everything queued was handed over.
	if uint64(len(got))+tr.counters.EventsDropped != n {
		t.Fatalf("%d events handed over and %d dropped, want %d in all", len(got), tr.counters.EventsDropped, n)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("events out of order: %d after %d", got[i], got[i-1])
		}
	}
	if got[0] != 1 {
		t.Fatalf("the first event must be handed over: got %d first", got[0])
	}
}

// A stalled OnSnapshot holds up neither the events nor the sweeps: the
// newest snapshot replaces the one waiting, and the replaced ones are
// counted.
func TestRunSnapshotsReplacedWhileOnSnapshotStalls(t *testing.T) {
	k := runKernel(3)
	tr, _ := newTracker(t, k.fakeKernel)
	tr.kernel = k
	src := make(chanSource)
	gate := make(chan struct{})
	snaps := make(chan *Snapshot, 1)
	events := make(chan *Event, 10)
	cancel, wait := startRun(t, tr, RunConfig{
		Source: src, Interval: time.Millisecond,
		OnSnapshot: func(s *Snapshot) {
			<-gate
			latest(snaps)(s)
		},
		OnEvent: func(ev *Event) { events <- ev },
	})
	for id := uint32(1); id <= 3; id++ {
		src <- load(id, 0)
		select {
		case <-events:
		case <-time.After(10 * time.Second):
			t.Fatalf("load %d not published while OnSnapshot stalls", id)
		}
	}
	// Sweeps go on. The sweeps of the snapshot in OnSnapshot's hands, of
	// the one waiting and of the one replacing it are done once a fourth
	// reads the programs (the first signal may be an old one).
	for range 5 {
		select {
		case <-k.sweeps:
		case <-time.After(10 * time.Second):
			t.Fatal("sweeps stopped while OnSnapshot stalls")
		}
	}
	close(gate)
	waitSnapshot(t, snaps, "replaced snapshots counted", func(s *Snapshot) bool {
		return s.Counters.SnapshotsDropped > 0 && s.Counters.EventsLoad == 3
	})
	cancel()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
}

// With Count, every snapshot is handed over, in order, and events are
// applied and published while the loop waits for a slow OnSnapshot.
func TestRunCountHandsOverEverySnapshot(t *testing.T) {
	k := runKernel(1)
	tr, _ := newTracker(t, k.fakeKernel)
	tr.kernel = k
	src := make(chanSource)
	defer close(src)
	gate := make(chan struct{})
	events := make(chan *Event, 1)
	var sweeps []uint64 // written by the OnSnapshot goroutine, read after Run
	_, wait := startRun(t, tr, RunConfig{
		Source: src, Interval: time.Millisecond, Count: 5,
		OnSnapshot: func(s *Snapshot) {
			<-gate
			sweeps = append(sweeps, s.Counters.Sweeps)
		},
		OnEvent: func(ev *Event) { events <- ev },
	})
	src <- load(1, 0)
	select {
	case <-events:
	case <-time.After(10 * time.Second):
		t.Fatal("load not published while the loop waits for OnSnapshot")
	}
	close(gate)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if len(sweeps) != 5 || sweeps[0] != 1 || sweeps[4] != 5 {
		t.Fatalf("snapshots handed over: sweeps %v, want 1..5", sweeps)
	}
	if tr.counters.SnapshotsDropped != 0 {
		t.Fatalf("counted drops: %+v", tr.counters)
	}
}

// When ctx ends, Run hands over nothing more than the calls in progress
// and counts what was still queued.
func TestRunCancelDropsQueued(t *testing.T) {
	const n = 50
	k := runKernel(n)
	tr, _ := newTracker(t, k.fakeKernel)
	tr.kernel = k
	src := make(chanSource)
	defer close(src)
	gate := make(chan struct{})
	got := 0 // written by the OnEvent goroutine, read after Run
	snaps := make(chan *Snapshot, 1)
	entered := make(chan struct{}, n)
	cancel, wait := startRun(t, tr, RunConfig{
		Source: src, Interval: time.Millisecond,
		OnSnapshot: latest(snaps),
		OnEvent: func(*Event) {
			entered <- struct{}{}
			<-gate
			got++
		},
	})
	for id := uint32(1); id <= n; id++ {
		src <- load(id, 0)
	}
	waitSnapshot(t, snaps, "every load applied", func(s *Snapshot) bool { return s.Counters.EventsLoad == n })
	<-entered // a call in progress when ctx ends
	cancel()
	close(gate)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if got == 0 || uint64(got)+tr.counters.EventsDropped != n {
		t.Fatalf("%d handed over, %d dropped, want at least one and %d in all", got, tr.counters.EventsDropped, n)
	}
}

// With RecycleSnapshots, a later snapshot's program rows are built in the
// storage of one OnSnapshot is done with, and every snapshot still holds
// the right rows while OnSnapshot has it.
func TestRunRecyclesSnapshotStorage(t *testing.T) {
	k := newFakeKernel()
	for id := uint32(1); id <= 5; id++ {
		k.progs[id] = prog(id)
	}
	tr := New(k, Options{Node: "n1", Source: "test"})
	src := make(chanSource)
	defer close(src)
	var storage []*Row
	var bad []string
	_, wait := startRun(t, tr, RunConfig{
		Source: src, Interval: time.Millisecond, Count: 4, RecycleSnapshots: true,
		OnSnapshot: func(s *Snapshot) {
			storage = append(storage, s.Programs[:1][0])
			for i, r := range s.Programs {
				if r.ProgID != uint32(i+1) || r.ProgName != fmt.Sprintf("p%d", i+1) {
					bad = append(bad, fmt.Sprintf("snapshot %d row %d: %d %q", len(storage), i, r.ProgID, r.ProgName))
				}
			}
		},
	})
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 || len(storage) != 4 {
		t.Fatalf("%d snapshots, wrong rows: %q", len(storage), bad)
	}
	reused := false
	for i := range storage {
		reused = reused || slices.Contains(storage[:i], storage[i])
	}
	if !reused {
		t.Error("no snapshot reused the storage of an earlier one")
	}
}
