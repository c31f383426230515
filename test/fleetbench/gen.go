package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/bpfstats/tracker/internal/publish"
)

// generator publishes, for K synthetic nodes sim-0 ... sim-<K-1>, the
// _summary message of every interval, each node at its own offset within
// the interval, built from publish's types. It stands in for "tracker
// simulate" where the tracker lacks it, and publishes only summaries: the
// consumers measured here read nothing else.
type generator struct {
	shape    shape
	interval time.Duration
	conns    []*nats.Conn
	nodes    []*simNode

	msgs, bytes atomic.Int64
}

type shape struct{ gadgets, programs, unowned int }

// simNode is one synthetic node: its summary's gadgets are encoded again
// every refreshEvery intervals, with counters that grew.
type simNode struct {
	name, subject, instance string
	seq                     uint64
	tail                    []byte
}

const refreshEvery = 10

func newGenerator(k int, sh shape, interval time.Duration, urls []string) (*generator, error) {
	g := &generator{shape: sh, interval: interval}
	for _, url := range urls {
		nc, err := nats.Connect(url, nats.Name("fleetbench-generator"), nats.ReconnectBufSize(64<<20))
		if err != nil {
			g.close()
			return nil, fmt.Errorf("generator connecting to %s: %w", url, err)
		}
		g.conns = append(g.conns, nc)
	}
	for i := range k {
		name := fmt.Sprintf("sim-%d", i)
		g.nodes = append(g.nodes, &simNode{name: name, subject: "bpfstats." + name + "." + publish.TokenSummary,
			instance: fmt.Sprintf("fleetbench-%d-%d", time.Now().UnixNano(), i)})
	}
	return g, nil
}

func (g *generator) close() {
	for _, nc := range g.conns {
		nc.Flush() //nolint:errcheck // closing anyway
		nc.Close()
	}
}

// run publishes until ctx ends, one goroutine per connection, each for
// its share of the nodes: node i at i/K of every interval.
func (g *generator) run(ctx context.Context) error {
	errs := make(chan error, len(g.conns))
	for c := range g.conns {
		go func() { errs <- g.runShare(ctx, c) }()
	}
	var first error
	for range g.conns {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// runShare publishes the nodes i with i % len(conns) == c.
func (g *generator) runShare(ctx context.Context, c int) error {
	const tick = 10 * time.Millisecond
	start := time.Now()
	next, period := c, 0 // the next node to publish in this period
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		elapsed := time.Since(start)
		for {
			if next >= len(g.nodes) {
				if elapsed < time.Duration(period+1)*g.interval {
					break
				}
				period, next = period+1, c
				continue
			}
			if !g.due(next, elapsed-time.Duration(period)*g.interval) {
				break
			}
			if err := g.publish(g.nodes[next], g.conns[c]); err != nil {
				return err
			}
			next += len(g.conns)
		}
	}
}

// due tells whether node i's offset is within into the interval.
func (g *generator) due(i int, into time.Duration) bool {
	return time.Duration(int64(g.interval)*int64(i)/int64(len(g.nodes))) <= into
}

func (g *generator) publish(n *simNode, nc *nats.Conn) error {
	n.seq++
	if n.tail == nil || n.seq%refreshEvery == 0 {
		tail, err := g.tail(n)
		if err != nil {
			return err
		}
		n.tail = tail
	}
	head, err := json.Marshal(publish.NodeMessage{
		Header: publish.Header{Schema: publish.SchemaVersion, Type: publish.TypeSummary, Node: n.name, Seq: n.seq,
			Time: time.Now(), Elapsed: g.interval, Interval: g.interval, Instance: n.instance, Part: 1, Parts: 1},
		NodeName: n.name, Version: "fleetbench", Kernel: "6.12.0", Source: "perf", Sweeps: n.seq,
		Counts: publish.NodeCounts{Programs: g.shape.gadgets*g.shape.programs + g.shape.unowned, Gadgets: g.shape.gadgets, Unowned: g.shape.unowned},
	})
	if err != nil {
		return err
	}
	// The summary is the node message's fields, then its gadgets and
	// unowned totals (tail starts with a comma).
	data := append(head[:len(head)-1], n.tail...)
	if err := nc.Publish(n.subject, data); err != nil {
		return fmt.Errorf("publishing %s: %w", n.subject, err)
	}
	g.msgs.Add(1)
	g.bytes.Add(int64(len(data)))
	return nil
}

// tail encodes the node's gadgets and unowned totals as of its seq.
func (g *generator) tail(n *simNode) ([]byte, error) {
	var s struct {
		Gadgets []publish.GadgetSummary `json:"gadgets"`
		Unowned publish.MessageTotals   `json:"unowned"`
	}
	for j := range g.shape.gadgets {
		s.Gadgets = append(s.Gadgets, publish.GadgetSummary{
			Gadget: publish.GadgetIdentity{ID: fmt.Sprintf("%s-g%02d-0123456789abcdef", n.name, j),
				Name: fmt.Sprintf("gadget-%02d", j), Image: fmt.Sprintf("ghcr.io/example/gadget-%02d:v1", j%10)},
			OwnerPID: 4242,
			Totals: publish.MessageTotals{Runtime: n.seq * 1_000_000, Runcount: n.seq * 1000, RuntimeDelta: 1_000_000,
				RuncountDelta: 1000, CPUPercent: 0.1, MapMemory: 65536, MapCount: 4, ProgramCount: g.shape.programs},
		})
	}
	s.Unowned = publish.MessageTotals{Runtime: n.seq * 500_000, Runcount: n.seq * 300, MapMemory: 32768, MapCount: 6, ProgramCount: g.shape.unowned}
	data, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	data[0] = ','
	return data, nil
}
