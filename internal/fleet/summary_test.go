package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/testutil"
)

// summaryView is a fleet that takes only summaries, as "tracker top" does
// by default.
func summaryView(now func() time.Time) *Fleet {
	f := New("", time.Second, now)
	f.kinds, _ = viewKinds(Options{SubjectPrefix: "bpfstats"})
	return f
}

func TestSummaryGadgetRows(t *testing.T) {
	clock := &fakeClock{t: testTime}
	f := summaryView(clock.now)
	detail, s := simNode(t, "n1", 7, testTime, simShape{gadgets: 3, programs: 2, unowned: 1})
	// Detail messages, even undecodable ones, are not taken: not decoded,
	// not counted.
	for _, m := range detail {
		if err := f.Ingest(m.subject, []byte("not json")); err != nil {
			t.Fatalf("summary view decoded %s: %v", m.subject, err)
		}
	}
	if err := f.Ingest(s.subject, s.data); err != nil {
		t.Fatal(err)
	}
	rows := f.GadgetRows("")
	if len(rows) != 3 || rows[0].GadgetName != "gadget-00" || rows[0].Seq != 7 || rows[0].NodeName != "n1" ||
		rows[0].Runtime != 7000 || rows[0].ProgramCount != 2 || rows[0].Loader.PID != 4242 {
		t.Fatalf("gadget rows from the summary: %+v", rows)
	}
	if st := f.Stats(); st.Accepted != 1 || st.Rejected() != 0 || st.Nodes != 1 {
		t.Fatalf("stats %+v", st)
	}
	// An older summary of the instance is stale; a newer replaces.
	_, old := simNode(t, "n1", 6, testTime, simShape{gadgets: 1})
	if err := f.Ingest(old.subject, old.data); err == nil || f.Stats().Stale != 1 {
		t.Fatalf("stale summary taken: %v", err)
	}
	_, next := simNode(t, "n1", 8, testTime, simShape{gadgets: 1})
	if err := f.Ingest(next.subject, next.data); err != nil {
		t.Fatal(err)
	}
	if rows := f.GadgetRows(""); len(rows) != 1 || rows[0].Seq != 8 {
		t.Fatalf("after seq 8: %+v", rows)
	}
	// The partitioned form of the subject names the same node.
	_, p := simNode(t, "n1", 9, testTime, simShape{gadgets: 2})
	if err := f.Ingest("bpfstats.partitioned.1.n1._summary", p.data); err != nil {
		t.Fatal(err)
	}
	if rows := f.GadgetRows(""); len(rows) != 2 || rows[0].Seq != 9 || f.Stats().Nodes != 1 {
		t.Fatalf("after the partitioned seq 9: %+v", rows)
	}
	for _, bad := range []string{"bpfstats.partitioned.x.n1._summary", "bpfstats.partitioned.1.n1._node"} {
		if err := f.Ingest(bad, p.data); err == nil {
			t.Errorf("%s taken", bad)
		}
	}
}

// A summary's body cannot name another node, claim another type or grow
// the view beyond its caps.
func TestSummaryHostile(t *testing.T) {
	f := summaryView(nil)
	_, s := simNode(t, "real", 1, time.Now(), simShape{gadgets: 1})
	if err := f.Ingest("bpfstats.other._summary", s.data); err != nil {
		t.Fatal(err)
	}
	if rows := f.GadgetRows(""); len(rows) != 1 || rows[0].NodeName != "other" {
		t.Fatalf("node not from the subject: %+v", rows)
	}
	detail, _ := simNode(t, "real", 2, time.Now(), simShape{gadgets: 1})
	if err := f.Ingest("bpfstats.other._summary", detail[0].data); err == nil || f.Stats().RejectedDecode != 1 {
		t.Fatalf("a gadget message on a summary subject: %v %+v", err, f.Stats())
	}
	var m publish.SummaryMessage
	if err := json.Unmarshal(s.data, &m); err != nil {
		t.Fatal(err)
	}
	m.Seq = 3
	for len(m.Gadgets) <= MaxGadgetsPerNode {
		m.Gadgets = append(m.Gadgets, publish.GadgetSummary{Gadget: publish.GadgetIdentity{ID: "x", Name: strings.Repeat("n", 500)}})
	}
	data, _ := json.Marshal(m)
	if err := f.Ingest("bpfstats.other._summary", data); err != nil {
		t.Fatal(err)
	}
	st := f.Stats()
	rows := f.GadgetRows("")
	if len(rows) != MaxGadgetsPerNode || st.DroppedGadgets != 1 || st.CappedLabels != MaxGadgetsPerNode-1 || len(rows[0].GadgetName) > MaxLabelBytes {
		t.Fatalf("caps: %d rows, %+v", len(rows), st)
	}
}

