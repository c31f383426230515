package state_test

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
)

// cyclesFor scales a cycle count down where each cycle is slow: the
// fentry source runs in a TCG-emulated VM (about 30 times slower), and
// -short asks for it.
func cyclesFor(src loader.Source, n int) int {
	if src.Name() == loader.SourceFentry || testing.Short() {
		return n / 10
	}
	return n
}

// dropSource passes on the events of a real source but loses some loads
// and releases without a word, as a ring that overflows unnoticed would;
// it reports every event it read, dropped or not, to seen.
type dropSource struct {
	loader.Source
	seen func(ev loader.ProgramEvent)
}

// dropsLoad and dropsRelease pick the lost events: half of each, in runs
// that cover odd and even IDs alike.
func dropsLoad(id uint32) bool    { return id/2%2 == 0 }
func dropsRelease(id uint32) bool { return id/4%2 == 0 }

func (s *dropSource) Read() (loader.ProgramEvent, error) {
	for {
		ev, err := s.Source.Read()
		if err != nil {
			return ev, err
		}
		s.seen(ev)
		switch {
		case ev.Kind == loader.EventLost:
			continue // unnoticed: no resync
		case ev.Kind == loader.EventLoad && dropsLoad(ev.ProgramID):
			continue
		case ev.Kind == loader.EventRelease && dropsRelease(ev.ProgramID):
			continue
		}
		return ev, nil
	}
}

// eventWaiter tells when the source has read every expected event.
type eventWaiter struct {
	mu       sync.Mutex
	seenKeys map[string]bool
	expected []string
	changed  chan struct{}
}

func newEventWaiter() *eventWaiter {
	return &eventWaiter{seenKeys: map[string]bool{}, changed: make(chan struct{}, 1)}
}

func (w *eventWaiter) expect(kind loader.EventKind, id uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expected = append(w.expected, fmt.Sprint(kind, id))
}

func (w *eventWaiter) seen(ev loader.ProgramEvent) {
	w.mu.Lock()
	w.seenKeys[fmt.Sprint(ev.Kind, ev.ProgramID)] = true
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *eventWaiter) missing() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, key := range w.expected {
		if !w.seenKeys[key] {
			n++
		}
	}
	return n
}

// wait returns once every expected event was read, or fails the test.
func (w *eventWaiter) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for w.missing() > 0 {
		select {
		case <-w.changed:
		case <-deadline:
			t.Fatalf("%d events never read from the source", w.missing())
		}
	}
}

// Whatever the event source loses, the first sweep after the kernel
// changed makes the inventory equal to the kernel's program list: first
// with loads lost, then with releases lost.
func TestAuditRepairsLostEvents(t *testing.T) {
	src := testSource(t)
	w := newEventWaiter()
	_, snaps := runTracker(t, &dropSource{Source: src, seen: w.seen})
	<-snaps
	kernel, err := loader.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}

	n := cyclesFor(src, 200)
	var progs []*ebpf.Program
	var ids []uint32
	lostLoads := 0
	for range n {
		p := loadProgram(t)
		t.Cleanup(func() { p.Close() })
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		progs, ids = append(progs, p), append(ids, uint32(id))
		w.expect(loader.EventLoad, uint32(id))
		if dropsLoad(uint32(id)) {
			lostLoads++
		}
	}
	w.wait(t, 30*time.Second)
	snap := oneSweepMatches(t, snaps, kernel)
	if c := snap.Counters; c.RepairsAdded < uint64(lostLoads) {
		t.Fatalf("%d loads lost, the audit added %d programs (counters %+v)", lostLoads, c.RepairsAdded, c)
	}
	removedBefore := snap.Counters.RepairsRemoved

	lostReleases := 0
	for i, p := range progs {
		if i%2 == 0 {
			continue
		}
		w.expect(loader.EventRelease, ids[i])
		if dropsRelease(ids[i]) {
			lostReleases++
		}
		p.Close()
	}
	w.wait(t, 30*time.Second)
	snap = oneSweepMatches(t, snaps, kernel)
	if c := snap.Counters; c.RepairsRemoved-removedBefore < uint64(lostReleases) {
		t.Fatalf("%d releases lost, the audit removed %d programs (counters %+v)",
			lostReleases, c.RepairsRemoved-removedBefore, c)
	}
	t.Logf("%d loads and %d releases lost, each repaired by one sweep (counters %+v)", lostLoads, lostReleases, snap.Counters)
}

