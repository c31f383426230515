package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

const (
	beginMarker = "<!-- fleetbench:begin -->"
	endMarker   = "<!-- fleetbench:end -->"
)

// writeReport replaces the part of c.out between the fleetbench markers
// with the results.
func writeReport(c config, results []result) error {
	doc, err := os.ReadFile(c.out)
	if err != nil {
		return err
	}
	before, rest, ok1 := strings.Cut(string(doc), beginMarker)
	_, after, ok2 := strings.Cut(rest, endMarker)
	if !ok1 || !ok2 {
		return fmt.Errorf("%s lacks the %s and %s markers", c.out, beginMarker, endMarker)
	}
	var b strings.Builder
	b.WriteString(beginMarker + "\n")
	writeSetup(&b, c)
	writeTable(&b, results)
	writeExtrapolation(&b, c, results)
	b.WriteString(endMarker)
	return os.WriteFile(c.out, []byte(before+b.String()+after), 0o644)
}

func writeSetup(b *strings.Builder, c config) {
	describe, _ := exec.Command("git", "describe", "--always", "--dirty").Output()
	load, _ := os.ReadFile("/proc/loadavg")
	gen := fmt.Sprintf("`tracker simulate --summary-only` for K up to %d (the tracker's own encoder and sink; each node publishes its `_node` and `_summary`, "+
		"not the gadget subjects, which the measured consumers do not read: two messages per node-interval); above that, "+
		"fleetbench's own generator (test/fleetbench/gen.go: summaries built from publish's types, encoded again every %d intervals, one message per node-interval), "+
		"because on this machine the simulator's real encoder cannot publish 10,000 nodes a second besides the servers and the consumers "+
		"(see its CPU at K=%d)", c.simulateUpTo, refreshEvery, c.simulateUpTo)
	fmt.Fprintf(b, "Measured by `make fleetbench` on %s, tree `%s`, %d CPUs (%s), load average at the end %s.\n\n",
		time.Now().UTC().Format("2006-01-02"), strings.TrimSpace(string(describe)), runtime.NumCPU(), cpuModel(),
		strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Fprintf(b, "Load: %s. Each node: %d gadgets of %d programs and %d unowned programs, one summary every %v, "+
		"each node at its own offset within the interval. Three nats-servers on loopback (deploy/nats/cluster.conf, "+
		"%d partitions). Two phases per K, each with its own run of the load so that they do not share the CPUs: "+
		"`tracker top --by image` (summary mode) alone, then the partitioned aggregation, %d `tracker aggregate --partition i/%d` "+
		"and `tracker top --fleet`, each its own process. Each phase measured over %v after %v of warm-up; CPU in cores (CPU seconds per second), RSS at the end; "+
		"lag is the largest a consumer reported during the window (age of a node's newest summary; "+
		"for the fleet view, an aggregator's lag plus the age of its rollup). The simulator, the servers and the consumers share the machine's %d CPUs "+
		"(and, when this ran, with whatever else ran on it: see the load average), so the largest K measures a CPU-starved consumer as much as the consumer itself.\n\n",
		gen, c.shape.gadgets, c.shape.programs, c.shape.unowned, c.interval, c.partitions, c.partitions, c.partitions, c.window, c.warmup,
		runtime.NumCPU())
}

func writeTable(b *strings.Builder, results []result) {
	b.WriteString("| K nodes | published msg/s | published MB/s | load (simulator CPU: top phase, aggregation phase) | top CPU | top RSS | top lag (intervals) | top nodes shown (min..end) | top slow-consumer drops | 3 servers CPU, RSS | aggregators CPU (sum) | aggregator RSS (max) | fleet view CPU | fleet lag | fleet nodes (min..end) | 3 servers CPU |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range results {
		var aggRSS int64
		for _, a := range r.aggs {
			aggRSS = max(aggRSS, a.rss)
		}
		load := "generator"
		if r.simulated {
			load = fmt.Sprintf("simulate %.2f, %.2f", r.load, r.aggLoad)
		}
		fmt.Fprintf(b, "| %d | %.0f | %.1f | %s | %.2f | %s | %v (%.2f) | %d..%d | %d | %.2f, %s | %.2f | %s | %.2f | %v | %d..%d | %.2f |\n",
			r.k, r.pubMsgs, r.pubBytes/1e6, load, r.top.cores, mib(r.top.rss),
			r.topLag.maxLag.Round(time.Millisecond), r.topLag.maxIntervals, r.topLag.minNodes, r.topLag.lastNodes,
			r.topLag.dropped-r.topLag.droppedAtStart, r.servers.cores, mib(r.servers.rss), r.aggCores(), mib(aggRSS), r.fleet.cores,
			r.fleetLag.maxLag.Round(time.Millisecond), r.fleetLag.minNodes, r.fleetLag.lastNodes, r.aggServers.cores)
	}
	b.WriteString("\n")
}

// writeExtrapolation scales the largest K's per-message costs to 100,000
// nodes, on paper.
func writeExtrapolation(b *strings.Builder, c config, results []result) {
	if len(results) == 0 {
		return
	}
	r := results[len(results)-1]
	if r.pubMsgs == 0 {
		return
	}
	const big = 100000
	// Costs per node-interval: each node publishes once per interval
	// (a _summary, and a _node with the simulator), whatever the count of
	// messages.
	perSec := big / c.interval.Seconds()
	nodeIntervals := float64(r.k) / c.interval.Seconds()
	size := r.pubBytes / nodeIntervals
	topCost := r.top.cores / nodeIntervals
	aggCost := r.aggCores() / nodeIntervals
	srvCost := r.servers.cores / nodeIntervals
	fmt.Fprintf(b, "**Paper extrapolation to %d nodes** (from K=%d, per node-interval: %.0f bytes published, %.1f µs of top CPU, "+
		"%.1f µs of aggregator CPU and %.1f µs of server CPU; linear, which the table supports only as far as it goes):\n\n",
		big, r.k, size, topCost*1e6, aggCost*1e6, srvCost*1e6)
	fmt.Fprintf(b, "- %.0f node-intervals/s, %.0f MB/s into the cluster (%.1f Gbit/s), each summary delivered to every summary consumer.\n",
		perSec, perSec*size/1e6, perSec*size*8/1e9)
	fmt.Fprintf(b, "- One `tracker top` on everything: %.1f cores of decoding and bookkeeping; in a partitioned cluster every summary "+
		"arrives on one subscription, read by one goroutine, so %s.\n",
		perSec*topCost, verdict(perSec*topCost))
	parts := int(math.Ceil(perSec * aggCost / 0.5))
	fmt.Fprintf(b, "- The partitioned aggregation: %.1f cores in all; at half a core per aggregator, %d partitions "+
		"(`partition(%d,1)` in deploy/nats/partitions.conf), each aggregator following %d nodes; `top --fleet` reads %d small rollups a second.\n",
		perSec*aggCost, max(parts, 1), max(parts, 1), big/max(parts, 1), max(parts, 1))
	fmt.Fprintf(b, "- The servers: %.1f cores over the cluster for routing and delivery at this rate.\n\n", perSec*srvCost)
}

func verdict(cores float64) string {
	if cores < 0.8 {
		return "one top follows 100,000 nodes"
	}
	return "100,000 nodes need the partitioned aggregation, not one top"
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
