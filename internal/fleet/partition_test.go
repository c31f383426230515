package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testutil"
)

// partitionedCluster starts three clustered servers, each with the
// subject mapping of deploy/nats/partitions.conf, the file users deploy.
func partitionedCluster(t *testing.T) []*server.Server {
	t.Helper()
	var servers []*server.Server
	var routes []*url.URL
	for _, name := range []string{"a", "b", "c"} {
		opts, err := server.ProcessConfigFile("../../deploy/nats/partitions.conf")
		if err != nil {
			t.Fatalf("loading the deployed mapping: %v", err)
		}
		opts.ServerName = name
		opts.Cluster = server.ClusterOpts{Name: "bpfstats-partitioned", Host: "127.0.0.1", Port: server.RANDOM_PORT}
		opts.Routes = routes
		srv := testutil.StartNATS(t, opts)
		if routes == nil {
			routes = server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d", srv.ClusterAddr().Port))
		}
		servers = append(servers, srv)
	}
	return servers
}

// In a cluster whose servers map summaries into two partitions, every
// node's summaries land in exactly the partition Partition computes,
// whichever server they are published to; two aggregators, one per
// partition on different servers, publish rollups, and top --fleet
// (RunRollups) on the third server prints their merge: the sum over all
// nodes.
func TestPartitionedAggregation(t *testing.T) {
	const nodes, parts = 24, 2
	servers := partitionedCluster(t)
	log := testutil.NewLogWatch(t).Logger()
	connect := func(srv *server.Server, name string) *nats.Conn {
		nc, err := publish.ConnectNATS(publish.ConnOptions{URLs: srv.ClientURL(), Name: name, FailFast: true, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	// Where each node's summaries arrive.
	var mu sync.Mutex
	landed := map[string]map[string]bool{}
	watch := connect(servers[0], "watch")
	if _, err := watch.Subscribe("bpfstats.partitioned.*.*._summary", func(m *nats.Msg) {
		toks := splitSubject(m.Subject)
		mu.Lock()
		defer mu.Unlock()
		if landed[toks[3]] == nil {
			landed[toks[3]] = map[string]bool{}
		}
		landed[toks[3]][toks[2]] = true
	}); err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for p := range parts {
		nc := connect(servers[1+p], "bpfstats-aggregate")
		wg.Go(func() {
			err := Aggregate(ctx, nc, AggregateOptions{Partition: p, Partitions: parts, Interval: 50 * time.Millisecond, Logger: log})
			if err != nil {
				t.Errorf("aggregator %d/%d: %v", p, parts, err)
			}
		})
	}
	prints := make(lineWriter, 64)
	// Runs before the cleanup above: top --fleet may be writing a print
	// no one reads any more.
	t.Cleanup(func() {
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		for {
			select {
			case <-prints:
			case <-done:
				return
			}
		}
	})
	fleetTop := connect(servers[0], "bpfstats-top")
	wg.Go(func() {
		if err := RunRollups(ctx, fleetTop, Options{JSON: true, Interval: 50 * time.Millisecond, Logger: log}, prints); err != nil {
			t.Errorf("top --fleet: %v", err)
		}
	})

	// The nodes publish the same summary (seq 1) every tick, as trackers
	// would their intervals, each node to one of the three servers, until
	// top --fleet prints them all.
	var summaries []msg
	want := map[string]RollupRow{}
	var wantUnowned RollupRow
	for i := range nodes {
		_, s := simNode(t, fmt.Sprintf("sim-%d", i), 1, time.Now(), simShape{gadgets: 3, programs: 1, unowned: 2})
		summaries = append(summaries, s)
		var m publish.SummaryMessage
		if err := unmarshal(s.data, &m); err != nil {
			t.Fatal(err)
		}
		addSummary(want, &wantUnowned, &m)
	}
	var pubs []*nats.Conn
	for _, srv := range servers {
		pubs = append(pubs, connect(srv, "publisher"))
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(testutil.Wait)
	var got FleetPrint
	for len(got.Seen) != parts || got.Nodes != nodes {
		select {
		case <-deadline:
			t.Fatalf("top --fleet never showed %d nodes in %d partitions: %+v", nodes, parts, got)
		case line := <-prints:
			got = FleetPrint{}
			if err := json.Unmarshal(line, &got); err != nil {
				t.Fatalf("top --fleet printed %q: %v", line, err)
			}
		case <-tick.C:
			for i, s := range summaries {
				if err := pubs[i%len(pubs)].Publish(s.subject, s.data); err != nil {
					t.Fatal(err)
				}
			}
		}
	}

	mu.Lock()
	defer mu.Unlock()
	perPartition := map[int]int{}
	for i := range nodes {
		node := fmt.Sprintf("sim-%d", i)
		in := slices.Sorted(maps.Keys(landed[node]))
		if wantP := fmt.Sprint(Partition(node, parts)); !slices.Equal(in, []string{wantP}) {
			t.Errorf("node %s landed in partitions %v, want exactly [%s]", node, in, wantP)
		}
		perPartition[Partition(node, parts)]++
	}
	if got.Misrouted != 0 || got.Rejected != 0 || len(got.Missing) != 0 {
		t.Errorf("merged view: %d summaries of another partition, %d rollups refused, partitions missing %v", got.Misrouted, got.Rejected, got.Missing)
	}
	if perPartition[0] == 0 || perPartition[1] == 0 {
		t.Errorf("a partition got no node: %v", perPartition)
	}
	// CPU percentages are summed in another order: equal up to rounding.
	wantImages := sortedRows(ptrs(want))
	for _, rows := range [][]RollupRow{got.Images, wantImages} {
		for i := range rows {
			rows[i].Totals.CPUPercent = math.Round(rows[i].Totals.CPUPercent*1e6) / 1e6
		}
	}
	if !slices.Equal(got.Images, wantImages) || got.Unowned != wantUnowned {
		t.Errorf("merged rollup\n%+v\nunowned %+v\nwant the sum\n%+v\nunowned %+v", got.Images, got.Unowned, wantImages, wantUnowned)
	}
}

// addSummary adds a summary's gadgets to per-image rows and its unowned
// programs to unowned, as a rollup sums them.
func addSummary(images map[string]RollupRow, unowned *RollupRow, m *publish.SummaryMessage) {
	seen := map[string]bool{}
	for _, g := range m.Gadgets {
		r := images[g.Gadget.Image]
		r.Key = g.Gadget.Image
		if !seen[r.Key] {
			seen[r.Key] = true
			r.Nodes++
		}
		r.Gadgets++
		t := state.Totals(r.Totals)
		t.Add(state.Totals(g.Totals))
		r.Totals = publish.MessageTotals(t)
		images[r.Key] = r
	}
	if m.Unowned.ProgramCount > 0 {
		addRollupRow(unowned, RollupRow{Nodes: 1, Totals: m.Unowned})
	}
}

func ptrs(m map[string]RollupRow) map[string]*RollupRow {
	out := map[string]*RollupRow{}
	for k, v := range m {
		out[k] = &v
	}
	return out
}

func splitSubject(s string) []string {
	var toks []string
	start := 0
	for i := range len(s) {
		if s[i] == '.' {
			toks = append(toks, s[start:i])
			start = i + 1
		}
	}
	return append(toks, s[start:])
}
