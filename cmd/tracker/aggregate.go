package main

import (
	"context"
	"flag"
	"io"
	"time"

	"github.com/bpfstats/tracker/internal/fleet"
	"github.com/bpfstats/tracker/internal/publish"
)

// runAggregate follows one partition of a partitioned cluster's summaries
// and publishes their rollup every interval (see docs/fleet.md).
func runAggregate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("aggregate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var n natsFlags
	n.register(fs, "comma-separated NATS server URLs")
	n.url = "nats://" + publish.DefaultListen
	fs.Lookup("nats-url").DefValue = n.url
	partition := fs.String("partition", "", "the partition to follow, i/N: the cluster maps summaries into N partitions (deploy/nats/partitions.conf)")
	interval := fs.Duration("interval", 2*time.Second, "time between two rollups")
	count := fs.Int("count", 0, "number of rollups; 0 runs until interrupted")
	logLevel := fs.String("log-level", "warn", "log level: debug|info|warn|error")
	fs.Usage = usageFunc(fs, "aggregate --partition i/N [flags]", false)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	i, parts, err := fleet.ParsePartition(*partition)
	if err != nil {
		return usagef("--partition: %v", err)
	}
	if err := validateInterval(*interval); err != nil {
		return err
	}
	if err := validateLogLevel(*logLevel); err != nil {
		return err
	}
	if *count < 0 {
		return usagef("--count must be >= 0, got %d", *count)
	}
	if n.kv {
		return usagef("--kv: aggregate reads the partition's summaries, not the key-value bucket")
	}
	if err := n.validate(); err != nil {
		return err
	}
	log := newLogger(stderr, *logLevel)
	opts := n.conn(n.url, "bpfstats-aggregate", log)
	opts.FailFast = true
	nc, err := publish.ConnectNATS(opts)
	if err != nil {
		return err
	}
	defer nc.Close()
	return fleet.Aggregate(ctx, nc, fleet.AggregateOptions{
		SubjectPrefix: n.prefix,
		Partition:     i,
		Partitions:    parts,
		Interval:      *interval,
		Count:         *count,
		Logger:        log,
	})
}
