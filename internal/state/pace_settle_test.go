package state

import (
	"sync"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// settlingKernel is a fake kernel whose first process read after a
// holders scan (the settling of owners, one read per new holder) stops
// until the test releases it, and which counts the process reads made
// after the program late was read (by the handling of its load event).
type settlingKernel struct {
	*fakeKernel
	listed  []uint32
	late    uint32
	stalled chan struct{}
	resume  chan struct{}

	mu                 sync.Mutex
	scanned, stopped   bool
	lateRead           bool
	procReadsAfterLate int
}

func (k *settlingKernel) ProgramIDs() ([]uint32, error) { return k.listed, nil }

func (k *settlingKernel) Holders() (map[uint32][]uint32, error) {
	k.mu.Lock()
	k.scanned = true
	k.mu.Unlock()
	return k.fakeKernel.Holders()
}

func (k *settlingKernel) ReadProgram(id uint32) (loader.ProgramInfo, error) {
	if id == k.late {
		k.mu.Lock()
		k.lateRead = true
		k.mu.Unlock()
	}
	return k.fakeKernel.ReadProgram(id)
}

func (k *settlingKernel) ReadProcess(pid uint32) (loader.Process, error) {
	k.mu.Lock()
	stop := k.scanned && !k.stopped
	k.stopped = k.stopped || stop
	if k.lateRead {
		k.procReadsAfterLate++
	}
	k.mu.Unlock()
	if stop {
		close(k.stalled)
		<-k.resume
	}
	return k.fakeKernel.ReadProcess(pid)
}

// steppedSource is an event source that tells each time its reader asks
// for the next event: the previous one has then been handed to the loop.
type steppedSource struct {
	events  chan loader.ProgramEvent
	reading chan struct{}
}

func (s *steppedSource) Name() string { return "stepped" }

func (s *steppedSource) Read() (loader.ProgramEvent, error) {
	select {
	case s.reading <- struct{}{}:
	default:
	}
	ev, ok := <-s.events
	if !ok {
		return ev, loader.ErrClosed
	}
	return ev, nil
}

func (s *steppedSource) Close() error { return nil }

// The load of a new program is applied while the owners of thousands of
// programs are settled after a holders scan, at the next yield, not once
// the whole settling is done: process reads of the settling come after
// the load's own program read.
func TestRunAppliesLoadsDuringOwnerSettling(t *testing.T) {
	const n = 3 * yieldEvery
	fk := newFakeKernel()
	k := &settlingKernel{fakeKernel: fk, late: n + 1, stalled: make(chan struct{}), resume: make(chan struct{})}
	for id := uint32(1); id <= n; id++ {
		fk.progs[id] = progStats(id, 10, 1)
		pid := 10000 + id // one holder each, new to the tracker
		fk.holders[id] = []uint32{pid}
		fk.procs[pid] = loader.Process{PID: pid, StartTime: 1, Comm: "holder", Exe: "/holder"}
		k.listed = append(k.listed, id)
	}
	fk.progs[k.late] = progStats(k.late, 10, 1)
	src := &steppedSource{events: make(chan loader.ProgramEvent), reading: make(chan struct{}, 1)}
	defer close(src.events)
	tr := New(k, Options{Node: "n1", Source: "test"})
	_, wait := startRun(t, tr, RunConfig{Source: src, Interval: time.Millisecond, Count: 1})
	select {
	case <-k.stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the sweep never settled owners")
	}
	<-src.reading // the reader waits for the first event
	src.events <- load(k.late, 0)
	<-src.reading // and has handed it to the loop
	close(k.resume)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.lateRead || k.procReadsAfterLate == 0 {
		t.Fatalf("load applied: %v, process reads of the settling after it: %d; want it applied at a yield within the settling",
			k.lateRead, k.procReadsAfterLate)
	}
}
