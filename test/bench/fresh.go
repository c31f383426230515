package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
)

// freshness is the latency of one event source, in milliseconds.
type freshness struct {
	source string
	// To the inventory: the time the tracker applied the event (or built
	// the first snapshot that shows the change).
	loadP50, loadP99       float64
	releaseP50, releaseP99 float64
	// To the tracker's consumers: OnEvent (or OnSnapshot) running, one
	// goroutine hop later.
	loadOutP99, releaseOutP99 float64
	loads, releases           int // events seen, of want each
	want                      int
	loadCall                  float64 // median BPF_PROG_LOAD time, ms
	// wakeP99 is the p99 of how late a goroutine of this process that
	// sleeps 1 ms at a time wakes up during the run, in ms: the
	// scheduling delay any event path of the process also meets.
	wakeP99 float64
	err     error
}

// measureFreshness runs a tracker (state.Tracker.Run, 1 s sweeps) on the
// source in this process while another process (runFreshLoader) loads
// count programs one every pace, then releases them, and times each from
// the start of its load (or close) call to the tracker's OnEvent for it.
func measureFreshness(source string, count int, pace time.Duration) freshness {
	f := freshness{source: source, want: count}
	w, err := startWatch(source)
	if err != nil {
		f.err = err
		return f
	}
	defer w.stop()
	stopProbe := startWakeProbe()
	defer stopProbe()
	l, err := startFreshLoader(count, pace)
	if err != nil {
		f.err = err
		return f
	}
	defer l.stop()
	clock := newMonoClock()
	progs, calls, err := l.loads(w, clock)
	if err != nil {
		f.err = err
		return f
	}
	f.loadCall = median(calls)
	w.waitAll(progs, w.loadSeen)
	// Every program is gone once a snapshot lacks it: mark them all
	// before the first close.
	w.mu.Lock()
	for _, p := range progs {
		w.closing[p.id] = true
	}
	w.mu.Unlock()
	if err := l.releases(progs, clock); err != nil {
		f.err = err
		return f
	}
	w.waitAll(progs, w.releaseSeen)
	f.wakeP99 = percentile(stopProbe(), 99)

	loads, releases := w.latencies(progs, w.loadIn, w.releaseIn)
	f.loads, f.releases = len(loads), len(releases)
	f.loadP50, f.loadP99 = percentile(loads, 50), percentile(loads, 99)
	f.releaseP50, f.releaseP99 = percentile(releases, 50), percentile(releases, 99)
	loads, releases = w.latencies(progs, w.loadSeen, w.releaseSeen)
	f.loadOutP99, f.releaseOutP99 = percentile(loads, 99), percentile(releases, 99)
	return f
}

// startWakeProbe starts a goroutine that sleeps 1 ms at a time and notes
// how late it wakes; the returned function stops it (the first call) and
// returns the delays in ms.
func startWakeProbe() func() []float64 {
	done := make(chan struct{})
	result := make(chan []float64, 1)
	var stop sync.Once
	var late []float64
	go func() {
		var late []float64
		for {
			select {
			case <-done:
				result <- late
				return
			default:
			}
			start := time.Now()
			time.Sleep(time.Millisecond)
			late = append(late, float64((time.Since(start)-time.Millisecond).Microseconds())/1000)
		}
	}()
	return func() []float64 {
		stop.Do(func() {
			close(done)
			late = <-result
		})
		return late
	}
}

// freshProgram is one program loaded by a freshness run, with the start
// of its load and close calls.
type freshProgram struct {
	id        uint32
	loadStart time.Time
	closed    time.Time
}

// watch is a state.Tracker running on an event source in this process,
// noting when it saw each program come and go.
type watch struct {
	src    loader.Source
	k      *loader.Kernel
	cancel context.CancelFunc
	runErr chan error

	mu sync.Mutex
	// loadSeen and releaseSeen are when the tracker's consumers learned
	// of each program; loadIn and releaseIn when its inventory did.
	loadSeen, releaseSeen map[uint32]time.Time
	loadIn, releaseIn     map[uint32]time.Time
	opening               map[uint32]bool // loaded by the harness
	closing               map[uint32]bool // closed by the harness
}

