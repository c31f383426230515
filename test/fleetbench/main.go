// Command fleetbench measures the fleet consumers at scale: a three-server
// NATS cluster on loopback with the deployed partition mapping, K
// synthetic nodes publishing summaries, "tracker top" (summary mode) and
// the partitioned aggregation (two "tracker aggregate" and "tracker top
// --fleet"), and writes messages/s, bytes/s, consumer CPU, RSS and lag per
// K into docs/fleet.md. Run by "make fleetbench".
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

type config struct {
	tracker, natsServer, conf, out string
	ks                             []int
	partitions                     int
	// simulateUpTo is the largest K loaded by "tracker simulate"; larger
	// fleets get the harness's generator.
	simulateUpTo             int
	interval, warmup, window time.Duration
	shape                    shape
}

func main() {
	var c config
	var ks string
	flag.StringVar(&c.tracker, "tracker", "bin/tracker", "tracker binary")
	flag.StringVar(&c.natsServer, "nats-server", "bin/nats-server", "nats-server binary")
	flag.StringVar(&c.conf, "conf", "deploy/nats/cluster.conf", "the servers' configuration")
	flag.StringVar(&c.out, "out", "docs/fleet.md", "report to update (between its fleetbench markers)")
	flag.StringVar(&ks, "k", "100,1000,10000", "node counts")
	flag.IntVar(&c.partitions, "partitions", 2, "partitions of the mapping in deploy/nats/partitions.conf")
	flag.IntVar(&c.simulateUpTo, "simulate-up-to", 1000, "largest K loaded by tracker simulate (its real encoder); larger K get fleetbench's pre-encoded generator")
	flag.DurationVar(&c.interval, "interval", time.Second, "the nodes' interval")
	flag.DurationVar(&c.warmup, "warmup", 6*time.Second, "time before measuring, per K")
	flag.DurationVar(&c.window, "window", 20*time.Second, "measured time, per K")
	flag.Parse()
	c.shape = shape{gadgets: 20, programs: 5, unowned: 30}
	for _, s := range strings.Split(ks, ",") {
		k, err := strconv.Atoi(s)
		if err != nil || k < 1 {
			fmt.Fprintf(os.Stderr, "fleetbench: bad -k %q\n", ks)
			os.Exit(2)
		}
		c.ks = append(c.ks, k)
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "fleetbench:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	servers, err := startCluster(c.natsServer, c.conf)
	if err != nil {
		return err
	}
	defer stopAll(servers)
	sim := hasSimulate(c.tracker)
	var results []result
	for _, k := range c.ks {
		fmt.Fprintf(os.Stderr, "fleetbench: K=%d\n", k)
		r, err := measure(c, servers, k, sim && k <= c.simulateUpTo)
		if err != nil {
			return fmt.Errorf("with %d nodes: %w", k, err)
		}
		results = append(results, r)
		fmt.Fprintf(os.Stderr, "fleetbench: K=%d %s\n", k, r.oneLine())
	}
	return writeReport(c, results)
}
