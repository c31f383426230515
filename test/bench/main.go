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
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// config is the harness's command line.
type config struct {
	tracker   string
	bpftool   string
	out       string
	goBench   string
	sizes     []int
	reps      int
	cliReps   int
	events    int
	window    time.Duration
	timeLimit time.Duration
}

func run() error {
	var c config
	var sizes string
	flag.StringVar(&c.tracker, "tracker", "bin/tracker", "the built tracker binary")
	flag.StringVar(&c.bpftool, "bpftool", "bpftool", "bpftool binary")
	flag.StringVar(&c.out, "out", "docs/benchmarks.md", "report to write")
	flag.StringVar(&c.goBench, "go-bench", "", "file with `go test -bench` output to append to the report")
	flag.StringVar(&sizes, "n", "100,1000,5000", "program counts")
	flag.IntVar(&c.reps, "reps", 15, "repetitions of each in-process measurement")
	flag.IntVar(&c.cliReps, "cli-reps", 10, "repetitions of each command")
	flag.IntVar(&c.events, "events", 1000, "loads (and releases) per freshness run")
	flag.DurationVar(&c.window, "window", 30*time.Second, "measuring window of tracker run")
	flag.DurationVar(&c.timeLimit, "time-limit", 12*time.Minute, "give up after this long")
	flag.Parse()
	for s := range strings.SplitSeq(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("bad -n %q", sizes)
		}
		c.sizes = append(c.sizes, n)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (loads BPF programs)")
	}
	if _, err := os.Stat(c.tracker); err != nil {
		return fmt.Errorf("tracker binary: %w (run make build)", err)
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

	r := &report{started: time.Now(), sizes: c.sizes, events: c.events}
	r.machine = describeMachine(c.bpftool)
	for _, n := range c.sizes {
		logf("N=%d: loading programs in a helper process", n)
		h, err := startHelper(n)
		if err != nil {
			return err
		}
		res, err := measureSize(&c, n, h)
		h.stop()
		if err != nil {
			return fmt.Errorf("with %d programs: %w", n, err)
		}
		r.results = append(r.results, res)
	}
	r.elapsed = time.Since(r.started)
	if c.goBench != "" {
		data, err := os.ReadFile(c.goBench)
		if err == nil {
			r.goBench = string(data)
		}
	}
	if err := os.WriteFile(c.out, []byte(r.markdown()), 0o644); err != nil {
		return err
	}
	logf("wrote %s in %v", c.out, r.elapsed.Round(time.Second))
	return nil
}

// sizeResult is everything measured at one program count.
type sizeResult struct {
	n           int
	sweep       map[string]float64
	sweepCount  map[string]int
	pids        map[string]float64
	pidsCount   map[string]int
	fresh       []freshness
	daemon      *daemonUsage
	cli         map[string]cliRun
	phases      []phase
	largest     bool
	programsAll int
}

func measureSize(c *config, n int, h *helper) (*sizeResult, error) {
	res := &sizeResult{n: n, largest: n == c.sizes[len(c.sizes)-1]}
	var err error
	logf("N=%d: stats sweep", n)
	if res.sweep, res.sweepCount, err = measureSweeps(c.reps); err != nil {
		return nil, err
	}
	res.programsAll = res.sweepCount[sweepBpftool]
	logf("N=%d: pid/comm resolution", n)
	if res.pids, res.pidsCount, err = measurePids(c.reps, h.pid); err != nil {
		return nil, err
	}
	for _, src := range []struct {
		name string
		pace time.Duration
	}{{"perf", time.Millisecond}, {"poll", 2 * time.Millisecond}} {
		logf("N=%d: freshness, %s source, %d loads", n, src.name, c.events)
		res.fresh = append(res.fresh, measureFreshness(src.name, c.events, src.pace))
	}
	if !res.largest {
		return res, nil
	}
	logf("N=%d: tracker run for %v", n, c.window+3*time.Second)
	d := measureDaemon(c.tracker, 3*time.Second, c.window)
	res.daemon = &d
	logf("N=%d: tracker stats vs bpftool prog show, %d runs each", n, c.cliReps)
	cmds := map[string][]string{
		cliTracker: {c.tracker, "stats", "--all", "--count", "1", "-o", "json", "--log-level", "warn"},
	}
	if path, err := exec.LookPath(c.bpftool); err == nil {
		cmds[cliBpftool] = []string{path, "prog", "show", "-j"}
	}
	if res.cli, err = commandTimes(c.cliReps, cmds); err != nil {
		return nil, err
	}
	logf("N=%d: tracker stats phase by phase", n)
	if res.phases, err = measureStatsPhases(); err != nil {
		return nil, err
	}
	return res, nil
}

// Command names of the whole-process comparison.
const (
	cliTracker = "tracker stats --all --count 1 -o json"
	cliBpftool = "bpftool prog show -j"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format(time.TimeOnly), fmt.Sprintf(format, args...))
}
