package main

import (
	"fmt"
	"slices"
	"strings"
)

// Targets of issue 12, judged at config.targetN.
const (
	targetCPU         = 0.5  // tracker run, % of a core, 1 s interval
	targetRSSMiB      = 32.0 // tracker run, peak
	targetLoadP99Ms   = 2.0  // load → inventory, perf source
	targetCLIRatio    = 0.5  // tracker stats wall / bpftool wall, at targetN
	targetCLIRatioAll = 1.0  // the same, at every N
	targetIterVsFloor = 1.2  // one program read by the iterator / the empty-iterator floor
	targetSweepFullUs = 1.0  // whole state.Sweep, µs per program
)

// verdict says "met", or by how much value misses an upper bound.
func verdict(value, bound float64) string {
	if value <= bound {
		return "met"
	}
	return fmt.Sprintf("**missed** by %.0f %% (%.2f× the target)", (value/bound-1)*100, value/bound)
}

// targets prints the targets, met or missed, and for each miss
// the measurements that bear on it.
func (r *report) targets(b *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	n := r.cfg.targetN
	s := r.result(n)
	p("## Targets (issue 12) at N=%d\n\n", n)
	if s == nil {
		p("N=%d was not measured (-n); no target is judged.\n\n", n)
		return
	}
	p("| target | measured | verdict |\n|---|---|---|\n")
	var why []string
	if d := userDaemon(s); d != nil && d.err == nil {
		failed := ""
		if d.publishErrs > 0 {
			failed = fmt.Sprintf(" (with %d failed publishes, see below)", d.publishErrs)
		}
		p("| `tracker run` CPU ≤ %.1f %% of a core (1 s interval) | %.2f %%%s | %s |\n", targetCPU, d.cpuPercent, failed, verdict(d.cpuPercent, targetCPU))
		p("| `tracker run` peak RSS ≤ %.0f MiB | %.1f MiB | %s |\n", targetRSSMiB, d.maxRSSMiB, verdict(d.maxRSSMiB, targetRSSMiB))
		if d.cpuPercent > targetCPU {
			full := s.sweep[sweepTrackerFull] * float64(s.sweepCount[sweepTrackerFull]) / 1000
			floor := s.sweep[sweepIterFloor] * float64(s.sweepCount[sweepIterFloor]) / 1000
			why = append(why, fmt.Sprintf("CPU: one whole sweep at this N takes %.1f ms in the harness (section 1) = %.2f %% "+
				"of a core at one sweep per second, of which the kernel visiting every program for an empty iterator "+
				"(the floor of any read of every program's stats) takes %.1f ms = %.2f %%; the daemon also published %s "+
				"per interval (section 4).",
				full, full/10, floor, floor/10, bytesText(d.bytes)))
			if v := variantsText(s, d); v != "" {
				why = append(why, "CPU in the same run (section 4): "+v+".")
			}
		}
		if d.maxRSSMiB > targetRSSMiB {
			why = append(why, fmt.Sprintf("RSS: at the end of the run %.1f MiB, of which %.1f MiB file-backed (the pages of the "+
				"tracker binary it touched since its first interval) and %.1f MiB its heap and stacks (section 4).",
				d.rssMiB, d.rssFileMiB, d.rssMiB-d.rssFileMiB))
		}
		if d.publishErrs > 0 {
			why = append(why, fmt.Sprintf("Publishing failed: the tracker logged %d failed publishes to the standalone "+
				"nats-server in this run (section 4, e.g. `nats: maximum payload exceeded`: a gadget's message over the "+
				"server's default 1 MiB max_payload), so its CPU and bytes leave out what it could not send.", d.publishErrs))
		}
	} else {
		p("| `tracker run` CPU and peak RSS | not measured at N=%d (-daemon-n) | **missed**: not measured |\n", n)
	}
	if f := perfFreshness(s); f != nil {
		p("| load → inventory p99 ≤ %.0f ms (perf) | %.2f ms (p50 %.2f; %.2f to OnEvent) | %s |\n", targetLoadP99Ms, f.loadP99, f.loadP50, f.loadOutP99, verdict(f.loadP99, targetLoadP99Ms))
		if f.loadP99 > targetLoadP99Ms {
			why = append(why, fmt.Sprintf("Freshness: for scale, one whole sweep at this N takes %.1f ms (section 1); "+
				"during the same run a harness goroutine sleeping 1 ms at a time woke up to %.2f ms late (p99, section 3), "+
				"a delay each goroutine hop of the event path can meet too.",
				s.sweep[sweepTrackerFull]*float64(s.sweepCount[sweepTrackerFull])/1000, f.wakeP99))
		}
	} else {
		p("| load → inventory p99 ≤ %.0f ms (perf) | not measured | **missed**: not measured |\n", targetLoadP99Ms)
	}
	why = append(why, r.cliTargets(b, s)...)
	iter, floor := s.sweep[sweepTrackerIter], s.sweep[sweepIterFloor]
	p("| one program read (iterator) ≤ %.1f× the empty-iterator floor | %.3f vs %.3f µs (%.2f×) | %s |\n",
		targetIterVsFloor, iter, floor, iter/floor, verdict(iter/floor, targetIterVsFloor))
	full := s.sweep[sweepTrackerFull]
	p("| whole `state.Sweep` ≤ %.0f µs per program | %.3f µs | %s |\n", targetSweepFullUs, full, verdict(full, targetSweepFullUs))
	if full > targetSweepFullUs {
		why = append(why, fmt.Sprintf("Sweep: of its %.3f µs per program, reading the stats (iterator) takes %.3f µs and "+
			"resolving the holders and their comms %.3f µs when measured alone (sections 1 and 2).",
			full, iter, s.pids[pidsTrackerIter]))
	}
	p("\nFor comparison at N=%d: the tracker's stats read is %.1f× faster than bpftool's way and %.1f× than\n",
		n, s.sweep[sweepBpftool]/iter, s.sweep[sweepCiliumIG]/iter)
	p("Inspektor Gadget's; its pid/comm resolution %.0f× faster than a /proc walk.\n\n", s.pids[pidsProcWalk]/s.pids[pidsTrackerIter])
	if len(why) > 0 {
		p("What the other measurements say about the misses:\n\n")
		for _, w := range why {
			p("- %s\n", w)
		}
		p("\n")
	}
}

