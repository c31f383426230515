package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testutil"
)

// is matches one subject exactly.
func is(subject string) func(string) bool {
	return func(s string) bool { return s == subject }
}

var testTime = time.Date(2025, 11, 26, 6, 0, 0, 123456789, time.UTC)

// testSnapshot is a sweep with one unowned program and a gadget of two
// programs sharing a map, as the inventory builds it.
func testSnapshot(node, gadgetID string, at time.Time) *state.Snapshot {
	owner := state.ProcessRef{PID: 4242, Comm: "trace_open", Exe: "/usr/local/bin/trace_open"}
	gadget := state.Gadget{ID: gadgetID, Name: "mytraceopen", Image: "trace_open:latest", Owner: owner}
	prog := func(id uint32, name string, runtime, runcount, mem uint64, maps []uint32) state.Row {
		return state.Row{
			NodeName: node, GadgetID: gadget.ID, GadgetName: gadget.Name, GadgetImage: gadget.Image,
			ProgID: id, ProgName: name, ProgType: "tracepoint",
			Totals: state.Totals{
				Runtime: runtime, Runcount: runcount, MapMemory: mem, MapCount: len(maps),
				RuntimeDelta: runtime / 10, RuncountDelta: runcount / 10, CPUPercent: 0.5,
			},
			PIDs: []uint32{4242}, Comms: []string{"trace_open"},
			Loader: &owner, MapIDs: maps, Tag: fmt.Sprintf("%016x", id),
		}
	}
	p1 := prog(1260, "ig_openat_x", 14944051, 83160, 1615904, []uint32{7, 8})
	p2 := prog(1262, "ig_openat_e", 33097520, 83005, 1098240, []uint32{7})
	unowned := state.Row{
		NodeName: node, ProgID: 2, ProgName: "hid_tail_call", ProgType: "tracing",
		Totals: state.Totals{MapMemory: 8512, MapCount: 1}, PIDs: []uint32{}, Comms: []string{}, MapIDs: []uint32{1},
		Tag: "0000000000000002",
	}
	g := state.Row{
		NodeName: node, GadgetID: gadget.ID, GadgetName: gadget.Name, GadgetImage: gadget.Image,
		Totals: state.Totals{
			Runtime: p1.Runtime + p2.Runtime, Runcount: p1.Runcount + p2.Runcount,
			RuntimeDelta: p1.RuntimeDelta + p2.RuntimeDelta, RuncountDelta: p1.RuncountDelta + p2.RuncountDelta,
			CPUPercent: 1, MapMemory: 1615904, MapCount: 2, ProgramCount: 2,
		},
		PIDs: []uint32{4242}, Comms: []string{"trace_open"}, Loader: &owner, MapIDs: []uint32{7, 8},
	}
	return &state.Snapshot{
		Time:     at,
		Elapsed:  time.Second,
		Source:   "perf",
		Programs: []*state.Row{&unowned, &p1, &p2},
		Gadgets:  []state.Row{g},
		Unowned: state.Row{NodeName: node, Totals: state.Totals{MapMemory: 8512, MapCount: 1, ProgramCount: 1},
			PIDs: []uint32{}, Comms: []string{}, MapIDs: []uint32{1}},
		GadgetInfo:    map[string]state.Gadget{gadget.ID: gadget},
		Counters:      state.Counters{EventsLoad: 5, EventsRelease: 2, EventsLost: 1, Resyncs: 2, Sweeps: 7},
		SweepDuration: 3 * time.Millisecond,
	}
}

