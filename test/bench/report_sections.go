package main

import (
	"fmt"
	"strings"
)

func (r *report) sweepSection(b *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## 1. Stats sweep, µs per program\n\n")
	p("One read of every program's run time, run count, recursion misses and map IDs. The tracker\n")
	p("reads the IDs of its inventory (kept by events); the peers walk IDs. Ratio: method / tracker.\n\n")
	r.methodTable(b, []string{sweepTrackerIter, sweepIterFloor, sweepTrackerSyscall, sweepCiliumIG, sweepBpftool, sweepTrackerFull},
		func(s *sizeResult) (map[string]float64, map[string]int) { return s.sweep, s.sweepCount }, sweepTrackerIter)
	p("\nThe floor row is the kernel visiting every program for an iterator, with a program that does\n")
	p("nothing: no iterator-based sweep can be cheaper. The Inspektor Gadget row does what its bpfstats\n")
	p("operator does: `NewProgramFromID` and `Info()`, whose first BPF_OBJ_GET_INFO_BY_FD returns the run\n")
	p("time, run count and map IDs (no `Stats()` call). The last row is the tracker's whole sweep\n")
	p("(state.Tracker.Sweep in this process, iterators on): stats, map info, owners and rows; it is what\n")
	p("`tracker run` pays per interval before publishing.\n\n")
}

func (r *report) pidsSection(b *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## 2. pid/comm resolution, µs per program\n\n")
	p("Which processes hold each program, and their comm. Per program held; ratio: method / tracker.\n")
	p("First with the programs held by as few helper processes as the fd limit allows (one up to\n")
	p("several thousand programs: the hard RLIMIT_NOFILE here cannot be raised):\n\n")
	r.methodTable(b, []string{pidsTrackerIter, pidsTrackerProc, pidsProcWalk},
		func(s *sizeResult) (map[string]float64, map[string]int) { return s.pids, s.pidsCount }, pidsTrackerIter)
	p("| holder processes |")
	for _, s := range r.results {
		p(" %d | |", s.helpers)
	}
	p("\n")
	holders := 0
	for _, s := range r.results {
		holders = max(holders, s.holders)
	}
	if holders == 0 {
		p("\n")
		return
	}
	p("\nThen with the programs and their maps handed to %d holder processes (at most one per program),\n", holders)
	p("an equal share each, as on a node where many agents load programs:\n\n")
	r.methodTable(b, []string{pidsTrackerIter, pidsTrackerProc, pidsProcWalk},
		func(s *sizeResult) (map[string]float64, map[string]int) { return s.pidsSpread, s.pidsSpreadCount }, pidsTrackerIter)
	p("| holder processes |")
	for _, s := range r.results {
		p(" %d | |", s.holders)
	}
	p("\n\n")
}

func (r *report) freshSection(b *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## 3. Event freshness, ms\n\n")
	p("A tracker (state.Tracker.Run, 1 s sweeps) in the harness process; %d programs loaded one at a\n", r.cfg.events)
	p("time by another process, as on a node (every 1 ms for perf, 2 ms for poll), then released one at\n")
	p("a time. Times of both processes are CLOCK_MONOTONIC. Load: from the start of\n")
	p("the BPF_PROG_LOAD call to the moment the tracker applied the load event to its inventory (the\n")
	p("event's `time`) or built the first snapshot that lists the program, whichever comes first (the\n")
	p("call itself takes the `load call` median); release: from close() of the last fd to the same for\n")
	p("the release (a sweep's audit finds loads and releases before their event; the poll source has no\n")
	p("events at all). The `at OnEvent` columns measure to the tracker's consumer instead (OnEvent or\n")
	p("OnSnapshot running, which is what a NATS subscriber waits for too): one goroutine hop later.\n")
	p("The fentry source cannot load on this host (trampolines fail with EPERM under lockdown): it is\n")
	p("measured only in a VM (`make vmtest`). `wake p99`: during the same run, how late a goroutine of\n")
	p("the harness that sleeps 1 ms at a time woke up (p99): the scheduling delay that each goroutine\n")
	p("hop of the event path (perf reader, loop, OnEvent) can meet as well. The harness keeps the kernel's\n")
	p("default timer slack (50 µs), not `tracker run`'s 1 ms (`--timer-slack`), so that `wake p99` stays a\n")
	p("measure of scheduling delay; paired runs with the daemon's slack: docs/systemd.md#timer-slack.\n\n")
	p("| N | source | load p50 | load p99 | release p50 | release p99 | load p99 at OnEvent | release p99 at OnEvent | seen | load call | wake p99 |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.results {
		for _, f := range s.fresh {
			if f.err != nil {
				p("| %d | %s | error: %v | | | | | | | | |\n", s.n, f.source, f.err)
				continue
			}
			p("| %d | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %d+%d of %d+%d | %.2f | %.2f |\n", s.n, f.source,
				f.loadP50, f.loadP99, f.releaseP50, f.releaseP99, f.loadOutP99, f.releaseOutP99, f.loads, f.releases, f.want, f.want,
				f.loadCall, f.wakeP99)
		}
	}
	p("| all | fentry | VM only | | | | | | | | |\n\n")
}

