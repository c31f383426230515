package loader

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// ErrStatsAlreadyOn is returned by MeasureStatsCost when run-time stats
// were on before it turned them on, so that it could not time a run
// without the accounting.
var ErrStatsAlreadyOn = errors.New("BPF run-time stats were already on (a BPF_ENABLE_STATS fd is held or kernel.bpf_stats_enabled is set)")

// statsCostProgName names the program MeasureStatsCost loads, in the
// program list of anyone looking meanwhile.
const statsCostProgName = "bpfstats_cost"

// Each timing runs the program statsCostRuns times in one
// BPF_PROG_TEST_RUN; there are statsCostRounds timings without stats, then
// as many with, and the fastest of each kind counts: the machine's other
// load only ever makes a timing slower. (Turning stats on or off patches
// kernel text, tens of milliseconds: once each, not once per round.)
const (
	statsCostRuns   = 200_000
	statsCostRounds = 5
)

// MeasureStatsCost returns what the kernel's run-time stats accounting
// costs per program run on this machine: the per-run time of a trivial
// socket filter run with BPF_PROG_TEST_RUN with stats on, minus the same
// with stats off, floored at 0. It takes about 100 ms, most of it
// turning stats on and off.
//
// Call it while stats are off, before the tracker enables them
// (EnableStats): it turns stats on and off itself, holding its own
// BPF_ENABLE_STATS fd for the timings that need it. If stats were on
// already (this process or another holds such an fd, or the sysctl
// kernel.bpf_stats_enabled is set), both timings would include the
// accounting; it notices (the program's run count grows with stats
// meant to be off) and returns an error wrapping ErrStatsAlreadyOn.
// The program it loads is released before it returns; event sources
// running meanwhile see its load and release like any other's.
//
// Requires Linux 5.8 (BPF_ENABLE_STATS).
func MeasureStatsCost() (time.Duration, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: statsCostProgName,
		Type: ebpf.SocketFilter,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		License: "Dual MIT/GPL",
	})
	if err != nil {
		return 0, fmt.Errorf("measuring stats cost: loading a socket filter: %w", err)
	}
	defer prog.Close()

	off, err := fastestRuns(prog, false)
	if err != nil {
		return 0, fmt.Errorf("measuring stats cost without stats: %w", err)
	}
	stats, err := EnableStats()
	if err != nil {
		return 0, fmt.Errorf("measuring stats cost: %w", err)
	}
	defer stats.Close()
	on, err := fastestRuns(prog, true)
	if err != nil {
		return 0, fmt.Errorf("measuring stats cost with stats: %w", err)
	}
	return max(on-off, 0), nil
}

// fastestRuns returns the fastest per-run time of statsCostRounds
// timings of prog, with stats meant to be on (statsOn) or off.
func fastestRuns(prog *ebpf.Program, statsOn bool) (time.Duration, error) {
	fastest := time.Duration(math.MaxInt64)
	for range statsCostRounds {
		d, err := timeRuns(prog, statsOn)
		if err != nil {
			return 0, err
		}
		fastest = min(fastest, d)
	}
	return fastest, nil
}

// timeRuns returns the per-run time of statsCostRuns runs of prog. With
// statsOn, their run count must grow by at least statsCostRuns (they were
// counted); without, it must not grow (stats were off).
func timeRuns(prog *ebpf.Program, statsOn bool) (time.Duration, error) {
	before, err := prog.Stats()
	if err != nil {
		return 0, fmt.Errorf("reading run count: %w", err)
	}
	// 14 bytes is the Ethernet header the kernel wants at least.
	_, perRun, err := prog.Benchmark(make([]byte, 14), statsCostRuns, nil)
	if err != nil {
		return 0, fmt.Errorf("test run of %s: %w", statsCostProgName, err)
	}
	after, err := prog.Stats()
	if err != nil {
		return 0, fmt.Errorf("reading run count: %w", err)
	}
	counted := after.RunCount - before.RunCount
	switch {
	case !statsOn && counted != 0:
		return 0, ErrStatsAlreadyOn
	case statsOn && counted < statsCostRuns:
		return 0, fmt.Errorf("stats counted %d of %d test runs", counted, statsCostRuns)
	}
	return perRun, nil
}
