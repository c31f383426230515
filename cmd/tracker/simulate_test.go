package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/testutil"
)

// strict decodes a message refusing fields T does not have.
func strict[T any](t *testing.T, m *nats.Msg) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(m.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %s: %v: %.300s", m.Subject, err, m.Data)
	}
	return v
}

// simNodeSeen is what a subscriber received of one simulated node.
type simNodeSeen struct {
	summaries []publish.SummaryMessage
	// gadgets are the gadget messages by seq, then gadget ID.
	gadgets map[uint64]map[string]publish.GadgetMessage
	unowned map[uint64]publish.UnownedMessage
	nodes   map[uint64]publish.NodeMessage
}

// collectSim reads sub until every one of k nodes sent its summary of seq
// last, checking that the summary closes each node's interval.
func collectSim(t *testing.T, sub *testutil.Subscription, k int, last uint64) ([]string, map[string]*simNodeSeen) {
	t.Helper()
	seen := map[string]*simNodeSeen{}
	var order []string
	for done := 0; done < k; {
		m := sub.Next(t, "simulated message", nil)
		tok := strings.Split(m.Subject, ".")
		node := tok[1]
		s := seen[node]
		if s == nil {
			s = &simNodeSeen{gadgets: map[uint64]map[string]publish.GadgetMessage{},
				unowned: map[uint64]publish.UnownedMessage{}, nodes: map[uint64]publish.NodeMessage{}}
			seen[node] = s
		}
		switch tok[2] {
		case publish.TokenSummary:
			sum := strict[publish.SummaryMessage](t, m)
			if _, ok := s.nodes[sum.Seq]; !ok || len(s.gadgets[sum.Seq]) != len(sum.Gadgets) {
				t.Fatalf("%s: summary of seq %d before its interval's other messages", node, sum.Seq)
			}
			s.summaries = append(s.summaries, sum)
			if sum.Seq == 1 {
				order = append(order, node)
			}
			if sum.Seq == last {
				done++
			}
		case publish.TokenNode:
			n := strict[publish.NodeMessage](t, m)
			s.nodes[n.Seq] = n
		case publish.TokenUnowned:
			u := strict[publish.UnownedMessage](t, m)
			s.unowned[u.Seq] = u
		default:
			g := strict[publish.GadgetMessage](t, m)
			if s.gadgets[g.Seq] == nil {
				s.gadgets[g.Seq] = map[string]publish.GadgetMessage{}
			}
			s.gadgets[g.Seq][g.Gadget.ID] = g
		}
	}
	return order, seen
}

func runSim(t *testing.T, url string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, append([]string{"simulate", "--nats-url", url, "--interval", "100ms"}, args...), &stdout, &stderr)
	if err != nil {
		t.Fatalf("simulate: %v\n%s", err, stderr.String())
	}
	return stdout.String()
}

// Fifty simulated nodes for two intervals: every node's gadget, _unowned,
// _node and _summary messages arrive, each node with its own seq and
// instance, at its own offset, with counters that grow; a node is the
// same in every run.
func TestSimulate(t *testing.T) {
	srv := testutil.StartNATS(t, &server.Options{})
	sub := testutil.Subscribe(t, srv.ClientURL(), "bpfstats.>")
	const k = 50
	out := runSim(t, srv.ClientURL(), "--nodes", fmt.Sprint(k), "--count", "2")
	if want := fmt.Sprintf("simulated %d nodes for 2 intervals, published %d messages", k, k*2*23); !strings.HasPrefix(out, want) {
		t.Errorf("output %q, want %q...", out, want)
	}
	order, seen := collectSim(t, sub, k, 2)
	instances := map[string]bool{}
	var first time.Time
	for i := range k {
		name := fmt.Sprintf("sim-%d", i)
		s := seen[name]
		if order[i] != name || s == nil || len(s.summaries) != 2 {
			t.Fatalf("node %d: %s first, %+v", i, order[i], s)
		}
		one, two := s.summaries[0], s.summaries[1]
		if one.Seq != 1 || two.Seq != 2 || one.Instance != two.Instance || instances[one.Instance] ||
			one.NodeName != name || one.Counts.Gadgets != 20 || one.Counts.Programs != 130 || one.Unowned.ProgramCount != 30 {
			t.Fatalf("%s: summaries %+v, %+v", name, one.NodeMessage, two.NodeMessage)
		}
		instances[one.Instance] = true
		// Node i publishes i/k of the interval after node 0.
		if i == 0 {
			first = one.Time
		} else if d := one.Time.Sub(first); d != time.Duration(i)*100*time.Millisecond/k {
			t.Errorf("%s publishes %v after sim-0", name, d)
		}
		for g := range one.Gadgets {
			a, b := one.Gadgets[g], two.Gadgets[g]
			if a.Gadget != b.Gadget || a.Totals.ProgramCount != 5 || b.Totals.Runtime <= a.Totals.Runtime ||
				b.Totals.Runcount <= a.Totals.Runcount || b.Totals.RuntimeDelta == 0 || a.OwnerPID == 0 {
				t.Errorf("%s gadget %d: %+v then %+v", name, g, a, b)
			}
			msgs := [2]publish.GadgetMessage{s.gadgets[1][a.Gadget.ID], s.gadgets[2][a.Gadget.ID]}
			if len(msgs[0].Programs) != 5 || len(msgs[1].Programs) != 5 || msgs[1].Totals != b.Totals {
				t.Fatalf("%s gadget %s messages: %+v", name, a.Gadget.ID, msgs)
			}
			for p := range msgs[0].Programs {
				if r1, r2 := msgs[0].Programs[p], msgs[1].Programs[p]; r1.ProgID != r2.ProgID || r2.Runtime <= r1.Runtime || r1.ProgName == "" {
					t.Errorf("%s program %d: %+v then %+v", name, p, r1, r2)
				}
			}
		}
		if u := s.unowned[2]; len(u.Programs) != 30 || u.Totals != two.Unowned {
			t.Errorf("%s unowned: %d programs, totals %+v", name, len(u.Programs), u.Totals)
		}
	}

	// Deterministic: another run's sim-1 has the same gadgets and numbers.
	sub = testutil.Subscribe(t, srv.ClientURL(), "bpfstats.sim-1._summary")
	runSim(t, srv.ClientURL(), "--nodes", "2", "--count", "1", "--summary-only")
	again := strict[publish.SummaryMessage](t, sub.Next(t, "sim-1 summary", nil))
	if want := seen["sim-1"].summaries[0]; !reflect.DeepEqual(again.Gadgets, want.Gadgets) || again.Unowned != want.Unowned {
		t.Errorf("sim-1 differs between runs:\n%+v\n%+v", again.Gadgets, want.Gadgets)
	}
}

func TestSimulateBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"simulate"},
		{"simulate", "--nodes", "0"},
		{"simulate", "--nodes", "2", "--conns", "3"},
		{"simulate", "--nodes", "2", "--interval", "1ms"},
		{"simulate", "--nodes", "2", "--gadgets", "-1"},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), args, &bytes.Buffer{}, &stderr)
		if exitCode(err, &stderr) != 2 {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}