func newTestSink(t *testing.T, url, node string, log zerolog.Logger, mod func(*NATSOptions)) *NATSSink {
	t.Helper()
	opts := NATSOptions{
		Conn: ConnOptions{
			URLs: url, Logger: log,
			ReconnectWait: 20 * time.Millisecond, MaxReconnectWait: 200 * time.Millisecond,
		},
		Node:     node,
		Version:  "v0.0.0-test",
		Kernel:   "6.18.0-test",
		Interval: time.Second,
	}
	if mod != nil {
		mod(&opts)
	}
	s, err := NewNATSSink(opts)
	if err != nil {
		t.Fatalf("NewNATSSink: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// decode is testutil.Decode refusing fields the type does not have: the
// messages carry nothing the schema does not declare.
func decode[T any](t *testing.T, m *nats.Msg) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(m.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %s: %v\n%s", m.Subject, err, m.Data)
	}
	return v
}

func logSample(t *testing.T, m *nats.Msg) {
	var buf bytes.Buffer
	json.Indent(&buf, m.Data, "", "  ")
	t.Logf("sample %s:\n%s", m.Subject, buf.String())
}

func TestNATSNodeToken(t *testing.T) {
	for in, want := range map[string]string{
		"node-1":           "node-1",
		"web1.example.com": "web1_example_com",
		"":                 "_",
	} {
		if got := NodeToken(in); got != want {
			t.Errorf("NodeToken(%q) = %q, want %q", in, got, want)
		}
	}
	// Anything else is a hash of the whole name, distinct per name.
	seen := map[string]string{}
	for _, in := range []string{"a*b>c", "a b", "with space\tand\nnl", "ünïcode", strings.Repeat("n", 65), strings.Repeat("n", 66)} {
		got := NodeToken(in)
		if len(got) != 21 || got[0] != 'h' || !plainToken(got) || got != NodeToken(in) {
			t.Errorf("NodeToken(%q) = %q, want h and 20 hex digits", in, got)
		}
		if prev, ok := seen[got]; ok {
			t.Errorf("NodeToken(%q) = NodeToken(%q) = %q", in, prev, got)
		}
		seen[got] = in
	}
	if got := NodeToken(strings.Repeat("n", 64)); got != strings.Repeat("n", 64) {
		t.Errorf("64-byte name made %q", got)
	}
	for in, want := range map[string]string{
		"6bcfcca7a12": "6bcfcca7a12",
		"_node":       "g_node",
		"_unowned":    "g_unowned",
		"a.b":         hashToken("a.b"),
		">":           hashToken(">"),
		"*":           hashToken("*"),
		"ünï":         hashToken("ünï"),
		"a\nb":        hashToken("a\nb"),
		"":            hashToken(""),
	} {
		if got := gadgetToken(in); got != want || !plainToken(got) {
			t.Errorf("gadgetToken(%q) = %q, want %q", in, got, want)
		}
	}
	sink := &NATSSink{node: "n", prefix: "p"}
	if got := sink.GadgetSubject("_node"); got != "p.n.g_node" {
		t.Errorf("GadgetSubject(_node) = %q", got)
	}
	if got := sink.Subject(TokenNode); got != "p.n._node" {
		t.Errorf("Subject(TokenNode) = %q", got)
	}
}

func TestNATSBadURL(t *testing.T) {
	for _, url := range []string{
		"http://127.0.0.1:4222",
		"nats://:4222",
		"nats://127.0.0.1:notaport",
		"nats://127.0.0.1:99999",
		"nats://127.0.0.1:",
		"nats://a:4222,,nats://b:4222",
		"nats://a b:4222",
	} {
		_, err := NewNATSSink(NATSOptions{Conn: ConnOptions{URLs: url}, Node: "n"})
		if err == nil {
			t.Errorf("URL %q accepted", url)
			continue
		}
		if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "NATS URL") {
			t.Errorf("URL %q: error is not one clear line: %q", url, err)
		}
	}
	got, err := ParseURLs("127.0.0.1:4222, tls://h:1,ws://h:8080,wss://h")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"nats://127.0.0.1:4222", "tls://h:1", "ws://h:8080", "wss://h"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseURLs = %q, want %q", got, want)
	}
	if _, err := NewNATSSink(NATSOptions{Conn: ConnOptions{URLs: "nats://127.0.0.1:1"}, SubjectPrefix: "a.*"}); err == nil {
		t.Error("wildcard subject prefix accepted")
	}
}

func TestEmbeddedPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = StartEmbedded(EmbeddedOptions{Listen: l.Addr().String()})
	if err == nil {
		t.Fatal("embedded server started on a port in use")
	}
	if !strings.Contains(err.Error(), "address already in use") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("unclear error: %v", err)
	}
}

