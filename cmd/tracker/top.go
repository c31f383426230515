package main

import (
	"context"
	"flag"
	"io"
	"path"
	"strings"
	"time"

	"github.com/bpfstats/tracker/internal/fleet"
	"github.com/bpfstats/tracker/internal/publish"
)

func runTop(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var n natsFlags
	var o outputFlags
	n.register(fs, "comma-separated NATS server URLs")
	o.register(fs)
	n.url = "nats://" + publish.DefaultListen
	fs.Lookup("nats-url").DefValue = n.url
	all := fs.Bool("all", false, "one row per program, unowned programs included (reads every program row)")
	nodeGlob := fs.String("node", "", "only nodes whose name matches this shell pattern, with their gadgets' processes (reads their detail messages)")
	fleetView := fs.Bool("fleet", false, "the merged rollups of the partition aggregators (tracker aggregate) instead of the nodes")
	by := fs.String("by", "", `"image", "unit", "container" or "pod": one row per gadget image, systemd unit, container or pod (namespace/name, else UID), summed across nodes`)
	interval := fs.Duration("interval", 2*time.Second, "time between two prints")
	count := fs.Int("count", 0, "number of prints; 0 runs until interrupted")
	logLevel := fs.String("log-level", "warn", "log level: debug|info|warn|error")
	var tf topTUIFlags
	tf.register(fs)
	fs.Usage = usageFunc(fs, "top [flags]", true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := validateInterval(*interval); err != nil {
		return err
	}
	if err := validateLogLevel(*logLevel); err != nil {
		return err
	}
	if _, err := path.Match(*nodeGlob, ""); err != nil {
		return usagef("--node %.100q is not a shell pattern: %v", *nodeGlob, err)
	}
	if err := validateTopView(*count, *by, *fleetView, *all || *nodeGlob != "" || *by != "" || n.kv); err != nil {
		return err
	}
	if err := o.validate(); err != nil {
		return err
	}
	if err := n.validate(); err != nil {
		return err
	}
	cols, err := publish.SelectColumns(strings.Split(o.fields, ","))
	if err != nil {
		return usageError{err}
	}
	if err := tf.validate(); err != nil {
		return err
	}
	view := topView{tui: tf, all: *all, interval: *interval, nodeGlob: *nodeGlob, logLevel: *logLevel, count: *count, out: o, nats: n}
	if tf.local {
		return runTopLocal(ctx, view, stdout, stderr)
	}
	log := newLogger(stderr, *logLevel)
	opts := n.conn(n.url, "bpfstats-top", log)
	opts.FailFast = true
	nc, err := publish.ConnectNATS(opts)
	if err != nil {
		return err
	}
	defer nc.Close()
	if interactive(stdout, o.output, *count, *by) && !*fleetView {
		return runTopFleet(ctx, view, nc, stdout, stderr)
	}
	run := fleet.Run
	if *fleetView {
		run = fleet.RunRollups
	}
	return run(ctx, nc, fleet.Options{
		SubjectPrefix: n.prefix,
		All:           *all,
		By:            *by,
		NodeGlob:      *nodeGlob,
		JSON:          o.output == "json",
		Columns:       cols,
		Interval:      *interval,
		Count:         *count,
		KV:            n.kv,
		Logger:        log,
	}, stdout)
}

// validateTopView checks the flags that choose what top shows.
func validateTopView(count int, by string, fleetView, nodeFlags bool) error {
	if count < 0 {
		return usagef("--count must be >= 0, got %d", count)
	}
	if !fleet.ValidBy(by) {
		return usagef(`unknown --by %q: want "image", "unit", "container" or "pod"`, by)
	}
	if fleetView && nodeFlags {
		return usagef("--fleet shows the aggregators' rollups: it takes no --all, --node, --by or --kv")
	}
	return nil
}
