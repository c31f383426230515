package state

import "time"

// Cost are the columns of a row derived from its Totals that explain what
// it costs. They are computed from the row's own totals, never summed: a
// gadget's are its cumulative and delta columns', not the sum of its
// programs'. Interval columns are zero on a row's first snapshot.
type Cost struct {
	// NsPerRun is Runtime over Runcount: the average run time of one run
	// in nanoseconds since the program loaded (since the gadget started);
	// 0 without runs.
	NsPerRun float64 `json:"nsPerRun"`
	// NsPerRunDelta is RuntimeDelta over RuncountDelta: the average run
	// time of one run over the interval; 0 without runs in it.
	NsPerRunDelta float64 `json:"nsPerRunDelta"`
	// RunsPerSecond is RuncountDelta over the real time between the two
	// reads (snapshots for a gadget) the delta spans.
	RunsPerSecond float64 `json:"runsPerSecond"`
	// CPUPercentNorm is CPUPercent divided by the number of online CPUs:
	// in percent of the whole machine, where CPUPercent is in percent of
	// one CPU (bpftop's CPU%).
	CPUPercentNorm float64 `json:"cpuPercentNorm"`
	// StatsCostPercent estimates what the kernel's stats accounting itself
	// cost over the interval, in percent of one CPU: RuncountDelta times
	// the per-run cost measured at start (Options.StatsCost) over the
	// interval. It is mostly not in CPUPercent (the kernel reads the clock
	// and updates the counters around the part it times) and goes away
	// with stats off. 0 when the cost is unknown.
	StatsCostPercent float64 `json:"statsCostPercent"`
}

// fillCost sets row's cost columns from its numbers over interval, the
// time between the two reads its deltas compare.
func (t *Tracker) fillCost(row *Row, interval time.Duration) {
	row.Cost = CostOf(row, interval, t.opts.CPUs, t.opts.StatsCost)
}

// CostOf derives a row's cost columns from its totals and deltas over
// interval, on a machine of cpus online CPUs (0: unknown, CPUPercentNorm
// stays 0) whose stats accounting costs statsCost per run (0: unknown).
// Consumers of messages (the fleet view) use it as the tracker does.
func CostOf(row *Row, interval time.Duration, cpus int, statsCost time.Duration) Cost {
	var c Cost
	if cpus > 0 {
		c.CPUPercentNorm = row.CPUPercent / float64(cpus)
	}
	if row.Runcount > 0 {
		c.NsPerRun = float64(row.Runtime) / float64(row.Runcount)
	}
	if row.RuncountDelta > 0 {
		c.NsPerRunDelta = float64(row.RuntimeDelta) / float64(row.RuncountDelta)
	}
	if interval > 0 {
		runs := float64(row.RuncountDelta)
		c.RunsPerSecond = runs / interval.Seconds()
		c.StatsCostPercent = runs * float64(statsCost) / float64(interval) * 100
	}
	return c
}