// TestEmbeddedNATSSinkMessages publishes a hand-built snapshot and event
// through an embedded server and checks what a plain subscriber receives.
func TestEmbeddedNATSSinkMessages(t *testing.T) {
	log := testutil.NewLogWatch(t).Logger()
	es, err := StartEmbedded(EmbeddedOptions{Listen: "127.0.0.1:0", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(es.Shutdown)
	sub := testutil.Subscribe(t, es.ClientURL(), "bpfstats.>")
	sink := newTestSink(t, es.ClientURL(), "node_a.example", log, nil)
	if !sink.Connected() {
		t.Fatal("not connected to the embedded server")
	}
	node := "node_a_example"
	if sink.Node() != node {
		t.Fatalf("node token %q", sink.Node())
	}

	snap := testSnapshot(node, "6bcfcca7a12", testTime)
	if err := sink.Publish(snap); err != nil {
		t.Fatal(err)
	}
	owner := snap.GadgetInfo["6bcfcca7a12"].Owner
	if len(sink.Instance()) != 16 {
		t.Errorf("instance %q, want 16 hex digits", sink.Instance())
	}
	hdr := Header{Schema: SchemaVersion, Node: node, Seq: 1, Time: testTime, Elapsed: time.Second, Interval: time.Second,
		Instance: sink.Instance(), Part: 1, Parts: 1}

	m := sub.Next(t, "bpfstats.node_a_example.6bcfcca7a12", is("bpfstats.node_a_example.6bcfcca7a12"))
	logSample(t, m)
	gotG := decode[GadgetMessage](t, m)
	wantG := GadgetMessage{
		Header: hdr,
		Gadget: GadgetIdentity{ID: "6bcfcca7a12", Name: "mytraceopen", Image: "trace_open:latest"},
		Owner:  owner,
		Totals: MessageTotals{
			Runtime: 14944051 + 33097520, Runcount: 83160 + 83005,
			RuntimeDelta: 1494405 + 3309752, RuncountDelta: 8316 + 8300,
			CPUPercent: 1, MapMemory: 1615904, MapCount: 2, ProgramCount: 2,
		},
		Programs: rowValues(snap.Programs[1:]),
	}
	wantG.Type = TypeGadget
	if !reflect.DeepEqual(gotG, wantG) {
		t.Errorf("gadget message:\n got %+v\nwant %+v", gotG, wantG)
	}

	m = sub.Next(t, "bpfstats.node_a_example._unowned", is("bpfstats.node_a_example._unowned"))
	logSample(t, m)
	gotU := decode[UnownedMessage](t, m)
	wantU := UnownedMessage{
		Header:   hdr,
		Totals:   MessageTotals{MapMemory: 8512, MapCount: 1, ProgramCount: 1},
		Programs: rowValues(snap.Programs[:1]),
	}
	wantU.Type = TypeUnowned
	if !reflect.DeepEqual(gotU, wantU) {
		t.Errorf("unowned message:\n got %+v\nwant %+v", gotU, wantU)
	}

	m = sub.Next(t, "bpfstats.node_a_example._node", is("bpfstats.node_a_example._node"))
	logSample(t, m)
	gotN := decode[NodeMessage](t, m)
	nodeHdr := hdr
	nodeHdr.Part, nodeHdr.Parts = 0, 0
	wantN := NodeMessage{
		Header:   nodeHdr,
		NodeName: "node_a.example",
		Version:  "v0.0.0-test",
		Kernel:   "6.18.0-test",
		// NATSOptions.CPUs defaults to the machine's.
		CPUs:   runtime.NumCPU(),
		Source: "perf",
		Counts: NodeCounts{
			Programs: 3, Gadgets: 1, Unowned: 1, EventsLoad: 5, EventsRelease: 2, EventsLost: 1,
		},
		Resyncs:       2,
		Sweeps:        7,
		SweepDuration: 3 * time.Millisecond,
		// The publisher's counters as of before this interval.
		Publisher: PublisherStats{},
	}
	wantN.Type = TypeNode
	if wantN.Kernel == "" || !reflect.DeepEqual(gotN, wantN) {
		t.Errorf("node message:\n got %+v\nwant %+v", gotN, wantN)
	}

	// The summary closes the interval: _node's fields, each gadget's
	// identity and totals, the unowned totals.
	m = sub.Next(t, "bpfstats.node_a_example._summary", is("bpfstats.node_a_example._summary"))
	logSample(t, m)
	gotS := decode[SummaryMessage](t, m)
	wantS := SummaryMessage{
		NodeMessage: wantN,
		Gadgets:     []GadgetSummary{{Gadget: wantG.Gadget, OwnerPID: owner.PID, Totals: wantG.Totals}},
		Unowned:     wantU.Totals,
	}
	wantS.Header = hdr
	wantS.Type = TypeSummary
	if !reflect.DeepEqual(gotS, wantS) {
		t.Errorf("summary message:\n got %+v\nwant %+v", gotS, wantS)
	}

	ev := &state.Event{
		Kind: "load", ProgID: 1262, ProgName: "ig_openat_e", ProgType: "tracepoint", Tag: "a04f5eef06a7f555",
		Loader: &owner, Gadget: &state.Gadget{ID: "6bcfcca7a12", Name: "mytraceopen", Image: "trace_open:latest", Owner: owner},
		KernelTime: 123456789012, Time: testTime,
	}
	if err := sink.PublishEvent(ev); err != nil {
		t.Fatal(err)
	}
	m = sub.Next(t, "bpfstats.node_a_example._events", is("bpfstats.node_a_example._events"))
	logSample(t, m)
	gotE := decode[EventMessage](t, m)
	wantE := EventMessage{Schema: SchemaVersion, Type: TypeEvent, Node: node, Event: *ev}
	if !reflect.DeepEqual(gotE, wantE) {
		t.Errorf("event message:\n got %+v\nwant %+v", gotE, wantE)
	}
	if n := sink.PublishErrors(); n != 0 {
		t.Errorf("%d publish errors", n)
	}
	if st := sink.Stats(); st.Published != 5 {
		t.Errorf("published %d messages, want 5", st.Published)
	}
	if err := sink.Close(); err != nil || sink.Connected() {
		t.Errorf("Close: %v, connected %v", err, sink.Connected())
	}
	if err := sink.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestNATSReconnectAfterServerRestart kills the sink's server and starts
// another on the same port.
func TestNATSReconnectAfterServerRestart(t *testing.T) {
	watch := testutil.NewLogWatch(t)
	log := watch.Logger()
	srv := testutil.StartNATS(t, &server.Options{})
	port := srv.Addr().(*net.TCPAddr).Port
	url := srv.ClientURL()
	sub := testutil.Subscribe(t, url, "bpfstats.>")
	sink := newTestSink(t, url, "node-r", log, nil)

	if err := sink.Publish(testSnapshot("node-r", "g1", testTime)); err != nil {
		t.Fatal(err)
	}
	before := decode[GadgetMessage](t, sub.Next(t, "bpfstats.node-r.g1", is("bpfstats.node-r.g1")))

	mark := watch.Len()
	srv.Shutdown()
	srv.WaitForShutdown()
	watch.WaitMessage(t, mark, "NATS disconnected, reconnecting")
	if sink.Connected() {
		t.Fatal("Connected() with the server down")
	}
	if err := sink.Publish(testSnapshot("node-r", "g1", testTime.Add(time.Second))); err != nil {
		t.Fatalf("Publish while disconnected: %v", err)
	}
	if st := sink.Stats(); st.SkippedIntervals != 1 || st.PublishErrors != 0 {
		t.Fatalf("while disconnected: %+v, want one skipped interval and no errors", st)
	}

	testutil.StartNATS(t, &server.Options{Port: port})
	watch.WaitMessage(t, mark, "NATS reconnected")
	if !sink.Connected() {
		t.Fatal("not Connected() after the reconnect handler ran")
	}
	// Publish once per tick, as the tracker does, until the subscriber
	// (reconnecting on its own) receives an interval after the restart.
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		at := testTime.Add(2 * time.Second)
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				at = at.Add(time.Second)
				if err := sink.Publish(testSnapshot("node-r", "g1", at)); err != nil {
					t.Errorf("Publish after reconnect: %v", err)
					return
				}
			}
		}
	}()
	defer func() { close(done); <-stopped }()
	for {
		got := decode[GadgetMessage](t, sub.Next(t, "bpfstats.node-r.g1 after the restart", is("bpfstats.node-r.g1")))
		if got.Seq > before.Seq && got.Time.After(testTime.Add(2*time.Second)) {
			break
		}
	}
	if st := sink.Stats(); st.Reconnects != 1 || st.PublishErrors != 0 {
		t.Errorf("after reconnect: %+v", st)
	}
}

