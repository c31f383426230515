package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// measure runs, for K nodes, two phases one after the other, each with
// its own load, so that they do not share the CPUs: "tracker top" alone,
// then the partitioned aggregation (the aggregators and top --fleet).
func measure(c config, servers []*server, k int, sim bool) (result, error) {
	r := result{k: k, simulated: sim}
	top, err := startTop(c, servers[0].url)
	if err != nil {
		return r, err
	}
	s, err := runPhase(c, servers, k, sim, []*process{top.proc}, []*consumer{top})
	if err != nil {
		return r, fmt.Errorf("top: %w", err)
	}
	r.pubMsgs, r.pubBytes, r.servers, r.load = s.pubMsgs, s.pubBytes, s.servers, s.load
	r.top, r.topLag = s.procs[0], top.lag

	fleet, err := startFleetTop(c, servers[0].url)
	if err != nil {
		return r, err
	}
	procs := []*process{fleet.proc}
	for p := range c.partitions {
		cmd := exec.Command(c.tracker, "aggregate", "--partition", fmt.Sprintf("%d/%d", p, c.partitions),
			"--nats-url", servers[1+p%2].url, "--interval", c.interval.String())
		a, err := startProcess("aggregate", cmd, nil)
		if err != nil {
			stopProcs(procs)
			return r, err
		}
		procs = append(procs, a)
	}
	s, err = runPhase(c, servers, k, sim, procs, []*consumer{fleet})
	if err != nil {
		return r, fmt.Errorf("aggregation: %w", err)
	}
	r.aggPubMsgs, r.aggServers, r.aggLoad = s.pubMsgs, s.servers, s.load
	r.fleet, r.aggs, r.fleetLag = s.procs[0], s.procs[1:], fleet.lag
	return r, nil
}

func stopProcs(procs []*process) {
	for _, p := range procs {
		p.stop()
	}
}

// phase is what one phase measured.
type phase struct {
	pubMsgs, pubBytes float64
	// load is the simulator's CPU in cores.
	load    float64
	procs   []usageRate
	servers usageRate
}

// runPhase starts the load once the consumers procs run, waits for the
// warm-up, measures over the window, and stops the load and procs.
func runPhase(c config, servers []*server, k int, sim bool, procs []*process, cons []*consumer) (phase, error) {
	var ph phase
	defer stopProcs(procs)
	var urls []string
	for _, s := range servers {
		urls = append(urls, s.url)
	}
	// The consumers' interest reaches every server before the load.
	time.Sleep(time.Second)
	load, stopLoad, err := startLoad(context.Background(), c, urls, k, sim)
	if err != nil {
		return ph, err
	}
	defer stopLoad()
	time.Sleep(c.warmup)
	all := append([]*process{}, procs...)
	for _, s := range servers {
		all = append(all, s.proc)
	}
	if load != nil {
		// Last: fill takes the servers as the usages after the consumers.
		all = append(all, load)
	}
	before, err := snapshot(all, servers)
	if err != nil {
		return ph, err
	}
	for _, con := range cons {
		con.mu.Lock()
		con.measuring = true
		con.mu.Unlock()
	}
	time.Sleep(c.window)
	after, err := snapshot(all, servers)
	if err != nil {
		return ph, err
	}
	for _, p := range procs {
		if !p.alive() {
			return ph, fmt.Errorf("%s exited: %s", p.name, p.errors())
		}
	}
	for _, con := range cons {
		con.mu.Lock()
		con.measuring = false
		con.mu.Unlock()
	}
	if load != nil {
		last := len(after.usage) - 1
		ph.load = float64(after.usage[last].cpu-before.usage[last].cpu) / float64(c.window)
		before.usage, after.usage = before.usage[:last], after.usage[:last]
	}
	ph.fill(before, after, c.window, len(procs))
	return ph, nil
}

// sample is the processes' usage and the clients' counters at one time.
type sample struct {
	usage []usage
	conns map[string]connStats
}

func snapshot(procs []*process, servers []*server) (sample, error) {
	var s sample
	for _, p := range procs {
		u, err := readUsage(p.cmd.Process.Pid)
		if err != nil {
			return s, fmt.Errorf("%s: %w", p.name, err)
		}
		s.usage = append(s.usage, u)
	}
	var err error
	s.conns, err = clientCounters(servers)
	return s, err
}

// fill computes the rates: the first n usages are the consumers', the
// rest the servers'.
func (ph *phase) fill(before, after sample, window time.Duration, n int) {
	rate := func(i int) usageRate {
		return usageRate{cores: float64(after.usage[i].cpu-before.usage[i].cpu) / float64(window),
			rss: after.usage[i].rss, hwm: after.usage[i].hwm}
	}
	for i := range n {
		ph.procs = append(ph.procs, rate(i))
	}
	for i := n; i < len(after.usage); i++ {
		u := rate(i)
		ph.servers.cores += u.cores
		ph.servers.rss += u.rss
		ph.servers.hwm += u.hwm
	}
	for name, a := range after.conns {
		if strings.HasPrefix(name, "bpfstats-top") || strings.HasPrefix(name, "bpfstats-aggregate") {
			continue
		}
		b := before.conns[name]
		ph.pubMsgs += float64(a.InMsgs-b.InMsgs) / window.Seconds()
		ph.pubBytes += float64(a.InBytes-b.InBytes) / window.Seconds()
	}
}