func (r *report) commandSection(b *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## 5. Whole process, ms\n\n")
	p("Each command run %d times at each N (interleaved, after one warm-up run); wall and CPU (user+sys)\n", r.cfg.cliReps)
	p("medians. Ratio: tracker wall / bpftool wall. `tracker version`: the same binary doing no work\n")
	p("(process start, Go runtime and package initialisation, exit), which every command pays.\n\n")
	p("| N | `%s` wall | CPU | rows | `%s` wall | CPU | rows | ratio | `tracker version` wall |\n|---|---|---|---|---|---|---|---|---|\n",
		cliTracker, cliBpftool)
	for _, s := range r.results {
		t, tok := s.cli[cliTracker]
		c, cok := s.cli[cliBpftool]
		switch {
		case tok && cok:
			p("| %d | %.1f | %.1f | %d | %.1f | %.1f | %d | %.2f× | %.1f |\n", s.n, t.wallMs, t.cpuMs, t.rows, c.wallMs, c.cpuMs, c.rows,
				t.wallMs/c.wallMs, s.startMs)
		case tok:
			p("| %d | %.1f | %.1f | %d | not run | | | | %.1f |\n", s.n, t.wallMs, t.cpuMs, t.rows, s.startMs)
		}
	}
	s := r.result(r.cfg.targetN)
	if s == nil || len(s.phases) == 0 {
		p("\n")
		return
	}
	p("\nThe building blocks a one-shot may use, timed one by one in the harness process at N=%d (warm\n", s.n)
	p("caches; what `tracker stats` actually calls depends on its version):\n\n")
	p("| step | ms |\n|---|---|\n")
	total := 0.0
	for _, ph := range s.phases {
		p("| %s | %.1f |\n", ph.name, ph.ms)
		total += ph.ms
	}
	p("| total | %.1f |\n\n", total)
}

func (r *report) goBenchSection(b *strings.Builder) {
	if r.goBench == "" {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## 6. Go benchmarks\n\n")
	if rows, sizes := allocsTable(r.goBench); len(rows) > 0 {
		p("Allocations per program of one whole `state.Tracker.Sweep` (BenchmarkSweepAllocs, fake kernel:\n")
		p("the tracker's own work only; `changed` is the share of programs whose stats moved since the\n")
		p("previous sweep). Flat across N means the allocations per sweep are bounded per program.\n\n")
		p("| sweep |")
		for _, n := range sizes {
			p(" N=%d |", n)
		}
		p("\n|---|%s\n", strings.Repeat("---|", len(sizes)))
		for _, row := range rows {
			p("| %s |", row.name)
			for _, n := range sizes {
				if v, ok := row.perN[n]; ok {
					p(" %.2f |", v)
				} else {
					p(" |")
				}
			}
			p("\n")
		}
		p("\n")
	}
	p("`go test -run '^$' -bench . ./internal/state` and `BENCH_PROGRAMS=1000 go test -run '^$' -bench 'ReadPrograms|HoldersMany' ./internal/loader`,\n")
	p("in the same run (internal/state's Sweep benchmarks use a fake kernel unless named Kernel):\n\n")
	p("```\n%s```\n", r.goBench)
}
