// Command bench measures the tracker against the ways its peers read the
// kernel and writes docs/benchmarks.md. Run it through "sudo make bench"
// (test/bench/run.sh); it needs root, loads up to 5000 programs from a
// helper process and cleans them up when it ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		if err := runHelper(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench helper:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == freshLoaderArg {
		if err := runFreshLoader(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench freshness loader:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == holderArg {
		runHolder()
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// config is the harness's command line.
type config struct {
	tracker, bpftool, natsServer string
	out, goBench                 string
	sizes, daemonSizes           []int
	targetN                      int
	reps, cliReps, events        int
	activeEvery, holders         int
	window                       time.Duration
	timeLimit                    time.Duration
	embedded, allowDirty         bool
}

func parseConfig() (*config, error) {
	var c config
	var sizes, daemonSizes string
	flag.StringVar(&c.tracker, "tracker", "bin/tracker", "the built tracker binary")
	flag.StringVar(&c.bpftool, "bpftool", "bpftool", "bpftool binary")
	flag.StringVar(&c.natsServer, "nats-server", "bin/nats-server", "nats-server binary (go build github.com/nats-io/nats-server/v2)")
	flag.StringVar(&c.out, "out", "docs/benchmarks.md", "report to write")
	flag.StringVar(&c.goBench, "go-bench", "", "file with `go test -bench` output to append to the report")
	flag.StringVar(&sizes, "n", "100,1000,5000,20000", "program counts")
	flag.StringVar(&daemonSizes, "daemon-n", "1000,5000,20000", "program counts (of -n) at which tracker run is measured")
	flag.IntVar(&c.targetN, "target-n", 5000, "program count (of -n) at which the targets are judged")
	flag.IntVar(&c.reps, "reps", 15, "repetitions of each in-process measurement")
	flag.IntVar(&c.cliReps, "cli-reps", 10, "repetitions of each command")
	flag.IntVar(&c.events, "events", 1000, "loads (and releases) per freshness run")
	flag.IntVar(&c.activeEvery, "active-every", 10, "during tracker run, every k-th program runs each interval (0: none)")
	flag.IntVar(&c.holders, "holders", 100, "processes the programs are spread over for the second pid/comm measurement")
	flag.DurationVar(&c.window, "window", 30*time.Second, "measuring window of tracker run")
	flag.BoolVar(&c.embedded, "embedded", true, "also measure tracker run with its embedded NATS server, no subscriber and idle programs, at -target-n")
	flag.BoolVar(&c.allowDirty, "allow-dirty", false, "write -out even when the tracker's tree has uncommitted changes (marked NOT FOR PUBLICATION)")
	flag.DurationVar(&c.timeLimit, "time-limit", 13*time.Minute, "give up after this long")
	flag.Parse()
	var err error
	if c.sizes, err = parseSizes(sizes); err != nil {
		return nil, fmt.Errorf("-n: %w", err)
	}
	if c.daemonSizes, err = parseSizes(daemonSizes); err != nil {
		return nil, fmt.Errorf("-daemon-n: %w", err)
	}
	return &c, nil
}

func parseSizes(list string) ([]int, error) {
	var sizes []int
	for s := range strings.SplitSeq(list, ",") {
		if strings.TrimSpace(s) == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad program count %q", s)
		}
		sizes = append(sizes, n)
	}
	return sizes, nil
}

func run() error {
	c, err := parseConfig()
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (loads BPF programs)")
	}
	for _, bin := range []string{c.tracker, c.natsServer} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%w (run make bench, which builds it)", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeLimit)
	defer cancel()
	go func() {
		<-ctx.Done()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			fmt.Fprintf(os.Stderr, "bench: time limit %v reached, stopping\n", c.timeLimit)
			os.Exit(2) // the helpers die with us (PR_SET_PDEATHSIG)
		}
	}()

	r := &report{started: time.Now(), cfg: c}
	r.machine = describeMachine(c.bpftool, c.out)
	if r.perHelper, err = programsPerHelper(); err != nil {
		return err
	}
	for _, n := range c.sizes {
		logf("N=%d: loading programs in a helper process", n)
		start := time.Now()
		h, err := startHelpers(n)
		if err != nil {
			return err
		}
		logf("N=%d: loaded in %v", n, time.Since(start).Round(time.Millisecond))
		res, err := measureSize(c, n, h)
		h.stop()
		if err != nil {
			return fmt.Errorf("with %d programs: %w", n, err)
		}
		r.results = append(r.results, res)
	}
	r.elapsed = time.Since(r.started)
	if c.goBench != "" {
		if data, err := os.ReadFile(c.goBench); err == nil {
			r.goBench = string(data)
		}
	}
	return r.write()
}

// sizeResult is everything measured at one program count.
type sizeResult struct {
	n                int
	sweep            map[string]float64
	sweepCount       map[string]int
	pids, pidsSpread map[string]float64
	pidsCount        map[string]int
	pidsSpreadCount  map[string]int
	helpers          int // processes holding the programs at first
	holders          int // processes of the spread measurement
	fresh            []freshness
	daemons          []daemonUsage
	cli              map[string]cliRun
	// startMs is the median wall time of "tracker version": the process
	// start, package initialisation and exit that every command pays.
	startMs     float64
	phases      []phase
	programsAll int
}

