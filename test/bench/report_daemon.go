package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// userDaemons returns the tracker run measurements made as users run it
// (standalone server, subscriber), by N.
func (r *report) userDaemons() []daemonUsage {
	var ds []daemonUsage
	for _, s := range r.results {
		for _, d := range s.daemons {
			if d.setup.natsServer != "" && d.setup.variant == "" {
				ds = append(ds, d)
			}
		}
	}
	return ds
}

func (r *report) daemonSection(b *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## 4. The daemon's own cost\n\n")
	p("`tracker run --metrics-addr \"\" --interval 1s --nats-url nats://127.0.0.1:<port>` against a standalone\n")
	p("`nats-server -a 127.0.0.1 -p <port>` (its default settings; built from the version go.mod pins) with a\n")
	p("live subscriber on `bpfstats.>` in the harness, while the helper runs every %dth program ten times\n", r.cfg.activeEvery)
	p("(BPF_PROG_TEST_RUN) each second, so their stats change every interval. Measured over %v after the\n", r.cfg.window)
	p("first message and a warm-up, from /proc/<pid>/stat and status; bytes are subjects plus payloads\n")
	p("the subscriber received. The `embedded` row is the earlier setup: embedded NATS server, no\n")
	p("subscriber, idle programs. The `compact rows` row is the first setup with `--compact-rows` (full\n")
	p("program rows only when they change or every 30 intervals: see docs/nats.md), which needs\n")
	p("consumers that know the `rows` field, and so is not the default. The `timer slack inherited` row is\n")
	p("the first setup with `--timer-slack 0`: the kernel's default slack of 50 µs instead of the tracker's\n")
	p("1 ms (see internal/timerslack), under which the Go runtime's monitor thread wakes far more often;\n")
	p("`switches / s` counts how often all the tracker's threads went off a CPU (voluntary and not).\n")
	p("`of which file`: the part of\n")
	p("the RSS at the end that is file-backed (RssFile: the pages of the tracker binary that it touched;\n")
	p("it is static, with no libc), the rest being its heap and stacks. `tracker run` unmaps the pages it\n")
	p("touched after loading and again after its first interval (`--release-start-pages`); the\n")
	p("`start-up pages kept` row is the first setup without that.\n\n")
	p("| N | setup | CPU, %% of a core | switches / s | start-up CPU | peak RSS (VmHWM) | RSS at end | of which file | msgs / interval | bytes / interval | nats-server CPU | log lines | of which failed publishes |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.results {
		for _, d := range s.daemons {
			setup := d.setupName()
			if d.err != nil {
				p("| %d | %s | error: %v | | | | | | | | | | |\n", d.n, setup, d.err)
				continue
			}
			p("| %d | %s | %.2f %% | %.0f | %.2f s | %.1f MiB | %.1f MiB | %.1f MiB | %.0f | %s | %.2f %% | %d | %d |\n", d.n, setup,
				d.cpuPercent, d.switches, d.startupCPU, d.maxRSSMiB, d.rssMiB, d.rssFileMiB, d.msgs, bytesText(d.bytes), d.natsCPUPercent,
				d.logLines, d.publishErrs)
		}
	}
	p("\n")
	p("What the tracker logged at warn or above, per run (its first distinct lines):\n\n")
	for _, s := range r.results {
		for _, d := range s.daemons {
			if d.err != nil {
				continue
			}
			p("- N=%d, %s: %d lines\n", d.n, d.setupName(), d.logLines)
			for line := range strings.Lines(d.firstLog) {
				p("  - `%s`\n", strings.ReplaceAll(strings.TrimSpace(line), "`", "'"))
			}
		}
	}
	p("\n")
	r.growth(b)
}

// growth prints how CPU, RSS and bytes grow with N: a least-squares line
// through the standalone measurements.
func (r *report) growth(b *strings.Builder) {
	ds := slices.DeleteFunc(r.userDaemons(), func(d daemonUsage) bool { return d.err != nil })
	if len(ds) < 2 {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	first, last := ds[0], ds[len(ds)-1]
	p("Growth from N=%d to N=%d: a least-squares line value = a + slope × N through the rows above, and\n", first.n, last.n)
	p("the ratio of the last value to the first (N grew %.0f×).", float64(last.n)/float64(first.n))
	var failed []string
	for _, d := range ds {
		if d.publishErrs > 0 {
			failed = append(failed, strconv.Itoa(d.n))
		}
	}
	if len(failed) > 0 {
		p(" Publishes failed at N=%s: there the bytes (and the CPU of sending them) are\n", strings.Join(failed, ", "))
		p("short of what the tracker tried to publish, and the fit understates the growth.")
	}
	p("\n\n")
	p("| figure | slope per program | per 1000 programs | a (N=0) | N=%d / N=%d |\n|---|---|---|---|---|\n", last.n, first.n)
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d.n)
	}
	rows := []struct {
		name  string
		get   func(daemonUsage) float64
		slope func(float64) string
		unit  string
	}{
		{"CPU, % of a core", func(d daemonUsage) float64 { return d.cpuPercent },
			func(s float64) string { return fmt.Sprintf("%.2f µs CPU per interval", s/100*1e6) }, "%"},
		{"peak RSS, MiB", func(d daemonUsage) float64 { return d.maxRSSMiB },
			func(s float64) string { return fmt.Sprintf("%.2f KiB", s*1024) }, "MiB"},
		{"bytes published per interval", func(d daemonUsage) float64 { return d.bytes },
			func(s float64) string { return fmt.Sprintf("%.0f bytes", s) }, "B"},
	}
	for _, row := range rows {
		ys := make([]float64, len(ds))
		for i, d := range ds {
			ys[i] = row.get(d)
		}
		a, slope := linearFit(xs, ys)
		p("| %s | %s | %s %s | %s %s | %.1f× |\n", row.name, row.slope(slope), strconv.FormatFloat(slope*1000, 'f', 2, 64),
			row.unit, strconv.FormatFloat(a, 'f', 2, 64), row.unit, ys[len(ys)-1]/ys[0])
	}
	p("\n")
}

// bytesText formats a byte count with a binary unit.
func bytesText(v float64) string {
	switch {
	case v >= 1<<20:
		return fmt.Sprintf("%.2f MiB", v/(1<<20))
	case v >= 1<<10:
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	}
	return fmt.Sprintf("%.0f B", v)
}

func (d daemonUsage) setupName() string {
	if d.setup.natsServer == "" {
		return "embedded, idle"
	}
	if d.setup.variant != "" {
		return "standalone, subscriber, active, " + d.setup.variant
	}
	return "standalone, subscriber, active"
}
