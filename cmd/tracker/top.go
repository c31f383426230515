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
	by := fs.String("by", "", `"image": one row per gadget image, summed across nodes`)
	interval := fs.Duration("interval", 2*time.Second, "time between two prints")
	count := fs.Int("count", 0, "number of prints; 0 runs until interrupted")
	logLevel := fs.String("log-level", "warn", "log level: debug|info|warn|error")
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
	if *count < 0 {
		return usagef("--count must be >= 0, got %d", *count)
	}
	if *by != "" && *by != "image" {
		return usagef(`unknown --by %q: want "image"`, *by)
	}
	if *fleetView && (*all || *nodeGlob != "" || *by != "" || n.kv) {
		return usagef("--fleet shows the aggregators' rollups: it takes no --all, --node, --by or --kv")
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
	log := newLogger(stderr, *logLevel)
	opts := n.conn(n.url, "bpfstats-top", log)
	opts.FailFast = true
	nc, err := publish.ConnectNATS(opts)
	if err != nil {
		return err
	}
	defer nc.Close()
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
