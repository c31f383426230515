package state

import (
	"encoding/json"
	"math"
	"runtime"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

func near(got, want float64) bool { return math.Abs(got-want) <= 1e-9*math.Max(1, math.Abs(want)) }

func checkCost(t *testing.T, what string, got, want Cost) {
	t.Helper()
	if !near(got.NsPerRun, want.NsPerRun) || !near(got.NsPerRunDelta, want.NsPerRunDelta) ||
		!near(got.RunsPerSecond, want.RunsPerSecond) || !near(got.CPUPercentNorm, want.CPUPercentNorm) ||
		!near(got.StatsCostPercent, want.StatsCostPercent) {
		t.Fatalf("%s cost:\n got %+v\nwant %+v", what, got, want)
	}
}

func TestProgramCost(t *testing.T) {
	k := newFakeKernel()
	k.progs[7] = loader.ProgramInfo{ID: 7, Tag: tag(7), LoadTime: 1, RunTime: 5000, RunCount: 10}
	c := newClock()
	tr := New(k, Options{Node: "n1", now: c.now, CPUs: 4, StatsCost: 20 * time.Nanosecond})
	tr.apply(load(7, 0))

	// First read: the overall average only, nothing over an interval.
	r := programRow(t, sweep(t, tr), 7)
	checkCost(t, "first read", r.Cost, Cost{NsPerRun: 500})

	// 2 s later: 100 ms more over 20000 more runs, 5% of one CPU.
	c.advance(2 * time.Second)
	k.progs[7] = loader.ProgramInfo{ID: 7, Tag: tag(7), LoadTime: 1, RunTime: 5000 + 100_000_000, RunCount: 20_010}
	r = programRow(t, sweep(t, tr), 7)
	checkCost(t, "second read", r.Cost, Cost{
		NsPerRun:       (5000 + 100_000_000) / 20_010.0,
		NsPerRunDelta:  5000,
		RunsPerSecond:  10_000,
		CPUPercentNorm: 5.0 / 4,
		// 20000 runs x 20 ns = 400 µs over 2 s.
		StatsCostPercent: 0.02,
	})

	// No run in the interval: no average, no division by zero.
	c.advance(time.Second)
	r = programRow(t, sweep(t, tr), 7)
	checkCost(t, "idle interval", r.Cost, Cost{NsPerRun: (5000 + 100_000_000) / 20_010.0})
}

func TestProgramCostWithoutRuns(t *testing.T) {
	k := newFakeKernel()
	k.progs[1] = loader.ProgramInfo{ID: 1, Tag: tag(1), LoadTime: 1}
	tr, c := newTracker(t, k)
	tr.apply(load(1, 0))
	sweep(t, tr)
	c.advance(time.Second)
	r := programRow(t, sweep(t, tr), 1)
	checkCost(t, "never ran", r.Cost, Cost{})
	if tr.opts.CPUs != runtime.NumCPU() {
		t.Fatalf("default CPUs = %d, want runtime.NumCPU() = %d", tr.opts.CPUs, runtime.NumCPU())
	}
}

// TestGadgetCost checks that a gadget's cost comes from its own totals
// over its own snapshot interval, not from sums of its programs' columns.
func TestGadgetCost(t *testing.T) {
	k := newFakeKernel()
	k.procs[100] = loader.Process{PID: 100, StartTime: 5, Comm: "g", Exe: "/bin/g"}
	k.progs[1] = loader.ProgramInfo{ID: 1, Tag: tag(1), LoadTime: 1, RunTime: 1000, RunCount: 10}
	k.progs[2] = loader.ProgramInfo{ID: 2, Tag: tag(2), LoadTime: 1, RunTime: 9000, RunCount: 990}
	k.holders[1] = []uint32{100}
	k.holders[2] = []uint32{100}
	c := newClock()
	tr := New(k, Options{Node: "n1", now: c.now, CPUs: 2, StatsCost: 10 * time.Nanosecond})
	tr.apply(load(1, 100))
	tr.apply(load(2, 100))
	snap := sweep(t, tr)
	if len(snap.Gadgets) != 1 {
		t.Fatalf("gadgets: %+v", snap.Gadgets)
	}
	// 10000 ns over 1000 runs, where the programs average 100 and 9.09.
	checkCost(t, "gadget first snapshot", snap.Gadgets[0].Cost, Cost{NsPerRun: 10})

	c.advance(4 * time.Second)
	k.progs[1] = loader.ProgramInfo{ID: 1, Tag: tag(1), LoadTime: 1, RunTime: 1000 + 40_000_000, RunCount: 10 + 1000}
	k.progs[2] = loader.ProgramInfo{ID: 2, Tag: tag(2), LoadTime: 1, RunTime: 9000 + 80_000_000, RunCount: 990 + 7000}
	snap = sweep(t, tr)
	g := snap.Gadgets[0]
	// 120 ms over 4 s is 3% of one CPU, 1.5% of two.
	checkCost(t, "gadget", g.Cost, Cost{
		NsPerRun:       (10_000 + 120_000_000) / 9000.0,
		NsPerRunDelta:  120_000_000 / 8000.0,
		RunsPerSecond:  2000,
		CPUPercentNorm: 1.5,
		// 8000 runs x 10 ns = 80 µs over 4 s.
		StatsCostPercent: 0.002,
	})
	checkCost(t, "program 1", programRow(t, snap, 1).Cost, Cost{
		NsPerRun:         (1000 + 40_000_000) / 1010.0,
		NsPerRunDelta:    40_000,
		RunsPerSecond:    250,
		CPUPercentNorm:   0.5,
		StatsCostPercent: 0.00025,
	})
	if snap.Unowned.Cost != (Cost{}) {
		t.Fatalf("empty unowned row has a cost: %+v", snap.Unowned.Cost)
	}
}

func TestCostJSON(t *testing.T) {
	b, err := json.Marshal(Row{Cost: Cost{NsPerRun: 1, NsPerRunDelta: 2, RunsPerSecond: 3, CPUPercentNorm: 4, StatsCostPercent: 5}})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]float64{"nsPerRun": 1, "nsPerRunDelta": 2, "runsPerSecond": 3, "cpuPercentNorm": 4, "statsCostPercent": 5} {
		if m[key] != want {
			t.Errorf("JSON %s = %v, want %v (in %s)", key, m[key], want, b)
		}
	}
}
