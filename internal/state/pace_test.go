package state

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// yielding is a pacer that reads on the calling goroutine and calls its
// function where Run would apply events.
type yielding func()

func (y yielding) readPrograms(read func(readFunc) error, each readFunc) error { return read(each) }

func (y yielding) scanHolders(scan func() (map[uint32][]uint32, error)) (map[uint32][]uint32, error) {
	return scan()
}

func (y yielding) offload(work func()) { work(); y() }

func (y yielding) yield() { y() }

func (y yielding) yieldLoads() {}

// stallingKernel is a fake kernel whose program read stops halfway,
// after handing over more than one batch, until the test releases it.
type stallingKernel struct {
	*fakeKernel
	// listed are the programs the start-up snapshot lists.
	listed  []uint32
	halfway chan struct{}
	resume  chan struct{}
	stalled bool
}

func (k *stallingKernel) ProgramIDs() ([]uint32, error) { return k.listed, nil }

func (k *stallingKernel) ReadAllPrograms(ids []uint32, fn func(uint32, *loader.ProgramInfo, error)) error {
	info := new(loader.ProgramInfo)
	for i, id := range ids {
		if i == len(ids)/2 && !k.stalled {
			k.stalled = true
			close(k.halfway)
			<-k.resume
		}
		var err error
		*info, err = k.ReadProgram(id)
		fn(id, info, err)
	}
	return nil
}

// An event is applied, and published, while a sweep's program read is in
// progress: it does not wait for the sweep.
func TestRunAppliesEventsDuringSweepRead(t *testing.T) {
	const n = 3 * readBatchSize
	fk := newFakeKernel()
	k := &stallingKernel{fakeKernel: fk, halfway: make(chan struct{}), resume: make(chan struct{})}
	for id := uint32(1); id <= n; id++ {
		fk.progs[id] = progStats(id, 10, 1)
		k.listed = append(k.listed, id)
	}
	const late = n + 1
	fk.progs[late] = progStats(late, 10, 1)
	tr := New(k, Options{Node: "n1", Source: "test"})
	snap := loadDuringStall(t, tr, k.halfway, k.resume, late, 2)
	if len(snap.Programs) != n+1 || snap.Counters.EventsLoad != 1 || snap.Counters.RepairsAdded != 0 {
		t.Fatalf("last snapshot: %d programs, counters %+v", len(snap.Programs), snap.Counters)
	}
}

// loadDuringStall runs tr for count sweeps; once its kernel stopped in a
// read (stalled closed), it sends the load of program late and requires
// its event before it lets the kernel go on (closes resume). It returns
// the last snapshot.
func loadDuringStall(t *testing.T, tr *Tracker, stalled, resume chan struct{}, late uint32, count int) *Snapshot {
	t.Helper()
	src := make(chanSource)
	defer close(src)
	events := make(chan *Event, 1)
	snaps := make(chan *Snapshot, 1)
	_, wait := startRun(t, tr, RunConfig{
		Source: src, Interval: time.Millisecond, Count: count,
		OnSnapshot: latest(snaps),
		OnEvent:    func(ev *Event) { events <- ev },
	})
	select {
	case <-stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the first sweep never reached the stalling read")
	}
	src <- load(late, 0)
	select {
	case ev := <-events:
		if ev.Kind != "load" || ev.ProgID != late {
			t.Fatalf("event %+v, want the load of %d", ev, late)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the load waited for the sweep's read")
	}
	close(resume)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	return <-snaps
}

// While a snapshot is built, loads of new programs are applied and
// published, also behind a held release of another program; a release,
// and every event after a lost-events notice, wait for the next full
// yield, in order.
func TestYieldLoadsHoldsBackOtherEvents(t *testing.T) {
	k := newFakeKernel()
	for _, id := range []uint32{1, 2, 3} {
		k.progs[id] = prog(id)
	}
	tr, _ := newTracker(t, k)
	tr.applyEvent(load(2, 0)) // announced: its release is published
	sweep(t, tr)
	var published []string
	events := make(chan loader.ProgramEvent, 8)
	r := &runLoop{t: tr, events: events, cfg: RunConfig{OnEvent: func(ev *Event) {
		published = append(published, fmt.Sprintf("%s %d", ev.Kind, ev.ProgID))
	}}}
	r.published = startConsumer(8, r.cfg.OnEvent)
	k.progs[4], k.progs[5] = prog(4), prog(5)
	k.progs[6] = prog(6)
	events <- load(4, 0)
	events <- release(2)
	events <- load(5, 0)
	events <- loader.ProgramEvent{Kind: loader.EventLost, Lost: 1}
	events <- load(6, 0)
	r.yieldLoads()
	if _, ok := tr.programs[4]; !ok {
		t.Error("the load of new program 4 was not applied")
	}
	if _, ok := tr.programs[2]; !ok {
		t.Error("the release of 2 was applied during the snapshot")
	}
	if _, ok := tr.programs[5]; !ok {
		t.Error("the load of new program 5 waited for the held release of 2")
	}
	if _, ok := tr.programs[6]; ok {
		t.Error("the load of 6, after a held lost-events notice, was applied before it")
	}
	r.yield()
	r.published.stop(false)
	want := []string{"load 4", "load 5", "release 2", "load 6"}
	if !slices.Equal(published, want) {
		t.Errorf("published %q, want %q", published, want)
	}
}
