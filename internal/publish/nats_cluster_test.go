package publish

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/bpfstats/tracker/internal/state"
)

// lineWriter hands every Write (RunTop writes one JSON array per Write) to
// a channel.
type lineWriter chan []byte

func (w lineWriter) Write(p []byte) (int, error) {
	w <- append([]byte(nil), p...)
	return len(p), nil
}

// TestNATSClusterFleet runs three clustered servers, one tracker sink on
// each, and a RunTop on a fourth connection that must see all three nodes.
func TestNATSClusterFleet(t *testing.T) {
	_, log := newLogWatch(t)
	cluster := server.ClusterOpts{Name: "bpfstats-test", Host: "127.0.0.1", Port: server.RANDOM_PORT}
	a := runServer(t, &server.Options{ServerName: "a", Cluster: cluster})
	routes := server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d", a.ClusterAddr().Port))
	b := runServer(t, &server.Options{ServerName: "b", Cluster: cluster, Routes: routes})
	c := runServer(t, &server.Options{ServerName: "c", Cluster: cluster, Routes: routes})

	nodes := []string{"node-a", "node-b", "node-c"}
	var sinks []*NATSSink
	for i, srv := range []*server.Server{a, b, c} {
		sinks = append(sinks, newTestSink(t, srv.ClientURL(), nodes[i], log, nil))
	}

	nc, err := ConnectNATS(ConnOptions{URLs: b.ClientURL() + "," + c.ClientURL(), Name: "bpfstats-top", FailFast: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithCancel(context.Background())
	out := make(lineWriter, 64)
	done := make(chan error, 1)
	go func() {
		done <- RunTop(ctx, nc, TopOptions{JSON: true, Interval: 50 * time.Millisecond}, out)
	}()

	// The sinks publish every tick, as trackers do, until one print shows
	// all three nodes; interest crosses the routes meanwhile.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(deadline)
	at := testTime
	var last []state.Row
	for seen := false; !seen; {
		select {
		case <-tick.C:
			at = at.Add(time.Second)
			for i, s := range sinks {
				if err := s.Publish(testSnapshot(nodes[i], "gadget-"+nodes[i], at)); err != nil {
					t.Fatalf("%s: %v", nodes[i], err)
				}
			}
		case line := <-out:
			if err := json.Unmarshal(line, &last); err != nil {
				t.Fatalf("RunTop printed %q: %v", line, err)
			}
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
				t.Fatalf("RunTop: %v", err)
			}
			return
		}
	}
}