// oneSweepMatches waits for the first sweep that starts after now and
// checks that its inventory equals the kernel's program list. Only if the
// kernel's list changed meanwhile (another process loading) is the next
// one taken.
func oneSweepMatches(t *testing.T, snaps <-chan *state.Snapshot, kernel *loader.Kernel) *state.Snapshot {
	t.Helper()
	for range 5 {
		mark := time.Now()
		before, err := kernel.ProgramIDs()
		if err != nil {
			t.Fatal(err)
		}
		snap := <-snaps
		for !snap.Time.Add(-snap.SweepDuration).After(mark) {
			snap = <-snaps
		}
		after, err := kernel.ProgramIDs()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(before, after) {
			continue
		}
		var inv []uint32
		for _, r := range snap.Programs {
			inv = append(inv, r.ProgID)
		}
		if !slices.Equal(inv, before) {
			t.Fatalf("after one sweep, inventory %v != kernel %v (counters %+v)", inv, before, snap.Counters)
		}
		return snap
	}
	t.Fatal("the kernel's program list never stayed still across a sweep")
	return nil
}

// pinThread locks the calling goroutine to its thread and the thread to
// cpu; the returned func undoes both.
func pinThread(t *testing.T, cpu int) func() {
	t.Helper()
	runtime.LockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatalf("pinning to CPU %d: %v", cpu, err)
	}
	return func() {
		unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	}
}

// pairLog checks the events published on OnEvent: per program (ID and
// tag), at most one load, at most one release, and a release only after
// its load.
type pairLog struct {
	mu         sync.Mutex
	loads      map[string]int
	releases   map[string]int
	unnamed    int
	violations []string
	changed    chan struct{}
}

func (l *pairLog) onEvent(ev *state.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := fmt.Sprintf("%d/%s", ev.ProgID, ev.Tag)
	switch ev.Kind {
	case "load":
		l.loads[key]++
		if l.loads[key] > 1 {
			l.violations = append(l.violations, "second load of "+key)
		}
		if ev.ProgName == "" {
			l.unnamed++
		}
	case "release":
		l.releases[key]++
		if l.loads[key] == 0 {
			l.violations = append(l.violations, "release without a load of "+key)
		}
		if l.releases[key] > 1 {
			l.violations = append(l.violations, "second release of "+key)
		}
	}
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// released counts how many of ids have a published release.
func (l *pairLog) released(ids map[uint32]string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for id, tag := range ids {
		if l.releases[fmt.Sprintf("%d/%s", id, tag)] > 0 {
			n++
		}
	}
	return n
}

// Every load published on OnEvent gets exactly one release and every
// release has its load, also when programs are loaded on one CPU and
// closed on another (the release can be read before its load).
func TestLoadsAndReleasesPairAcrossCPUs(t *testing.T) {
	src := testSource(t)
	log := &pairLog{loads: map[string]int{}, releases: map[string]int{}, changed: make(chan struct{}, 1)}
	_, snaps := runTrackerEvents(t, src, log.onEvent)
	<-snaps

	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		t.Fatal(err)
	}
	var usable []int
	for cpu := range 1024 {
		if cpus.IsSet(cpu) {
			usable = append(usable, cpu)
		}
	}
	// The count on the host (a few seconds); the TCG-emulated VM
	// runs a tenth of cyclesFor's scale.
	n := cyclesFor(src, 10000)
	if src.Name() == loader.SourceFentry || testing.Short() {
		n = 200
	}
	toClose := make(chan *ebpf.Program)
	closed := make(chan struct{})
	go func() {
		if len(usable) > 1 {
			runtime.LockOSThread() // never unlocked: the pinned thread ends with the goroutine
			var set unix.CPUSet
			set.Set(usable[1])
			unix.SchedSetaffinity(0, &set)
		}
		for p := range toClose {
			p.Close()
			closed <- struct{}{}
		}
	}()
	if len(usable) > 1 {
		defer pinThread(t, usable[0])()
	} else {
		t.Log("one CPU: load and close run unpinned")
	}
	ids := make(map[uint32]string, n)
	for range n {
		p := loadProgram(t)
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ids[uint32(id)] = info.Tag
		toClose <- p
		<-closed
	}
	close(toClose)

	deadline := time.After(60 * time.Second)
	var counters state.Counters
	for log.released(ids) < n {
		select {
		case <-log.changed:
		case s := <-snaps:
			counters = s.Counters
		case <-deadline:
			t.Fatalf("%d of %d programs released on OnEvent (counters %+v)", log.released(ids), n, counters)
		}
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, v := range log.violations {
		t.Error(v)
	}
	for id, tag := range ids {
		if key := fmt.Sprintf("%d/%s", id, tag); log.loads[key] != 1 || log.releases[key] != 1 {
			t.Errorf("program %s: %d loads, %d releases", key, log.loads[key], log.releases[key])
		}
	}
	t.Logf("%d cycles across CPUs %v (pid %d): every load has its release; %d loads published without a name",
		n, usable[:min(2, len(usable))], os.Getpid(), log.unnamed)
}
