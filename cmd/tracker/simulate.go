package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// simShape is what every simulated node runs.
type simShape struct {
	gadgets, programs, unowned int
	interval                   time.Duration
}

// simNode is one synthetic node: its snapshot, built once, whose counters
// grow every interval, and the sink that encodes and publishes it.
type simNode struct {
	sink *publish.NATSSink
	snap *state.Snapshot
	// rates are each program's runtime growth per interval, in snap's
	// program order.
	rates []uint64
	// offset is when in every interval the node publishes.
	offset time.Duration
}

func runSimulate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var n natsFlags
	n.register(fs, "comma-separated NATS server URLs")
	n.url = "nats://" + publish.DefaultListen
	fs.Lookup("nats-url").DefValue = n.url
	nodes := fs.Int("nodes", 0, "number of nodes, named sim-0 ... sim-<K-1> (required)")
	var shape simShape
	fs.IntVar(&shape.gadgets, "gadgets", 20, "gadgets per node")
	fs.IntVar(&shape.programs, "programs", 5, "programs per gadget")
	fs.IntVar(&shape.unowned, "unowned", 30, "unowned programs per node")
	fs.DurationVar(&shape.interval, "interval", time.Second, "every node's interval")
	duration := fs.Duration("duration", 0, "stop after this long; 0 runs until interrupted (or --count)")
	count := fs.Int("count", 0, "number of intervals; 0 runs until interrupted (or --duration)")
	conns := fs.Int("conns", 1, "NATS connections the nodes share")
	compact := fs.Bool("compact-rows", false, "publish like tracker run with compact rows between changes")
	summaryOnly := fs.Bool("summary-only", false, "publish only _node and _summary (the fleet consumers' subjects)")
	logLevel := fs.String("log-level", "warn", "log level: debug|info|warn|error")
	fs.Usage = usageFunc(fs, "simulate --nodes K [flags]", false)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := validateSimFlags(*nodes, shape, *duration, *count, *conns); err != nil {
		return err
	}
	if err := validateLogLevel(*logLevel); err != nil {
		return err
	}
	if err := n.validate(); err != nil {
		return err
	}
	log := newLogger(stderr, *logLevel)
	ncs := make([]*nats.Conn, *conns)
	for i := range ncs {
		opts := n.conn(n.url, fmt.Sprintf("bpfstats-simulate %d", i), log)
		opts.FailFast = true
		nc, err := publish.ConnectNATS(opts)
		if err != nil {
			return err
		}
		defer nc.Close()
		ncs[i] = nc
	}
	bufs := &publish.EncodeBuffers{}
	fleet := make([]*simNode, *nodes)
	for i := range fleet {
		sink, err := publish.NewNATSSink(publish.NATSOptions{
			Node: fmt.Sprintf("sim-%d", i), SubjectPrefix: n.prefix, Version: version, Kernel: "simulated",
			Interval: shape.interval, CompactRows: *compact, SummaryOnly: *summaryOnly,
			KV: n.kv, SharedConn: ncs[i%len(ncs)], Buffers: bufs,
		})
		if err != nil {
			return err
		}
		defer sink.Close()
		fleet[i] = newSimNode(i, *nodes, shape, sink)
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	intervals, lag, err := simulateFleet(ctx, fleet, shape.interval, *count)
	for _, nc := range ncs {
		if ferr := nc.Flush(); ferr != nil && err == nil {
			err = fmt.Errorf("flushing NATS: %w", ferr)
		}
	}
	fmt.Fprintf(stdout, "simulated %d nodes for %d intervals, published %d messages, largest lag %v\n",
		len(fleet), intervals, published(fleet), lag.Round(time.Microsecond))
	return err
}

func validateSimFlags(nodes int, shape simShape, duration time.Duration, count, conns int) error {
	switch {
	case nodes < 1:
		return usagef("--nodes must be at least 1, got %d", nodes)
	case shape.gadgets < 0 || shape.programs < 0 || shape.unowned < 0:
		return usagef("--gadgets, --programs and --unowned must be >= 0")
	case duration < 0 || count < 0:
		return usagef("--duration and --count must be >= 0")
	case conns < 1 || conns > nodes:
		return usagef("--conns must be between 1 and --nodes, got %d", conns)
	}
	return validateInterval(shape.interval)
}

// simulateFleet publishes every node once per interval, each at its own
// offset, from this one goroutine, until ctx ends or count intervals are
// done. It sleeps only when ahead by more than a millisecond, so a large
// fleet costs about its encoding and no more wake-ups than 1000 a second.
// It returns the intervals done and the largest lag behind schedule.
func simulateFleet(ctx context.Context, fleet []*simNode, interval time.Duration, count int) (int, time.Duration, error) {
	start := time.Now()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var lag time.Duration
	var errs []error
	for iv := 0; count == 0 || iv < count; iv++ {
		base := start.Add(time.Duration(iv) * interval)
		for _, node := range fleet {
			due := base.Add(node.offset)
			if wait := time.Until(due); wait > time.Millisecond {
				timer.Reset(wait)
				select {
				case <-ctx.Done():
					return iv, lag, errors.Join(errs...)
				case <-timer.C:
				}
			} else if ctx.Err() != nil {
				return iv, lag, errors.Join(errs...)
			}
			lag = max(lag, time.Since(due))
			node.advance(iv, due, interval)
			// A message the server refuses is counted by the sink and in
			// its _node message; the simulation goes on.
			if err := node.sink.Publish(node.snap); err != nil && len(errs) < 10 {
				errs = append(errs, err)
			}
		}
	}
	return count, lag, errors.Join(errs...)
}