// cliTargets prints the two one-shot rows and returns notes on misses.
func (r *report) cliTargets(b *strings.Builder, s *sizeResult) []string {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	var why []string
	tc, tok := s.cli[cliTracker]
	bc, bok := s.cli[cliBpftool]
	if tok && bok {
		ratio := tc.wallMs / bc.wallMs
		p("| `%s` wall ≤ %.1f× `%s` | %.1f vs %.1f ms (%.2f×) | %s |\n", cliTracker, targetCLIRatio, cliBpftool,
			tc.wallMs, bc.wallMs, ratio, verdict(ratio, targetCLIRatio))
		if ratio > targetCLIRatio && len(s.phases) > 0 {
			ph := slices.Clone(s.phases)
			slices.SortFunc(ph, func(a, b phase) int { return int(b.ms*1000 - a.ms*1000) })
			var top []string
			for _, x := range ph[:min(3, len(ph))] {
				top = append(top, fmt.Sprintf("%s %.0f ms", x.name, x.ms))
			}
			why = append(why, fmt.Sprintf("One-shot: bpftool takes %.1f ms; the costliest building blocks timed in section 5 are: %s.",
				bc.wallMs, strings.Join(top, "; ")))
		}
	} else {
		p("| `%s` wall ≤ %.1f× `%s` | not measured | **missed**: not measured |\n", cliTracker, targetCLIRatio, cliBpftool)
	}
	worst, worstN, all := 0.0, 0, true
	for _, x := range r.results {
		t, tok := x.cli[cliTracker]
		c, cok := x.cli[cliBpftool]
		if !tok || !cok {
			all = false
			continue
		}
		if ratio := t.wallMs / c.wallMs; ratio > worst {
			worst, worstN = ratio, x.n
		}
	}
	if all && worstN > 0 {
		p("| the same ≤ %.0f× at every N | worst %.2f× at N=%d | %s |\n", targetCLIRatioAll, worst, worstN, verdict(worst, targetCLIRatioAll))
		if w := r.result(worstN); worst > targetCLIRatioAll && w.startMs > 0 {
			why = append(why, fmt.Sprintf("One-shot at N=%d: `tracker version`, the same binary doing no work, takes %.1f ms "+
				"(process start and Go package initialisation), against %.1f ms for bpftool's whole answer (section 5).",
				worstN, w.startMs, w.cli[cliBpftool].wallMs))
		}
	} else {
		p("| the same ≤ %.0f× at every N | not measured at every N | **missed**: not measured |\n", targetCLIRatioAll)
	}
	return why
}

// variantsText compares the CPU and thread switches of the variants
// measured at s.n with the users' setup d.
func variantsText(s *sizeResult, d *daemonUsage) string {
	parts := []string{fmt.Sprintf("as users run it %.2f %% with %.0f thread switches a second", d.cpuPercent, d.switches)}
	for _, v := range s.daemons {
		if v.setup.variant != "" && v.setup.natsServer != "" && v.err == nil {
			parts = append(parts, fmt.Sprintf("with `%s` %.2f %% and %.0f", strings.Join(v.setup.flags, " "), v.cpuPercent, v.switches))
		}
	}
	if len(parts) == 1 {
		return ""
	}
	return strings.Join(parts, "; ")
}

// userDaemon returns the tracker run measured as users run it at s.n.
func userDaemon(s *sizeResult) *daemonUsage {
	for i := range s.daemons {
		if s.daemons[i].setup.natsServer != "" && s.daemons[i].setup.variant == "" {
			return &s.daemons[i]
		}
	}
	return nil
}

func perfFreshness(s *sizeResult) *freshness {
	for i := range s.fresh {
		if s.fresh[i].source == "perf" && s.fresh[i].err == nil {
			return &s.fresh[i]
		}
	}
	return nil
}
