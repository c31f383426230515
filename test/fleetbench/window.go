package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// measure runs the consumers and K nodes, waits for the warm-up, and
// measures over the window.
func measure(c config, servers []*server, k int, sim bool) (result, error) {
	r := result{k: k}
	var urls []string
	for _, s := range servers {
		urls = append(urls, s.url)
	}
	top, err := startTop(c, servers[0].url)
	if err != nil {
		return r, err
	}
	defer top.proc.stop()
	fleet, err := startFleetTop(c, servers[0].url)
	if err != nil {
		return r, err
	}
	defer fleet.proc.stop()
	var aggs []*process
	defer func() {
		for _, a := range aggs {
			a.stop()
		}
	}()
	for p := range c.partitions {
		cmd := exec.Command(c.tracker, "aggregate", "--partition", fmt.Sprintf("%d/%d", p, c.partitions),
			"--nats-url", servers[1+p%2].url, "--interval", c.interval.String())
		a, err := startProcess("aggregate", cmd, nil)
		if err != nil {
			return r, err
		}
		aggs = append(aggs, a)
	}
	// The consumers' interest reaches every server before the load.
	time.Sleep(time.Second)
	stopLoad, err := startLoad(context.Background(), c, urls, k, sim)
	if err != nil {
		return r, err
	}
	defer stopLoad()
	time.Sleep(c.warmup)
	procs := append([]*process{top.proc, fleet.proc}, aggs...)
	for _, s := range servers {
		procs = append(procs, s.proc)
	}
	before, err := snapshot(procs, servers)
	if err != nil {
		return r, err
	}
	for _, con := range []*consumer{top, fleet} {
		con.mu.Lock()
		con.measuring = true
		con.mu.Unlock()
	}
	time.Sleep(c.window)
	after, err := snapshot(procs, servers)
	if err != nil {
		return r, err
	}
	for _, p := range procs {
		if !p.alive() {
			return r, fmt.Errorf("%s exited: %s", p.name, p.errors())
		}
	}
	r.fill(before, after, c.window, len(aggs))
	top.mu.Lock()
	r.topLag = top.lag
	top.mu.Unlock()
	fleet.mu.Lock()
	r.fleetLag = fleet.lag
	fleet.mu.Unlock()
	return r, nil
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

// fill computes the rates: procs are top, top --fleet, the aggregators,
// then the servers.
func (r *result) fill(before, after sample, window time.Duration, aggs int) {
	rate := func(i int) usageRate {
		return usageRate{cores: float64(after.usage[i].cpu-before.usage[i].cpu) / float64(window),
			rss: after.usage[i].rss, hwm: after.usage[i].hwm}
	}
	r.top, r.fleet = rate(0), rate(1)
	for i := range aggs {
		r.aggs = append(r.aggs, rate(2+i))
	}
	for i := 2 + aggs; i < len(after.usage); i++ {
		u := rate(i)
		r.servers.cores += u.cores
		r.servers.rss += u.rss
		r.servers.hwm += u.hwm
	}
	for name, a := range after.conns {
		if strings.HasPrefix(name, "bpfstats-top") || strings.HasPrefix(name, "bpfstats-aggregate") {
			continue
		}
		b := before.conns[name]
		r.pubMsgs += float64(a.InMsgs-b.InMsgs) / window.Seconds()
		r.pubBytes += float64(a.InBytes-b.InBytes) / window.Seconds()
	}
}
