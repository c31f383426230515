package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testutil"
)

// lineWriter hands every Write (Run writes one JSON array per Write) to a
// channel.
type lineWriter chan []byte

func (w lineWriter) Write(p []byte) (int, error) {
	w <- append([]byte(nil), p...)
	return len(p), nil
}

// nodeSnapshot is a sweep of node with one gadget of one program.
func nodeSnapshot(node string, at time.Time) *state.Snapshot {
	gadget := state.Gadget{ID: "gadget-" + node, Name: "mygadget", Image: "gadget:latest", Owner: state.ProcessRef{PID: 42}}
	totals := state.Totals{Runtime: 1000, Runcount: 166165, MapMemory: 4096, MapCount: 1}
	prog := state.Row{
		NodeName: node, GadgetID: gadget.ID, GadgetName: gadget.Name, GadgetImage: gadget.Image,
		ProgID: 7, ProgName: "prog", ProgType: "tracepoint", Totals: totals,
		PIDs: []uint32{42}, Comms: []string{"gadget"}, MapIDs: []uint32{3},
	}
	g := prog
	g.ProgID, g.ProgName, g.ProgType = 0, "", ""
	g.ProgramCount = 1
	return &state.Snapshot{
		Time: at, Elapsed: time.Second, Source: "perf",
		Programs:   []*state.Row{&prog},
		Gadgets:    []state.Row{g},
		Unowned:    state.Row{NodeName: node, PIDs: []uint32{}, Comms: []string{}},
		GadgetInfo: map[string]state.Gadget{gadget.ID: gadget},
	}
}

// TestClusterFleet runs three clustered servers, one tracker sink on each,
// and a Run on a fourth connection that must see all three nodes.
func TestClusterFleet(t *testing.T) {
	log := testutil.NewLogWatch(t).Logger()
	cluster := server.ClusterOpts{Name: "bpfstats-test", Host: "127.0.0.1", Port: server.RANDOM_PORT}
	a := testutil.StartNATS(t, &server.Options{ServerName: "a", Cluster: cluster})
	routes := server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d", a.ClusterAddr().Port))
	b := testutil.StartNATS(t, &server.Options{ServerName: "b", Cluster: cluster, Routes: routes})
	c := testutil.StartNATS(t, &server.Options{ServerName: "c", Cluster: cluster, Routes: routes})

	nodes := []string{"node-a", "node-b", "node-c"}
	var sinks []*publish.NATSSink
	for i, srv := range []*server.Server{a, b, c} {
		sink, err := publish.NewNATSSink(publish.NATSOptions{
			Conn: publish.ConnOptions{URLs: srv.ClientURL(), Logger: log},
			Node: nodes[i], Interval: time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sink.Close() })
		sinks = append(sinks, sink)
	}

	nc, err := publish.ConnectNATS(publish.ConnOptions{URLs: b.ClientURL() + "," + c.ClientURL(), Name: "bpfstats-top", FailFast: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithCancel(context.Background())
	out := make(lineWriter, 64)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, nc, Options{JSON: true, NodeGlob: "node-*", Interval: 50 * time.Millisecond}, out)
	}()

	// The sinks publish every tick, as trackers do, until one print shows
	// all three nodes; interest crosses the routes meanwhile.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(testutil.Wait)
	at := testTime
	var last []Row
	for seen := false; !seen; {
		select {
		case <-tick.C:
			at = at.Add(time.Second)
			for i, s := range sinks {
				if err := s.Publish(nodeSnapshot(nodes[i], at)); err != nil {
					t.Fatalf("%s: %v", nodes[i], err)
				}
			}
		case line := <-out:
			var p Print[Row]
			if err := json.Unmarshal(line, &p); err != nil {
				t.Fatalf("Run printed %q: %v", line, err)
			}
			last = p.Rows
			var got []string
			for _, r := range last {
				if r.GadgetID != "gadget-"+r.NodeName || r.ProgID != 0 || r.Runcount != 166165 {
					t.Fatalf("unexpected row %+v", r)
				}
				got = append(got, r.NodeName)
			}
			seen = slices.Equal(got, nodes)
		case <-timeout:
			t.Fatalf("fleet view never showed %v; last print %+v", nodes, last)
		}
	}
	cancel()
	for {
		select {
		case <-out:
		case err := <-done:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			return
		}
	}
}

