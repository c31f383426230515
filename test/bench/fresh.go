package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
)

// freshness is the latency of one event source, in milliseconds.
type freshness struct {
	source                 string
	loadP50, loadP99       float64
	releaseP50, releaseP99 float64
	loads, releases        int // events seen, of want each
	want                   int
	loadCall               float64 // median BPF_PROG_LOAD time, ms
	err                    error
}

// measureFreshness runs a tracker (state.Tracker.Run, 1 s sweeps) on the
// source in this process, loads count programs one every pace, then
// releases them, and times each from the start of its load (or close)
// call to the tracker's OnEvent for it.
func measureFreshness(source string, count int, pace time.Duration) freshness {
	f := freshness{source: source, want: count}
	k, err := loader.NewKernel("")
	if err != nil {
		f.err = err
		return f
	}
	defer k.Close()
	src, err := loader.OpenSource(source, loader.SourceOptions{PollInterval: time.Second})
	if err != nil {
		f.err = err
		return f
	}
	tr := state.New(k, state.Options{Node: "bench", Source: src.Name()})

	var mu sync.Mutex
	loadSeen := make(map[uint32]time.Time)
	releaseSeen := make(map[uint32]time.Time)
	closing := make(map[uint32]bool) // closed by the harness, under mu
	ready := make(chan struct{})
	var readyOnce sync.Once
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() {
		runErr <- tr.Run(ctx, state.RunConfig{
			Source:   src,
			Interval: time.Second,
			Log:      zerolog.Nop(),
			OnSnapshot: func(snap *state.Snapshot) {
				readyOnce.Do(func() { close(ready) })
				// A sweep also drops programs that are gone, before their
				// release event arrives (which then changes nothing).
				now := time.Now()
				present := make(map[uint32]bool, len(snap.Programs))
				for _, r := range snap.Programs {
					present[r.ProgID] = true
				}
				mu.Lock()
				defer mu.Unlock()
				for id := range closing {
					if _, ok := releaseSeen[id]; !ok && !present[id] {
						releaseSeen[id] = now
					}
				}
			},
			OnEvent: func(ev *state.Event) {
				now := time.Now()
				mu.Lock()
				defer mu.Unlock()
				switch ev.Kind {
				case "load":
					loadSeen[ev.ProgID] = now
				case "release":
					if _, ok := releaseSeen[ev.ProgID]; !ok {
						releaseSeen[ev.ProgID] = now
					}
				}
			},
		})
	}()
	defer func() {
		cancel()
		src.Close()
		<-runErr
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		f.err = errors.New("no first sweep within 30 s")
		return f
	}

	spec := &ebpf.ProgramSpec{
		Name: "bench_fresh", Type: ebpf.SocketFilter, License: "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	}
	type loaded struct {
		prog      *ebpf.Program
		id        uint32
		loadStart time.Time
		closed    time.Time
	}
	progs := make([]loaded, 0, count)
	defer func() {
		for _, p := range progs {
			p.prog.Close()
		}
	}()
	var calls []float64
	next := time.Now()
	for range count {
		time.Sleep(time.Until(next))
		next = next.Add(pace)
		start := time.Now()
		p, err := ebpf.NewProgram(spec)
		calls = append(calls, float64(time.Since(start).Microseconds())/1000)
		if err != nil {
			f.err = fmt.Errorf("loading: %w", err)
			return f
		}
		info, err := p.Info()
		if err != nil {
			p.Close()
			f.err = err
			return f
		}
		id, _ := info.ID()
		progs = append(progs, loaded{prog: p, id: uint32(id), loadStart: start})
	}
	f.loadCall = median(calls)
	waitAll := func(seen map[uint32]time.Time) {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			n := 0
			for _, p := range progs {
				if _, ok := seen[p.id]; ok {
					n++
				}
			}
			mu.Unlock()
			if n == len(progs) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitAll(loadSeen)
	next = time.Now()
	for i := range progs {
		time.Sleep(time.Until(next))
		next = next.Add(pace)
		mu.Lock()
		closing[progs[i].id] = true
		mu.Unlock()
		progs[i].closed = time.Now()
		progs[i].prog.Close()
	}
	waitAll(releaseSeen)

	mu.Lock()
	defer mu.Unlock()
	var loads, releases []float64
	for _, p := range progs {
		if t, ok := loadSeen[p.id]; ok {
			loads = append(loads, float64(t.Sub(p.loadStart).Microseconds())/1000)
		}
		if t, ok := releaseSeen[p.id]; ok {
			releases = append(releases, float64(t.Sub(p.closed).Microseconds())/1000)
		}
	}
	progs = nil // closed above
	f.loads, f.releases = len(loads), len(releases)
	f.loadP50, f.loadP99 = percentile(loads, 50), percentile(loads, 99)
	f.releaseP50, f.releaseP99 = percentile(releases, 50), percentile(releases, 99)
	return f
}