// TestNATSUnreachableAtStart starts the sink before its server.
func TestNATSUnreachableAtStart(t *testing.T) {
	watch := testutil.NewLogWatch(t)
	log := watch.Logger()
	port := testutil.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	sink := newTestSink(t, url, "node-u", log, nil)
	watch.WaitMessage(t, 0, "NATS server unreachable at start, retrying in the background")
	if sink.Connected() {
		t.Fatal("Connected() without a server")
	}
	if err := sink.Publish(testSnapshot("node-u", "g1", testTime)); err != nil {
		t.Fatalf("Publish before connecting: %v", err)
	}
	if st := sink.Stats(); st.SkippedIntervals != 1 || st.Published != 0 {
		t.Fatalf("before connecting: %+v", st)
	}

	testutil.StartNATS(t, &server.Options{Port: port})
	watch.WaitMessage(t, 0, "NATS connected")
	if !sink.Connected() {
		t.Fatal("not Connected() after the connect handler ran")
	}
	sub := testutil.Subscribe(t, url, "bpfstats.node-u.>")
	if err := sink.Publish(testSnapshot("node-u", "g1", testTime.Add(time.Second))); err != nil {
		t.Fatal(err)
	}
	got := decode[GadgetMessage](t, sub.Next(t, "bpfstats.node-u.g1", is("bpfstats.node-u.g1")))
	if !got.Time.Equal(testTime.Add(time.Second)) {
		t.Errorf("got the interval of %s", got.Time)
	}
}