// startWatch starts the tracker and waits for its first sweep.
func startWatch(source string) (*watch, error) {
	k, err := loader.NewKernel("")
	if err != nil {
		return nil, err
	}
	src, err := loader.OpenSource(source, loader.SourceOptions{PollInterval: time.Second})
	if err != nil {
		k.Close()
		return nil, err
	}
	w := &watch{src: src, k: k, runErr: make(chan error, 1),
		loadSeen: make(map[uint32]time.Time), releaseSeen: make(map[uint32]time.Time),
		loadIn: make(map[uint32]time.Time), releaseIn: make(map[uint32]time.Time),
		opening: make(map[uint32]bool), closing: make(map[uint32]bool)}
	tr := state.New(k, state.Options{Node: "bench", Source: src.Name()})
	ready := make(chan struct{})
	var readyOnce sync.Once
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() {
		w.runErr <- tr.Run(ctx, state.RunConfig{
			Source:   src,
			Interval: time.Second,
			Log:      zerolog.Nop(),
			OnSnapshot: func(snap *state.Snapshot) {
				readyOnce.Do(func() { close(ready) })
				w.onSnapshot(snap)
			},
			OnEvent: w.onEvent,
		})
	}()
	select {
	case <-ready:
		return w, nil
	case <-time.After(30 * time.Second):
		w.stop()
		return nil, errors.New("no first sweep within 30 s")
	}
}

// loading notes that the harness loaded program id.
func (w *watch) loading(id uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.opening[id] = true
}

// onSnapshot notes the loads and releases a sweep saw: a sweep lists new
// programs and drops gone ones before their event arrives (the poll
// source has none), and the event then changes nothing.
func (w *watch) onSnapshot(snap *state.Snapshot) {
	now := time.Now()
	present := make(map[uint32]bool, len(snap.Programs))
	for _, r := range snap.Programs {
		present[r.ProgID] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for id := range w.opening {
		if present[id] {
			first(w.loadSeen, id, now)
			first(w.loadIn, id, snap.Time)
		}
	}
	for id := range w.closing {
		if !present[id] {
			first(w.releaseSeen, id, now)
			first(w.releaseIn, id, snap.Time)
		}
	}
}

func (w *watch) onEvent(ev *state.Event) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	// ev.Time is when the tracker applied the event to its inventory.
	switch ev.Kind {
	case "load":
		first(w.loadSeen, ev.ProgID, now)
		first(w.loadIn, ev.ProgID, ev.Time)
	case "release":
		first(w.releaseSeen, ev.ProgID, now)
		first(w.releaseIn, ev.ProgID, ev.Time)
	}
}

// first records t for id unless an earlier time is recorded.
func first(seen map[uint32]time.Time, id uint32, t time.Time) {
	if old, ok := seen[id]; !ok || t.Before(old) {
		seen[id] = t
	}
}

// waitAll waits up to 5 s until seen holds every program.
func (w *watch) waitAll(progs []freshProgram, seen map[uint32]time.Time) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		n := 0
		for _, p := range progs {
			if _, ok := seen[p.id]; ok {
				n++
			}
		}
		w.mu.Unlock()
		if n == len(progs) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// latencies returns the load and release latencies seen, in ms.
func (w *watch) latencies(progs []freshProgram, loadSeen, releaseSeen map[uint32]time.Time) (loads, releases []float64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range progs {
		if t, ok := loadSeen[p.id]; ok {
			loads = append(loads, float64(t.Sub(p.loadStart).Microseconds())/1000)
		}
		if t, ok := releaseSeen[p.id]; ok {
			releases = append(releases, float64(t.Sub(p.closed).Microseconds())/1000)
		}
	}
	return loads, releases
}

func (w *watch) stop() {
	w.cancel()
	w.src.Close()
	<-w.runErr
	w.k.Close()
}