func published(fleet []*simNode) uint64 {
	var n uint64
	for _, node := range fleet {
		n += node.sink.Stats().Published
	}
	return n
}

// simHash is a deterministic number for node i's item j.
func simHash(node, item int, what string) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%d/%s", node, item, what)
	return h.Sum64()
}

// newSimNode builds node i of k: gadget g is named gadget-<g> (image
// sim/gadget-<g>:latest, the same on every node) with an ID hashed from
// node and gadget, owned by its own process, with shape.programs programs
// each with two maps of its own; the unowned programs have one map each.
func newSimNode(i, k int, shape simShape, sink *publish.NATSSink) *simNode {
	node := &simNode{
		sink:   sink,
		offset: time.Duration(int64(shape.interval) * int64(i) / int64(k)),
		snap: &state.Snapshot{
			Node: fmt.Sprintf("sim-%d", i), Source: "simulated", GadgetInfo: map[string]state.Gadget{},
			Unowned: state.Row{PIDs: []uint32{}, Comms: []string{}},
		},
	}
	progID := uint32(1)
	prog := func(g *state.Gadget, name, progType string) *state.Row {
		r := &state.Row{
			ProgID: progID, ProgName: name, ProgType: progType,
			Totals: state.Totals{MapMemory: 2 * 4096, MapCount: 2},
			PIDs:   []uint32{}, Comms: []string{}, MapIDs: []uint32{2 * progID, 2*progID + 1},
			Tag: fmt.Sprintf("%016x", simHash(i, int(progID), "tag")),
		}
		if g != nil {
			r.GadgetID, r.GadgetName, r.GadgetImage = g.ID, g.Name, g.Image
			owner := g.Owner
			r.PIDs, r.Comms, r.Loader = []uint32{owner.PID}, []string{owner.Comm}, &owner
		}
		node.rates = append(node.rates, 1000+simHash(i, int(progID), "rate")%100000)
		progID++
		return r
	}
	for range shape.unowned {
		node.snap.Programs = append(node.snap.Programs, prog(nil, fmt.Sprintf("kernel_%d", progID), "tracing"))
	}
	for g := range shape.gadgets {
		name := fmt.Sprintf("gadget-%02d", g)
		gadget := state.Gadget{
			ID: fmt.Sprintf("%011x", simHash(i, g, "gadget")>>20), Name: name, Image: "sim/" + name + ":latest",
			Owner: state.ProcessRef{PID: uint32(1000 + g), Comm: name, Exe: "/usr/bin/" + name},
		}
		node.snap.GadgetInfo[gadget.ID] = gadget
		for p := range shape.programs {
			node.snap.Programs = append(node.snap.Programs, prog(&gadget, fmt.Sprintf("%s_p%d", name, p), "kprobe"))
		}
		owner := gadget.Owner
		node.snap.Gadgets = append(node.snap.Gadgets, state.Row{
			GadgetID: gadget.ID, GadgetName: name, GadgetImage: gadget.Image,
			PIDs: []uint32{owner.PID}, Comms: []string{owner.Comm}, Loader: &owner,
		})
	}
	return node
}

// advance makes the node's snapshot that of interval iv, taken at: every
// program ran rates[p] nanoseconds more, in rates[p]/1000 runs, and the
// gadget rows and the unowned row sum their programs.
func (n *simNode) advance(iv int, at time.Time, interval time.Duration) {
	snap := n.snap
	snap.Time = at
	snap.Elapsed = 0
	if iv > 0 {
		snap.Elapsed = interval
	}
	snap.Counters.Sweeps = uint64(iv + 1)
	snap.SweepDuration = time.Millisecond
	byGadget := make(map[string]*state.Row, len(snap.Gadgets))
	for g := range snap.Gadgets {
		snap.Gadgets[g].Totals = state.Totals{}
		byGadget[snap.Gadgets[g].GadgetID] = &snap.Gadgets[g]
	}
	snap.Unowned.Totals = state.Totals{}
	for p := range snap.Programs {
		r := snap.Programs[p]
		r.RuntimeDelta, r.RuncountDelta = 0, 0
		if iv > 0 {
			r.RuntimeDelta, r.RuncountDelta = n.rates[p], n.rates[p]/1000
		}
		r.Runtime += n.rates[p]
		r.Runcount += n.rates[p] / 1000
		r.CPUPercent = 100 * float64(r.RuntimeDelta) / float64(interval)
		sum := &snap.Unowned
		if r.GadgetID != "" {
			sum = byGadget[r.GadgetID]
		}
		sum.Totals.Add(r.Totals)
		sum.ProgramCount++
	}
}