// TestNATSBadCredentials connects to a server with password auth.
func TestNATSBadCredentials(t *testing.T) {
	srv := testutil.StartNATS(t, &server.Options{Username: "tracker", Password: "s3cret"})
	for _, pw := range []string{"wrong", ""} {
		log := testutil.NewLogWatch(t).Logger()
		_, err := NewNATSSink(NATSOptions{
			Conn: ConnOptions{URLs: srv.ClientURL(), User: "tracker", Password: pw, Logger: log},
			Node: "node-c",
		})
		if !errors.Is(err, nats.ErrAuthorization) || !strings.Contains(err.Error(), "authorization violation") {
			t.Errorf("password %q: error %v, want an authorization violation", pw, err)
		}
	}
	log := testutil.NewLogWatch(t).Logger()
	sink := newTestSink(t, srv.ClientURL(), "node-c", log, func(o *NATSOptions) {
		o.Conn.User, o.Conn.Password = "tracker", "s3cret"
	})
	if !sink.Connected() {
		t.Fatal("right password: not connected")
	}
	if _, err := NewNATSSink(NATSOptions{Conn: ConnOptions{URLs: srv.ClientURL(), CredsFile: "/nonexistent.creds"}}); err == nil ||
		!strings.Contains(err.Error(), "credentials file") {
		t.Errorf("missing creds file: %v", err)
	}
	if _, err := NewNATSSink(NATSOptions{Conn: ConnOptions{URLs: srv.ClientURL(), TLSCertFile: "/nonexistent.pem"}}); err == nil {
		t.Error("client certificate without key accepted")
	}
}