func measureSize(c *config, n int, h helperGroup) (*sizeResult, error) {
	res := &sizeResult{n: n}
	var err error
	logf("N=%d: stats sweep", n)
	if res.sweep, res.sweepCount, err = measureSweeps(c.reps); err != nil {
		return nil, err
	}
	res.programsAll = res.sweepCount[sweepBpftool]
	logf("N=%d: pid/comm resolution, %d holder process(es)", n, len(h))
	res.helpers = len(h)
	if res.pids, res.pidsCount, err = measurePids(c.reps, h.pids()); err != nil {
		return nil, err
	}
	for _, src := range []struct {
		name string
		pace time.Duration
	}{{"perf", time.Millisecond}, {"poll", 2 * time.Millisecond}} {
		logf("N=%d: freshness, %s source, %d loads", n, src.name, c.events)
		res.fresh = append(res.fresh, measureFreshness(src.name, c.events, src.pace))
	}
	if err := measureCommands(c, res); err != nil {
		return nil, err
	}
	measureDaemons(c, res, h)
	return res, measureSpread(c, res, h)
}

// measureCommands compares the one-shot with bpftool and, at the target
// N, times the steps a one-shot may take.
func measureCommands(c *config, res *sizeResult) error {
	logf("N=%d: tracker stats vs bpftool prog show, %d runs each", res.n, c.cliReps)
	cmds := map[string][]string{
		cliTracker: {c.tracker, "stats", "--all", "--count", "1", "-o", "json", "--log-level", "warn"},
	}
	if path, err := exec.LookPath(c.bpftool); err == nil {
		cmds[cliBpftool] = []string{path, "prog", "show", "-j"}
	}
	var err error
	if res.cli, err = commandTimes(c.cliReps, cmds); err != nil {
		return err
	}
	if res.startMs, err = startupTime(c.cliReps, c.tracker, "version"); err != nil {
		return err
	}
	if res.n != c.targetN {
		return nil
	}
	logf("N=%d: one-shot building blocks, step by step", res.n)
	res.phases, err = measureStatsPhases()
	return err
}

// daemonVariant is a setup measured at the target N besides the users':
// flags that are not the default, to show what they change in the same
// run.
type daemonVariant struct {
	name  string
	flags []string
}

// daemonVariants returns the variants measured at the target N.
func daemonVariants() []daemonVariant {
	return []daemonVariant{
		{"compact rows", []string{"--compact-rows"}},
		{"timer slack inherited (50 µs)", []string{"--timer-slack", "0"}},
		{"start-up pages kept", []string{"--release-start-pages=false"}},
	}
}

// measureDaemons runs tracker run as users do (standalone nats-server, a
// subscriber, a share of programs running) and, at the target N, as the
// first benchmarks did (embedded server, no subscriber, idle programs).
func measureDaemons(c *config, res *sizeResult, h helperGroup) {
	setup := daemonSetup{natsServer: c.natsServer, activeEvery: c.activeEvery,
		interval: time.Second, warmup: 3 * time.Second, window: c.window}
	if slices.Contains(c.daemonSizes, res.n) {
		logf("N=%d: tracker run, standalone nats-server, subscriber, every %dth program running, %v", res.n, c.activeEvery, c.window)
		res.daemons = append(res.daemons, measureDaemon(c.tracker, res.n, h, setup))
		if res.n == c.targetN {
			for _, v := range daemonVariants() {
				variant := setup
				variant.variant, variant.flags = v.name, v.flags
				logf("N=%d: the same with %s", res.n, strings.Join(v.flags, " "))
				res.daemons = append(res.daemons, measureDaemon(c.tracker, res.n, h, variant))
			}
		}
	}
	if c.embedded && res.n == c.targetN {
		setup.natsServer, setup.activeEvery = "", 0
		setup.warmup = 5 * time.Second
		logf("N=%d: tracker run, embedded NATS, no subscriber, idle programs, %v", res.n, c.window)
		res.daemons = append(res.daemons, measureDaemon(c.tracker, res.n, h, setup))
	}
}

// measureSpread hands the programs to many holder processes and measures
// the pid/comm resolution again. The helper's own fds are closed after it.
func measureSpread(c *config, res *sizeResult, h helperGroup) error {
	k := min(c.holders, res.n) / len(h) // holders per helper
	if k*len(h) <= len(h) {
		return nil
	}
	logf("N=%d: pid/comm resolution, programs spread over %d processes", res.n, k*len(h))
	words, err := h.do(fmt.Sprintf("spread %d", k), "spread")
	if err != nil {
		return err
	}
	pids := make([]int, 0, len(words))
	for _, w := range words {
		pid, err := strconv.Atoi(w)
		if err != nil {
			return fmt.Errorf("helper's holder pid %q", w)
		}
		pids = append(pids, pid)
	}
	res.holders = len(pids)
	res.pidsSpread, res.pidsSpreadCount, err = measurePids(c.reps, pids)
	return err
}

// Command names of the whole-process comparison.
const (
	cliTracker = "tracker stats --all --count 1 -o json"
	cliBpftool = "bpftool prog show -j"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format(time.TimeOnly), fmt.Sprintf(format, args...))
}
