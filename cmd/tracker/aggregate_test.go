package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/bpfstats/tracker/internal/fleet"
	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

func TestAggregateBadInputs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"aggregate"}, "--partition"},
		{[]string{"aggregate", "--partition", "2/2"}, "--partition"},
		{[]string{"aggregate", "--partition", "0/0"}, "--partition"},
		{[]string{"aggregate", "--partition", "x"}, "--partition"},
		{[]string{"aggregate", "--partition", "0/2", "--kv"}, "--kv"},
		{[]string{"aggregate", "--partition", "0/2", "--interval", "1ms"}, "--interval"},
		{[]string{"top", "--fleet", "--all"}, "--fleet"},
	} {
		err := run(context.Background(), tc.args, &strings.Builder{}, &strings.Builder{})
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want a usage error about %s", tc.args, err, tc.want)
		}
	}
}

// Two "tracker aggregate" for the two partitions of the deployed mapping,
// and "tracker top --fleet" merging their rollups: every node counted
// once.
func TestAggregateCommands(t *testing.T) {
	opts, err := server.ProcessConfigFile("../../deploy/nats/partitions.conf")
	if err != nil {
		t.Fatal(err)
	}
	srv := testutil.StartNATS(t, opts)
	url := srv.ClientURL()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	for _, p := range []string{"0/2", "1/2"} {
		go func() {
			done <- run(ctx, []string{"aggregate", "--nats-url", url, "--partition", p, "--interval", "100ms"}, &strings.Builder{}, &strings.Builder{})
		}()
	}
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("aggregate: %v", err)
			}
		}
	})
	nc, err := publish.ConnectNATS(publish.ConnOptions{URLs: url, FailFast: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	nodes := []string{"a", "b", "c", "d", "e"}
	deadline := time.Now().Add(testutil.Wait)
	for time.Now().Before(deadline) {
		for _, node := range nodes {
			data, _ := json.Marshal(publish.SummaryMessage{
				NodeMessage: publish.NodeMessage{Header: publish.Header{Schema: publish.SchemaVersion, Type: publish.TypeSummary,
					Seq: 1, Instance: "i", Time: time.Now(), Interval: time.Second}},
				Gadgets: []publish.GadgetSummary{{Gadget: publish.GadgetIdentity{ID: node + "-g", Name: "g", Image: "img"},
					Totals: publish.MessageTotals{Runtime: 10, ProgramCount: 1}}},
			})
			if err := nc.Publish("bpfstats."+node+"._summary", data); err != nil {
				t.Fatal(err)
			}
		}
		var out testgadget.SyncBuffer
		if err := run(t.Context(), []string{"top", "--fleet", "--nats-url", url, "--count", "1", "--interval", "300ms", "-o", "json"}, &out, &out); err != nil {
			t.Fatalf("top --fleet: %v\n%s", err, out.String())
		}
		var p fleet.FleetPrint
		if err := json.Unmarshal([]byte(out.String()), &p); err != nil {
			t.Fatalf("top --fleet printed %q: %v", out.String(), err)
		}
		if len(p.Seen) == 2 && p.Nodes == len(nodes) {
			if len(p.Images) != 1 || p.Images[0].Nodes != 5 || p.Images[0].Totals.Runtime != 50 {
				t.Fatalf("merged images %+v", p.Images)
			}
			return
		}
	}
	t.Fatal("top --fleet never showed both partitions and every node")
}
