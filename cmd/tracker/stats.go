package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// outputFlags choose how rows are printed.
type outputFlags struct {
	output string
	fields string
}

func (o *outputFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&o.output, "o", "table", "output format: table|json")
	fs.StringVar(&o.fields, "fields", "", "extra columns, comma-separated (see the list below)")
}

// printer returns a function printing the rows of one snapshot. The rows
// go in one write, which a pipe is grown to hold (see fitPipe).
func (o *outputFlags) printer(out io.Writer, all bool) (func(*state.Snapshot) error, error) {
	out = fitPipe(out)
	cols, err := publish.SelectColumns(strings.Split(o.fields, ","))
	if err != nil {
		return nil, usageError{err}
	}
	rows := func(s *state.Snapshot) []*state.Row {
		if all {
			return s.Programs
		}
		gadgets := make([]*state.Row, len(s.Gadgets))
		for i := range s.Gadgets {
			gadgets[i] = &s.Gadgets[i]
		}
		return gadgets
	}
	switch o.output {
	case "table":
		return func(s *state.Snapshot) error {
			fmt.Fprintf(out, "# %s node=%s source=%s programs=%d gadgets=%d\n",
				s.Time.UTC().Format("2006-01-02T15:04:05Z"), publish.TableCell(s.Node), s.Source, len(s.Programs), len(s.Gadgets))
			return publish.WriteTable(out, cols, rows(s))
		}, nil
	case "json":
		return func(s *state.Snapshot) error {
			// Each row with the tracker's event source, without copying
			// the snapshot's rows.
			return publish.WriteRowsJSON(out, rows(s), s.Source)
		}, nil
	}
	return nil, o.validate()
}

// validate checks the -o value.
func (o *outputFlags) validate() error {
	if o.output != "table" && o.output != "json" {
		return usagef("unknown output format -o %q: want table or json", o.output)
	}
	return nil
}

func usageFunc(fs *flag.FlagSet, synopsis string, columns bool) func() {
	return func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: tracker %s\n\nFlags (each also from the environment as TRACKER_<FLAG>, flags win):\n", synopsis)
		fs.PrintDefaults()
		if columns {
			fmt.Fprintf(w, "\nColumns:\n%s", publish.ColumnHelp())
		}
	}
}

// oneShotMemoryLimit bounds the heap of a one-shot that runs without
// garbage collection (see oneShotGC): far above what one sweep of 20000
// programs allocates, and where the collector takes over again.
const oneShotMemoryLimit = 1 << 30

// oneShotGC turns garbage collection off up to oneShotMemoryLimit, unless
// GOGC or GOMEMLIMIT say otherwise: a one-shot exits right after its one
// answer, so collecting what it allocated on the way only adds to its time
// (the collector was a fifth of its CPU at 5000 programs). It reports
// whether it did.
func oneShotGC() bool {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return false
	}
	debug.SetMemoryLimit(oneShotMemoryLimit)
	debug.SetGCPercent(-1)
	return true
}

func runStats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	var o outputFlags
	c.register(fs)
	o.register(fs)
	count := fs.Int("count", 0, "number of tables to print; 0 runs until interrupted")
	fs.Usage = usageFunc(fs, "stats [flags]", true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	if *count < 0 {
		return usagef("--count must be >= 0, got %d", *count)
	}
	print, err := o.printer(stdout, c.all)
	if err != nil {
		return err
	}
	log := newLogger(stderr, c.logLevel)
	// One table needs one sweep: no event source, no stats fd, no cost
	// measurement (100 ms).
	open := func() (*pipeline, error) { return openPipeline(&c, log, true) }
	if *count == 1 {
		// Huge pages pay off for the megabytes a read through the
		// iterators allocates, not for a few programs read through
		// bpf(2): there the forced collection would be most of the cost.
		var beforeIterators func()
		if oneShotGC() {
			beforeIterators = func() { oneShotHugeHeap() }
		}
		open = func() (*pipeline, error) { return openOneShot(&c, log, beforeIterators) }
	}
	p, err := open()
	if err != nil {
		return err
	}
	defer p.Close()
	var printErr error
	err = p.run(ctx, state.RunConfig{
		Interval: c.interval,
		Count:    *count,
		Log:      log,
		OnSnapshot: func(s *state.Snapshot) {
			if err := print(s); err != nil && printErr == nil {
				printErr = err
			}
		},
	})
	if err != nil {
		return err
	}
	return printErr
}
