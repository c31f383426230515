package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

// Three servers clustered on loopback, three trackers each on its own
// server: the fleet view on a fourth connection sees all three nodes.
func TestFleetTopSeesThreeNodes(t *testing.T) {
	requireRoot(t)
	testgadget.StartGadget(t, map[string]string{"BPFSTATS_GADGET_NAME": "fleetgadget"}, testgadget.TwoProgramsThreeMaps(false))
	cluster := server.ClusterOpts{Name: "bpfstats-fleet", Host: "127.0.0.1", Port: server.RANDOM_PORT}
	a := testutil.StartNATS(t, &server.Options{ServerName: "a", Cluster: cluster})
	routes := server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d", a.ClusterAddr().Port))
	b := testutil.StartNATS(t, &server.Options{ServerName: "b", Cluster: cluster, Routes: routes})
	c := testutil.StartNATS(t, &server.Options{ServerName: "c", Cluster: cluster, Routes: routes})
	d := testutil.StartNATS(t, &server.Options{ServerName: "d", Cluster: cluster, Routes: routes})

	nodes := []string{"node-a", "node-b", "node-c"}
	for i, srv := range []*server.Server{a, b, c} {
		startDaemon(t, "GADGETID", "--nats-url", srv.ClientURL(), "--node", nodes[i],
			"--metrics-addr", "", "--interval", "200ms", "--print")
	}
	top := startJSON(t, "top", "--nats-url", d.ClientURL(), "--node", "node-*", "-o", "json", "--interval", "200ms")
	top.waitFor(t, "all three nodes with the gadget", func(rows []state.Row) bool {
		var seen []string
		for _, r := range rows {
			if r.GadgetName == "fleetgadget" && r.MapCount == 3 && !slices.Contains(seen, r.NodeName) {
				seen = append(seen, r.NodeName)
			}
		}
		slices.Sort(seen)
		return slices.Equal(seen, nodes)
	})
}

// The daemon survives its NATS server going away and publishes again,
// with counters that kept increasing, once it is back.
func TestDaemonSurvivesNATSRestart(t *testing.T) {
	requireRoot(t)
	port := testutil.FreePort(t)
	srv := testutil.StartNATS(t, &server.Options{Port: port})
	url := srv.ClientURL()
	cmd, stderr := startDaemon(t, "GADGETID", "--nats-url", url, "--node", "restart", "--metrics-addr", "",
		"--interval", "100ms", "--print")

	before := testutil.Decode[publish.NodeMessage](t, testutil.Subscribe(t, url, "bpfstats.restart._node").
		Next(t, "_node", nil))

	srv.Shutdown()
	srv.WaitForShutdown()
	stderr.WaitText(t, "NATS disconnected")
	testutil.StartNATS(t, &server.Options{Port: port})
	stderr.WaitText(t, "NATS reconnected")

	after := testutil.Decode[publish.NodeMessage](t, testutil.Subscribe(t, url, "bpfstats.restart._node").
		Next(t, "_node", nil))
	if after.Sweeps <= before.Sweeps || after.Seq <= before.Seq {
		t.Fatalf("counters did not keep increasing across the outage: before %+v after %+v", before, after)
	}
	if cmd.ProcessState != nil {
		t.Fatalf("daemon exited: %v", cmd.ProcessState)
	}
}

func TestNATSBadInputs(t *testing.T) {
	requireRoot(t)
	// A malformed URL is bad input.
	code, stderr := runChild(t, nil, "run", "--nats-url", "http://127.0.0.1:4222", "--metrics-addr", "")
	if code != 2 || !strings.Contains(stderr, "--nats-url") {
		t.Errorf("bad --nats-url: exit %d %q", code, stderr)
	}
	// Rejected credentials are a clear runtime error.
	srv := testutil.StartNATS(t, &server.Options{Username: "tracker", Password: "right"})
	code, stderr = runChild(t, nil, "run", "--nats-url", srv.ClientURL(), "--nats-user", "tracker",
		"--nats-password", "wrong", "--metrics-addr", "")
	if code != 1 || !strings.Contains(stderr, "authorization") {
		t.Errorf("bad credentials: exit %d %q", code, stderr)
	}
	// A taken port for the embedded server.
	code, stderr = runChild(t, nil, "run", "--nats-listen", strings.TrimPrefix(srv.ClientURL(), "nats://"), "--metrics-addr", "")
	if code != 1 || !strings.Contains(stderr, "address already in use") {
		t.Errorf("embedded server on a taken port: exit %d %q", code, stderr)
	}
	// An unreachable server at start: the tracker keeps tracking and retrying.
	cmd, log := startDaemon(t, "GADGETID", "--nats-url", "nats://"+testutil.FreeAddr(t), "--metrics-addr", "", "--print", "--interval", "100ms")
	log.WaitText(t, "retrying")
	if cmd.ProcessState != nil {
		t.Fatalf("daemon exited with the server unreachable: %s", log)
	}
}

// With --kv, the tracker keeps each gadget's latest message in the
// "bpfstats" bucket, and top's very first print is complete from it.
func TestTopReadsKeyValueFirst(t *testing.T) {
	requireRoot(t)
	testgadget.StartGadget(t, map[string]string{"BPFSTATS_GADGET_NAME": "kvgadget"}, testgadget.TwoProgramsThreeMaps(false))
	natsAddr := testutil.FreeAddr(t)
	startDaemon(t, "kvgadget", "--nats-listen", natsAddr, "--kv", "--node", "kvnode",
		"--metrics-addr", "", "--interval", "1h", "--print")
	// The daemon prints before its asynchronous key-value writes land.
	waitKVGadget(t, "nats://"+natsAddr, "kvnode")
	// The interval is an hour: only the bucket can fill top's first print.
	var out testgadget.SyncBuffer
	err := run(t.Context(), []string{"top", "--nats-url", "nats://" + natsAddr, "--kv", "--node", "kvnode", "--count", "1",
		"--interval", "100ms", "-o", "json"}, &out, &out)
	if err != nil {
		t.Fatalf("top --kv: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), `"gadgetName":"kvgadget"`) || !strings.Contains(out.String(), `"nodeName":"kvnode"`) {
		t.Fatalf("top --kv first print lacks the gadget: %s", out.String())
	}
}

// waitKVGadget waits until the tracker's bucket at url holds the summary
// and a gadget's message of node.
func waitKVGadget(t *testing.T, url, node string) {
	t.Helper()
	nc, err := publish.ConnectNATS(publish.ConnOptions{URLs: url, Name: "bpfstats-kv-test", FailFast: true})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), publish.DefaultKVBucket)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(t.Context(), node+".>")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop() //nolint:errcheck // a watcher of a test
	summary, gadget := false, false
	timeout := time.After(testutil.Wait)
	for !summary || !gadget {
		select {
		case e := <-w.Updates():
			if e == nil {
				continue // the existing keys were delivered
			}
			tok := strings.TrimPrefix(e.Key(), node+".")
			summary = summary || tok == publish.TokenSummary
			gadget = gadget || !strings.HasPrefix(tok, "_")
		case <-timeout:
			t.Fatalf("bucket lacks %s's summary (%v) or a gadget (%v) after %v", node, summary, gadget, testutil.Wait)
		}
	}
}
