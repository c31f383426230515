package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// result is one K's measurements over the window.
type result struct {
	k int
	// pubMsgs and pubBytes are the publishers' rates, per second.
	pubMsgs, pubBytes float64
	// top is "tracker top" (summary mode, --by image); aggs the
	// aggregators; fleet "tracker top --fleet"; servers the three
	// nats-servers together, in the top phase; aggServers and
	// aggPubMsgs are the servers and the publishers in the aggregation
	// phase.
	top, fleet, servers, aggServers usageRate
	aggs                            []usageRate
	// simulated tells whether "tracker simulate" was the load, not the
	// harness's generator; load and aggLoad are the simulator's CPU in
	// the two phases.
	simulated        bool
	load, aggLoad    float64
	aggPubMsgs       float64
	topLag, fleetLag lagStats
}

// usageRate is a process's CPU in cores over the window and its memory.
type usageRate struct {
	cores    float64
	rss, hwm int64
}

// lagStats are what a consumer printed during the window.
type lagStats struct {
	prints         int
	maxLag         time.Duration
	maxIntervals   float64
	maxBehind      int
	lastNodes      int
	minNodes       int
	dropped        uint64
	droppedAtStart uint64
	started        bool
}

func (r result) oneLine() string {
	return fmt.Sprintf("pub %.0f msg/s %.1f MB/s; top %.2f cores lag %v nodes %d..%d drops %d; aggregators %.2f cores; fleet lag %v nodes %d",
		r.pubMsgs, r.pubBytes/1e6, r.top.cores, r.topLag.maxLag, r.topLag.minNodes, r.topLag.lastNodes,
		r.topLag.dropped-r.topLag.droppedAtStart, r.aggCores(), r.fleetLag.maxLag, r.fleetLag.lastNodes)
}

func (r result) aggCores() float64 {
	var c float64
	for _, a := range r.aggs {
		c += a.cores
	}
	return c
}

// consumer is a running consumer process and what it printed.
type consumer struct {
	proc *process
	mu   sync.Mutex
	lag  lagStats
	// measuring is set during the window.
	measuring bool
}

func (c *consumer) record(lag time.Duration, intervals float64, behind, nodes int, dropped uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := &c.lag
	if !c.measuring {
		l.droppedAtStart, l.dropped = dropped, dropped
		return
	}
	if !l.started {
		l.started, l.minNodes = true, nodes
	}
	l.prints++
	l.maxLag, l.maxIntervals, l.maxBehind = max(l.maxLag, lag), max(l.maxIntervals, intervals), max(l.maxBehind, behind)
	l.lastNodes, l.minNodes, l.dropped = nodes, min(l.minNodes, nodes), dropped
}

// startTop runs "tracker top" in summary mode, --by image, parsing the
// "#" line of each print.
func startTop(c config, url string) (*consumer, error) {
	con := &consumer{}
	cmd := exec.Command(c.tracker, "top", "--nats-url", url, "--by", "image", "--interval", c.interval.String())
	p, err := startProcess("top", cmd, func(line string) {
		if !strings.HasPrefix(line, "# ") {
			return
		}
		kv := map[string]string{}
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = v
			}
		}
		lag, _ := time.ParseDuration(kv["lag"])
		iv, _ := strconv.ParseFloat(kv["lagIntervals"], 64)
		behind, _ := strconv.Atoi(kv["behind"])
		nodes, _ := strconv.Atoi(kv["nodes"])
		drops, _ := strconv.ParseUint(kv["slowDrops"], 10, 64)
		con.record(lag, iv, behind, nodes, drops)
	})
	con.proc = p
	return con, err
}

// startFleetTop runs "tracker top --fleet -o json".
func startFleetTop(c config, url string) (*consumer, error) {
	con := &consumer{}
	cmd := exec.Command(c.tracker, "top", "--fleet", "-o", "json", "--nats-url", url, "--interval", c.interval.String())
	p, err := startProcess("top --fleet", cmd, func(line string) {
		var fp struct {
			Nodes   int           `json:"nodes"`
			Lag     time.Duration `json:"lag"`
			Behind  int           `json:"behind"`
			Dropped uint64        `json:"dropped"`
		}
		if json.Unmarshal([]byte(line), &fp) == nil {
			con.record(fp.Lag, float64(fp.Lag)/float64(c.interval), fp.Behind, fp.Nodes, fp.Dropped)
		}
	})
	con.proc = p
	return con, err
}

// hasSimulate tells whether the tracker has the "simulate" command.
func hasSimulate(tracker string) bool {
	out, err := exec.Command(tracker, "simulate", "--help").CombinedOutput()
	return err == nil && strings.Contains(string(out), "-nodes")
}

// startLoad starts K nodes: "tracker simulate --summary-only" when there
// is one (the tracker's own encoder; the gadget subjects carry nothing the
// measured consumers read), else the harness's own generator. It returns
// the simulator's process, nil for the generator.
func startLoad(ctx context.Context, c config, urls []string, k int, sim bool) (p *process, stop func(), err error) {
	if sim {
		cmd := exec.CommandContext(ctx, c.tracker, "simulate", "--nodes", strconv.Itoa(k), "--interval", c.interval.String(),
			"--summary-only", "--conns", strconv.Itoa(min(k, len(urls))), "--nats-url", strings.Join(urls, ","))
		p, err := startProcess("simulate", cmd, nil)
		if err != nil {
			return nil, nil, err
		}
		return p, p.stop, nil
	}
	g, err := newGenerator(k, c.shape, c.interval, urls)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := g.run(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "fleetbench: generator:", err)
		}
	}()
	return nil, func() { cancel(); <-done; g.close() }, nil
}