// TestEmbeddedNATSKV checks that the bucket holds the latest message of
// every gadget, the node and the unowned set, and forgets ended gadgets.
func TestEmbeddedNATSKV(t *testing.T) {
	log := testutil.NewLogWatch(t).Logger()
	es, err := StartEmbedded(EmbeddedOptions{Listen: "127.0.0.1:0", JetStream: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(es.Shutdown)
	sink := newTestSink(t, es.ClientURL(), "node-kv", log, func(o *NATSOptions) { o.KV = true })

	snap := testSnapshot("node-kv", "g1", testTime)
	second := testSnapshot("node-kv", "g2", testTime)
	snap.Gadgets = append(snap.Gadgets, second.Gadgets...)
	snap.Programs = append(snap.Programs, second.Programs[1:]...)
	snap.GadgetInfo["g2"] = second.GadgetInfo["g2"]
	if err := sink.Publish(snap); err != nil {
		t.Fatal(err)
	}
	waitKV(t, sink)

	kv := openKVBucket(t, es.ClientURL())
	// Every gadget, _unowned and the summary have their key, so that a
	// consumer starting later reads the whole node from the bucket alone.
	keys := func() []string {
		t.Helper()
		lister, err := kv.ListKeys(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for k := range lister.Keys() {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return keys
	}
	if got, want := keys(), []string{"node-kv._summary", "node-kv._unowned", "node-kv.g1", "node-kv.g2"}; !slices.Equal(got, want) {
		t.Fatalf("keys %v, want %v", got, want)
	}
	if st, err := kv.Status(context.Background()); err != nil || st.TTL() != time.Duration(DefaultFullEvery+3)*time.Second {
		t.Errorf("bucket status %v, %v; want TTL of FullEvery plus three intervals", st, err)
	}
	e, err := kv.Get(context.Background(), "node-kv.g2")
	if err != nil {
		t.Fatal(err)
	}
	if g := decode[GadgetMessage](t, &nats.Msg{Subject: e.Key(), Data: e.Value()}); g.Gadget.Name != "mytraceopen" {
		t.Errorf("key node-kv.g2 holds %+v", g)
	}

	// g2 ends: its key goes, and the view shows g1 alone.
	if err := sink.Publish(testSnapshot("node-kv", "g1", testTime.Add(time.Second))); err != nil {
		t.Fatal(err)
	}
	waitKV(t, sink)
	if _, err := kv.Get(context.Background(), "node-kv.g2"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("key of an ended gadget: %v", err)
	}
	if got, want := keys(), []string{"node-kv._summary", "node-kv._unowned", "node-kv.g1"}; !slices.Equal(got, want) {
		t.Fatalf("keys after g2 ended %v, want %v", got, want)
	}
	if n := sink.PublishErrors(); n != 0 {
		t.Errorf("%d publish errors", n)
	}
}

func TestNATSKVWithoutJetStream(t *testing.T) {
	watch := testutil.NewLogWatch(t)
	log := watch.Logger()
	srv := testutil.StartNATS(t, &server.Options{})
	sink := newTestSink(t, srv.ClientURL(), "node-nojs", log, func(o *NATSOptions) {
		o.KV = true
		o.KVTimeout = 500 * time.Millisecond
	})
	sub := testutil.Subscribe(t, srv.ClientURL(), "bpfstats.>")
	// The plain messages still go out; the bucket error is returned,
	// counted and logged once.
	if err := sink.Publish(testSnapshot("node-nojs", "g1", testTime)); err == nil {
		t.Error("no error without JetStream")
	}
	sub.Next(t, "bpfstats.node-nojs._node", is("bpfstats.node-nojs._node"))
	watch.WaitMessage(t, 0, "NATS key-value bucket unavailable, retrying every interval")
	if sink.PublishErrors() != 1 {
		t.Errorf("PublishErrors = %d, want 1", sink.PublishErrors())
	}
}

func TestNATSBackoff(t *testing.T) {
	base, ceiling := 250*time.Millisecond, 4*time.Second
	for attempts := 0; attempts < 100; attempts++ {
		d := backoff(base, ceiling, attempts)
		lo := min(base<<min(max(attempts-1, 0), 5), ceiling) / 2
		if d < lo || d > ceiling {
			t.Fatalf("attempt %d: delay %s outside [%s, %s]", attempts, d, lo, ceiling)
		}
	}
}

// The metrics read the sink's state at scrape time.
var _ NATSStatus = (*NATSSink)(nil)

// waitKV waits until the sink's key-value writes were acknowledged (or
// failed).
func waitKV(t *testing.T, s *NATSSink) {
	t.Helper()
	s.mu.Lock()
	w := s.kv
	s.mu.Unlock()
	if w == nil {
		t.Fatal("key-value bucket not open")
	}
	select {
	case <-w.js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		t.Fatalf("%d key-value writes still in flight after 10s", w.js.PublishAsyncPending())
	}
}

// openKVBucket connects to url and opens the tracker's key-value bucket
// for the test to read, until the test ends.
func openKVBucket(t *testing.T, url string) jetstream.KeyValue {
	t.Helper()
	nc, err := ConnectNATS(ConnOptions{URLs: url, Name: "bpfstats-kv-reader", FailFast: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), DefaultKVBucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// rowValues copies the rows rows points to.
func rowValues(rows []*state.Row) []state.Row {
	v := make([]state.Row, len(rows))
	for i, r := range rows {
		v[i] = *r
	}
	return v
}