// A Run started after the trackers shows the whole fleet in its first
// print, from the key-value bucket alone, and no gadget that has ended.
func TestRunReadsKVFirst(t *testing.T) {
	log := testutil.NewLogWatch(t).Logger()
	es, err := publish.StartEmbedded(publish.EmbeddedOptions{Listen: "127.0.0.1:0", JetStream: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(es.Shutdown)
	var sinks []*publish.NATSSink
	for _, node := range []string{"node-a", "node-b"} {
		sink, err := publish.NewNATSSink(publish.NATSOptions{
			Conn: publish.ConnOptions{URLs: es.ClientURL(), Logger: log},
			Node: node, Interval: time.Second, KV: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sink.Close() })
		if err := sink.Publish(nodeSnapshot(node, testTime)); err != nil {
			t.Fatal(err)
		}
		sinks = append(sinks, sink)
	}
	nc, err := publish.ConnectNATS(publish.ConnOptions{URLs: es.ClientURL(), Name: "bpfstats-top", FailFast: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	top := func() []string {
		t.Helper()
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Wait)
		defer cancel()
		// An hour-long interval: only the print after reading the bucket
		// can happen.
		if err := Run(ctx, nc, Options{KV: true, JSON: true, NodeGlob: "node-*", Count: 1, Interval: time.Hour}, &out); err != nil {
			t.Fatalf("Run: %v", err)
		}
		var p Print[Row]
		if err := json.Unmarshal(out.Bytes(), &p); err != nil {
			t.Fatalf("top output %q: %v", out.String(), err)
		}
		if p.Fleet.Rejected() != 0 || p.Fleet.Stale != 0 {
			t.Errorf("a tracker's own messages were refused: %+v", p.Fleet)
		}
		var got []string
		for _, r := range p.Rows {
			got = append(got, r.NodeName+"/"+r.GadgetID)
		}
		return got
	}
	// The sinks write the bucket asynchronously: wait for each node's
	// _summary entry, written after its interval's other entries.
	waitKVSeq(t, nc, "node-a", 1)
	waitKVSeq(t, nc, "node-b", 1)
	if got, want := top(), []string{"node-a/gadget-node-a", "node-b/gadget-node-b"}; !slices.Equal(got, want) {
		t.Fatalf("first print %v, want %v", got, want)
	}

	// node-b's gadget ends.
	ended := nodeSnapshot("node-b", testTime.Add(time.Second))
	ended.Programs, ended.Gadgets = nil, nil
	if err := sinks[1].Publish(ended); err != nil {
		t.Fatal(err)
	}
	waitKVSeq(t, nc, "node-b", 2)
	if got, want := top(), []string{"node-a/gadget-node-a"}; !slices.Equal(got, want) {
		t.Fatalf("print after node-b's gadget ended %v, want %v", got, want)
	}
}

// waitKVSeq waits until the key-value bucket holds node's _summary entry of
// interval seq or later.
func waitKVSeq(t *testing.T, nc *nats.Conn, node string, seq uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Wait)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, publish.DefaultKVBucket)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(ctx, node+"."+publish.TokenSummary)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop() //nolint:errcheck // the test ends
	for {
		select {
		case e := <-w.Updates():
			var h publish.Header
			if e != nil && json.Unmarshal(e.Value(), &h) == nil && h.Seq >= seq {
				return
			}
		case <-ctx.Done():
			t.Fatalf("the bucket never held %s's _summary of seq %d", node, seq)
		}
	}
}