// The view's lag is the age of each node's newest message, in time and
// in the node's intervals.
func TestConsumerLag(t *testing.T) {
	clock := &fakeClock{t: testTime}
	f := summaryView(clock.now)
	for _, node := range []string{"fresh", "late"} {
		_, s := simNode(t, node, 1, testTime, simShape{gadgets: 1})
		if err := f.Ingest(s.subject, s.data); err != nil {
			t.Fatal(err)
		}
	}
	clock.advance(2 * time.Second)
	_, s := simNode(t, "fresh", 2, testTime.Add(1500*time.Millisecond), simShape{gadgets: 1})
	if err := f.Ingest(s.subject, s.data); err != nil {
		t.Fatal(err)
	}
	c := f.Consumer()
	if c.Lag != 2*time.Second || c.LagIntervals != 2 || c.Behind != 1 {
		t.Fatalf("consumer %+v", c)
	}
	var out bytes.Buffer
	if err := f.Render(&out, Options{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "lag=2s lagIntervals=2.00 behind=1 pending=0 slowDrops=0") {
		t.Fatalf("header line lacks the lag: %s", out.String())
	}
}

// connectEmbedded connects to an embedded nats-server of the test's own,
// logging to a log the test watches (returned too).
func connectEmbedded(t *testing.T) (*nats.Conn, zerolog.Logger) {
	t.Helper()
	srv := testutil.StartNATS(t, nil)
	log := testutil.NewLogWatch(t).Logger()
	nc, err := publish.ConnectNATS(publish.ConnOptions{URLs: srv.ClientURL(), FailFast: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, log
}

// Run, by default, follows the summaries alone and prints rows with the
// node's seq and its own lag.
func TestRunFollowsSummaries(t *testing.T) {
	nc, _ := connectEmbedded(t)
	ctx, cancel := context.WithCancel(context.Background())
	out := make(lineWriter, 64)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, nc, Options{JSON: true, Interval: 50 * time.Millisecond}, out) }()
	t.Cleanup(func() { cancel(); <-done })
	timeout := time.After(testutil.Wait)
	for seq := uint64(1); ; seq++ {
		detail, s := simNode(t, "sum-node", seq, time.Now(), simShape{gadgets: 2, programs: 1})
		for _, m := range append(detail, s) {
			if err := nc.Publish(m.subject, m.data); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case line := <-out:
			var p Print[Row]
			if err := json.Unmarshal(line, &p); err != nil {
				t.Fatalf("Run printed %q: %v", line, err)
			}
			if len(p.Rows) == 0 {
				continue
			}
			// Only the summaries were taken: one message per interval.
			if p.Rows[0].Seq == 0 || p.Fleet.Accepted > seq || p.Rows[0].NodeName != "sum-node" || p.Consumer.Dropped != 0 {
				t.Fatalf("print %s", line)
			}
			return
		case <-timeout:
			t.Fatal("Run never printed the node")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Messages the NATS client drops because the view reads too slowly are
// reported in the header line (slowDrops) and the JSON print
// (consumer.dropped), with those still pending.
func TestConsumerReportsSlowDrops(t *testing.T) {
	nc, log := connectEmbedded(t)
	f := summaryView(nil)
	// The view's reader is stuck on the first message until the test ends.
	stuck := make(chan struct{})
	reading := make(chan struct{}, 1)
	ingest := func(subject string, data []byte) error {
		select {
		case reading <- struct{}{}:
		default:
		}
		<-stuck
		return f.Ingest(subject, data)
	}
	subs, err := subscribeSubjects(nc, ingest, log, summarySubjects("bpfstats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(stuck); unsubscribe(subs) })
	for _, sub := range subs {
		if err := sub.SetPendingLimits(2, -1); err != nil {
			t.Fatal(err)
		}
	}
	f.consumer = func() (int, uint64, uint64) {
		pending, dropped := subsPending(subs)
		return pending, dropped, 0
	}
	_, s := simNode(t, "n1", 1, time.Now(), simShape{gadgets: 1})
	publishOnce := func() {
		t.Helper()
		if err := nc.Publish(s.subject, s.data); err != nil {
			t.Fatal(err)
		}
	}
	publishOnce()
	<-reading
	// One being read, at most two pending: the rest are dropped.
	const sent = 10
	for range sent - 1 {
		publishOnce()
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(testutil.Wait)
	for c := f.Consumer(); c.Dropped+uint64(c.Pending) < sent-1; c = f.Consumer() {
		select {
		case <-deadline:
			t.Fatalf("consumer %+v: want the %d messages after the first pending or dropped", c, sent-1)
		case <-time.After(10 * time.Millisecond):
		}
	}
	// The client's own count of what it holds may include the message
	// being read; at most the limit is pending, the rest dropped.
	c := f.Consumer()
	if c.Pending > 2 || c.Dropped < sent-3 {
		t.Fatalf("consumer %+v, want at most 2 pending and at least %d dropped", c, sent-3)
	}
	var table, asJSON bytes.Buffer
	if err := f.Render(&table, Options{}); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("pending=%d slowDrops=%d", c.Pending, c.Dropped); !strings.Contains(table.String(), want) {
		t.Errorf("header line lacks %q: %s", want, table.String())
	}
	if err := f.Render(&asJSON, Options{JSON: true}); err != nil {
		t.Fatal(err)
	}
	var p Print[Row]
	if err := json.Unmarshal(asJSON.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	if p.Consumer.Dropped != c.Dropped || p.Consumer.Pending != c.Pending {
		t.Errorf("JSON consumer %+v, want %+v", p.Consumer, c)
	}
}
