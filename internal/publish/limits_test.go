package publish

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testutil"
)

// bigSnapshot is a sweep with gadgets of the given IDs (each with
// perGadget programs) and unowned programs, built directly: rows as the
// inventory makes them, without a kernel.
func bigSnapshot(node string, ids []string, perGadget, unowned int, at time.Time) *state.Snapshot {
	snap := &state.Snapshot{
		Time: at, Elapsed: time.Second, Source: "perf",
		GadgetInfo: map[string]state.Gadget{},
		Unowned:    state.Row{NodeName: node, PIDs: []uint32{}, Comms: []string{}},
	}
	progID := uint32(100)
	row := func(g state.Gadget, loader *state.ProcessRef) state.Row {
		progID++
		return state.Row{
			NodeName: node, GadgetID: g.ID, GadgetName: g.Name, GadgetImage: g.Image,
			ProgID: progID, ProgName: fmt.Sprintf("prog_%d", progID), ProgType: "tracepoint",
			Totals: state.Totals{Runtime: uint64(progID) * 1000, Runcount: uint64(progID), MapMemory: 4096, MapCount: 2,
				RuntimeDelta: 100, RuncountDelta: 1, CPUPercent: 0.01},
			PIDs: []uint32{4242}, Comms: []string{"loader"}, Loader: loader,
			MapIDs: []uint32{progID, progID + 1}, Tag: fmt.Sprintf("%016x", progID),
		}
	}
	for i, id := range ids {
		owner := state.ProcessRef{PID: uint32(4242 + i), Comm: "loader", Exe: "/usr/bin/loader"}
		g := state.Gadget{ID: id, Name: "name-" + id, Image: "image:" + id, Owner: owner}
		snap.GadgetInfo[id] = g
		grow := state.Row{NodeName: node, GadgetID: id, GadgetName: g.Name, GadgetImage: g.Image,
			PIDs: []uint32{owner.PID}, Comms: []string{"loader"}, Loader: &owner}
		for range perGadget {
			r := row(g, &owner)
			snap.Programs = append(snap.Programs, &r)
			grow.Totals.Add(r.Totals)
			grow.ProgramCount++
		}
		snap.Gadgets = append(snap.Gadgets, grow)
	}
	for range unowned {
		r := row(state.Gadget{}, nil)
		snap.Programs = append(snap.Programs, &r)
		snap.Unowned.Totals.Add(r.Totals)
		snap.Unowned.ProgramCount++
	}
	return snap
}

// partMsg is what a test reads of a gadget or _unowned part.
type partMsg struct {
	Header
	Gadget   GadgetIdentity `json:"gadget"`
	Totals   MessageTotals  `json:"totals"`
	Programs []state.Row    `json:"programs"`
}

// interval is what a subscriber received of one seq, by subject.
type interval struct {
	parts map[string][]partMsg
	// sizes are the parts' sizes in bytes.
	sizes   map[string][]int
	node    *NodeMessage
	summary []SummaryMessage
}

// collectIntervals reads sub until the last _summary part of seq last
// arrived (the interval's last message),
// checking every message against limit, and returns the intervals by seq.
func collectIntervals(t *testing.T, sub *testutil.Subscription, node string, last uint64, limit int) map[uint64]*interval {
	t.Helper()
	got := map[uint64]*interval{}
	for {
		m := sub.Next(t, fmt.Sprintf("interval %d", last), func(s string) bool { return strings.HasPrefix(s, "bpfstats."+node+".") })
		if len(m.Data) > limit {
			t.Fatalf("%s: %d bytes, over max_payload %d", m.Subject, len(m.Data), limit)
		}
		var h Header
		if err := json.Unmarshal(m.Data, &h); err != nil {
			t.Fatalf("%s: %v", m.Subject, err)
		}
		iv := got[h.Seq]
		if iv == nil {
			iv = &interval{parts: map[string][]partMsg{}, sizes: map[string][]int{}}
			got[h.Seq] = iv
		}
		switch h.Type {
		case TypeNode:
			n := decode[NodeMessage](t, m)
			iv.node = &n
			continue
		case TypeSummary:
			iv.summary = append(iv.summary, decode[SummaryMessage](t, m))
			if h.Seq == last && h.Part == h.Parts {
				return got
			}
			continue
		}
		iv.parts[m.Subject] = append(iv.parts[m.Subject], testutil.Decode[partMsg](t, m))
		iv.sizes[m.Subject] = append(iv.sizes[m.Subject], len(m.Data))
	}
}

// checkParts checks that parts are one whole message: parts 1..n in order,
// the same seq, instance and totals, and returns the program IDs in them.
func checkParts(t *testing.T, subject string, parts []partMsg, instance string) []uint32 {
	t.Helper()
	var ids []uint32
	for i, p := range parts {
		if p.Part != i+1 || p.Parts != len(parts) || p.Instance != instance || p.Totals != parts[0].Totals || p.Gadget != parts[0].Gadget {
			t.Fatalf("%s: part %d of %d (instance %q, totals %+v), message %d of %d", subject, p.Part, p.Parts,
				p.Instance, p.Totals, i+1, len(parts))
		}
		for _, r := range p.Programs {
			ids = append(ids, r.ProgID)
		}
	}
	return ids
}

// wantIDs are the program IDs of snap by gadget ID ("" for unowned).
func wantIDs(snap *state.Snapshot) map[string][]uint32 {
	want := map[string][]uint32{}
	for _, r := range snap.Programs {
		want[r.GadgetID] = append(want[r.GadgetID], r.ProgID)
	}
	return want
}

// TestNATSPartsFitMaxPayload publishes a 5000-program gadget and 5000
// unowned programs for three intervals, to a stock nats-server (1 MiB
// max_payload), the embedded server (8 MiB) and a server with a 64 KiB
// max_payload, and checks that every program arrives in every interval,
// in parts of at most DefaultMaxMessageBytes (or max_payload when
// smaller) packed to more than half of that; with MaxMessageBytes past
// max_payload, parts are packed to max_payload.
func TestNATSPartsFitMaxPayload(t *testing.T) {
	embedded := func(t *testing.T) string {
		es, err := StartEmbedded(EmbeddedOptions{Listen: "127.0.0.1:0", Logger: testutil.NewLogWatch(t).Logger()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(es.Shutdown)
		return es.ClientURL()
	}
	for _, c := range []struct {
		name  string
		start func(t *testing.T) string
		limit int
		// maxMessage is NATSOptions.MaxMessageBytes, bound the size of
		// the largest part.
		maxMessage, bound int
	}{
		{"standalone", func(t *testing.T) string { return testutil.StartStandaloneNATS(t).URL }, 1 << 20, 0, DefaultMaxMessageBytes},
		{"embedded", embedded, 8 << 20, 0, DefaultMaxMessageBytes},
		{"embedded, max_payload parts", embedded, 8 << 20, 1 << 30, 8 << 20},
		{"64KiB", func(t *testing.T) string {
			return testutil.StartNATS(t, &server.Options{MaxPayload: 64 << 10}).ClientURL()
		}, 64 << 10, 0, 64 << 10},
	} {
		t.Run(c.name, func(t *testing.T) {
			url := c.start(t)
			sub := testutil.Subscribe(t, url, "bpfstats.>")
			sink := newTestSink(t, url, "big", testutil.NewLogWatch(t).Logger(), func(o *NATSOptions) { o.MaxMessageBytes = c.maxMessage })
			if got := sink.conn.Load().nc.MaxPayload(); got != int64(c.limit) {
				t.Fatalf("server max_payload %d, want %d", got, c.limit)
			}
			snap := bigSnapshot("big", []string{"g1"}, 5000, 5000, testTime)
			for i := range 3 {
				snap.Time = testTime.Add(time.Duration(i) * time.Second)
				if err := sink.Publish(snap); err != nil {
					t.Fatalf("interval %d: %v", i+1, err)
				}
			}
			got := collectIntervals(t, sub, "big", 3, c.bound)
			want := wantIDs(snap)
			for seq := uint64(1); seq <= 3; seq++ {
				iv := got[seq]
				if iv == nil || iv.node == nil {
					t.Fatalf("interval %d incomplete", seq)
				}
				g := checkParts(t, "g1", iv.parts["bpfstats.big.g1"], sink.Instance())
				u := checkParts(t, "_unowned", iv.parts["bpfstats.big._unowned"], sink.Instance())
				if !slices.Equal(g, want["g1"]) || !slices.Equal(u, want[""]) {
					t.Errorf("interval %d: %d gadget and %d unowned programs, want 5000 and 5000 in order", seq, len(g), len(u))
				}
				if tot := iv.parts["bpfstats.big.g1"][0].Totals; tot.ProgramCount != 5000 {
					t.Errorf("interval %d: gadget totals %+v", seq, tot)
				}
				for _, subject := range []string{"bpfstats.big.g1", "bpfstats.big._unowned"} {
					sizes := iv.sizes[subject]
					for i, n := range sizes[:len(sizes)-1] {
						if n <= c.bound/2 {
							t.Errorf("interval %d: %s part %d of %d has %d bytes: not packed to %d", seq, subject, i+1, len(sizes), n, c.bound)
						}
					}
				}
				t.Logf("interval %d: gadget in %d parts, unowned in %d", seq,
					len(iv.parts["bpfstats.big.g1"]), len(iv.parts["bpfstats.big._unowned"]))
			}
			if n := sink.PublishErrors(); n != 0 {
				t.Errorf("%d publish errors", n)
			}
		})
	}
}

// hugeRowSnapshot is a 50-program gadget whose eighth row has 2000 holder
// PIDs (about 14 KB), and an offline sink to encode it.
func hugeRowSnapshot() (*state.Snapshot, *state.Row, *NATSSink) {
	snap := bigSnapshot("node_a", []string{"g1"}, 50, 0, testTime)
	huge := snap.Programs[7]
	for i := range 2000 {
		huge.PIDs = append(huge.PIDs, uint32(100000+i))
	}
	return snap, huge, offlineSink("node_a", 1, "i")
}

// TestNATSOversizedRow drops the one row that cannot fit a message and
// keeps every other.
func TestNATSOversizedRow(t *testing.T) {
	snap, huge, sink := hugeRowSnapshot()
	const limit = 4096
	msgs, err := sink.encodeInterval(snap, limit, false, nil)
	if err == nil || !strings.Contains(err.Error(), "1 program rows or messages left out") {
		t.Errorf("error %v, want one row left out", err)
	}
	if n := sink.PublishErrors(); n != 1 {
		t.Errorf("PublishErrors = %d, want 1", n)
	}
	var ids []uint32
	var parts []partMsg
	for _, m := range msgs {
		if len(m.data) > limit {
			t.Errorf("%s: %d bytes", m.subject, len(m.data))
		}
		if m.subject != sink.Subject("g1") {
			continue
		}
		var p partMsg
		if err := json.Unmarshal(m.data, &p); err != nil {
			t.Fatalf("%v: %s", err, m.data)
		}
		if m.tok != "g1" || m.part != len(parts)+1 {
			t.Errorf("part %d: token %q part %d", len(parts)+1, m.tok, m.part)
		}
		parts = append(parts, p)
	}
	ids = checkParts(t, "g1", parts, "i")
	want := slices.DeleteFunc(wantIDs(snap)["g1"], func(id uint32) bool { return id == huge.ProgID })
	if len(parts) < 2 || !slices.Equal(ids, want) {
		t.Errorf("%d parts with %v, want all but %d", len(parts), ids, huge.ProgID)
	}
}

// TestNATSRowLargerThanPart sends a row too large for a part of
// MaxMessageBytes, but within max_payload, in a part of its own, and
// packs every other part to MaxMessageBytes.
func TestNATSRowLargerThanPart(t *testing.T) {
	snap, huge, sink := hugeRowSnapshot()
	const part, limit = 4096, 64 << 10
	sink.opts.MaxMessageBytes = part
	msgs, err := sink.encodeInterval(snap, limit, false, nil)
	if err != nil || sink.PublishErrors() != 0 {
		t.Fatalf("error %v, %d publish errors; want none", err, sink.PublishErrors())
	}
	var parts []partMsg
	for _, m := range msgs {
		if m.subject != sink.Subject("g1") {
			continue
		}
		var p partMsg
		if err := json.Unmarshal(m.data, &p); err != nil {
			t.Fatalf("%v: %s", err, m.data)
		}
		parts = append(parts, p)
		alone := len(p.Programs) == 1 && p.Programs[0].ProgID == huge.ProgID
		if len(m.data) > limit || (len(m.data) > part) != alone {
			t.Errorf("part %d: %d bytes with %d programs (the large row alone: %v)", len(parts), len(m.data), len(p.Programs), alone)
		}
	}
	if ids := checkParts(t, "g1", parts, "i"); !slices.Equal(ids, wantIDs(snap)["g1"]) {
		t.Errorf("%d parts with %v, want every program in order", len(parts), ids)
	}
}

// hostileIDs are gadget IDs no subject token can hold as they are.
var hostileIDs = []string{strings.Repeat("x", 5000), "a.b", ">", "*", "ünïcödé", "new\nline", "_node", "esc\x1b[31mred"}

// TestNATSHostileGadgetIDs publishes gadgets with hostile IDs next to a
// plain one on a stock nats-server: all of them arrive every interval on
// tokens that cannot collide with reserved ones, with capped clean labels,
// and the connection stays up.
func TestNATSHostileGadgetIDs(t *testing.T) {
	srv := testutil.StartStandaloneNATS(t)
	sub := testutil.Subscribe(t, srv.URL, "bpfstats.>")
	sink := newTestSink(t, srv.URL, "hostile", testutil.NewLogWatch(t).Logger(), nil)
	ids := append([]string{"good"}, hostileIDs...)
	snap := bigSnapshot("hostile", ids, 3, 2, testTime)
	for i := range snap.Programs {
		snap.Programs[i].ProgName = "\x1b]0;title\x07" + strings.Repeat("p", 300)
	}
	for seq := range 3 {
		snap.Time = testTime.Add(time.Duration(seq) * time.Second)
		if err := sink.Publish(snap); err != nil {
			t.Fatalf("interval %d: %v", seq+1, err)
		}
		if !sink.Connected() {
			t.Fatalf("interval %d: not connected", seq+1)
		}
	}
	got := collectIntervals(t, sub, "hostile", 3, 1<<20)
	want := wantIDs(snap)
	for seq := uint64(1); seq <= 3; seq++ {
		iv := got[seq]
		if iv == nil || iv.node == nil {
			t.Fatalf("interval %d incomplete", seq)
		}
		if len(iv.parts) != len(ids)+1 {
			t.Errorf("interval %d: %d subjects, want %d", seq, len(iv.parts), len(ids)+1)
		}
		for _, id := range ids {
			subject := sink.GadgetSubject(id)
			tok := strings.TrimPrefix(subject, "bpfstats.hostile.")
			if !plainToken(tok) || strings.HasPrefix(tok, "_") {
				t.Errorf("gadget %.20q: token %q", id, tok)
			}
			parts := iv.parts[subject]
			if got := checkParts(t, subject, parts, sink.Instance()); !slices.Equal(got, want[id]) {
				t.Errorf("interval %d, gadget %.20q on %s: programs %v, want %v", seq, id, subject, got, want[id])
				continue
			}
			g := parts[0].Gadget
			if g.ID != CleanLabel(id) || len(g.ID) > MaxLabelLen || strings.ContainsAny(g.ID+g.Name+g.Image, "\n\x1b") {
				t.Errorf("gadget %.20q published as %+q", id, g)
			}
			for _, r := range parts[0].Programs {
				if len(r.ProgName) > MaxLabelLen || strings.ContainsAny(r.ProgName, "\x1b\x07") || r.GadgetID != g.ID {
					t.Errorf("program row %q of gadget %q", r.ProgName, r.GadgetID)
				}
			}
		}
	}
	if st := sink.Stats(); st.PublishErrors != 0 || st.Reconnects != 0 || !sink.Connected() {
		t.Errorf("after three intervals: %+v, connected %v", st, sink.Connected())
	}
	// Every message has its own subject and key: no gadget takes the
	// place of _node or _unowned, nor of another gadget.
	msgs, err := sink.encodeInterval(snap, 1<<20, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	subjects, keys := map[string]bool{}, map[string]bool{}
	for _, m := range msgs {
		key := kvKey(sink.Node(), m.tok, m.part)
		if subjects[m.subject] || keys[key] || !strings.HasPrefix(key, "hostile.") {
			t.Errorf("subject %s, key %s taken twice or malformed", m.subject, key)
		}
		subjects[m.subject], keys[key] = true, true
	}
	if len(keys) != len(ids)+3 || !keys["hostile._node"] || !keys["hostile._unowned"] || !keys["hostile._summary"] || !keys["hostile.g_node"] {
		t.Errorf("keys %v", keys)
	}
}

// forceClose makes the server end the sink's connection for good, as a
// subject over its control line limit does, and waits until nats.go ran
// the connection's closed handler.
func forceClose(t *testing.T, sink *NATSSink) *sinkConn {
	t.Helper()
	old := sink.conn.Load()
	if err := old.nc.Publish("bpfstats."+strings.Repeat("x", 5000), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.closed:
	case <-time.After(testutil.Wait):
		t.Fatalf("the server did not close the connection (status %s)", old.nc.Status())
	}
	if !strings.Contains(fmt.Sprint(old.nc.LastError()), "maximum control line exceeded") {
		t.Errorf("closed with %v, want maximum control line exceeded", old.nc.LastError())
	}
	return old
}

// TestNATSReplaceClosedConnection checks that a connection nats.go closed
// for good after a server error is replaced and publishing goes on.
func TestNATSReplaceClosedConnection(t *testing.T) {
	srv := testutil.StartStandaloneNATS(t)
	watch := testutil.NewLogWatch(t)
	sub := testutil.Subscribe(t, srv.URL, "bpfstats.>")
	sink := newTestSink(t, srv.URL, "phoenix", watch.Logger(), func(o *NATSOptions) {
		o.Conn.ReconnectWait, o.Conn.MaxReconnectWait = time.Second, 2*time.Second
	})
	snap := bigSnapshot("phoenix", []string{"g1"}, 2, 1, testTime)
	if err := sink.Publish(snap); err != nil {
		t.Fatal(err)
	}
	collectIntervals(t, sub, "phoenix", 1, 1<<20)

	old := forceClose(t, sink)
	watch.WaitMessage(t, 0, "NATS connection closed for good by the client library, connecting again")
	// Until replaced, intervals are skipped and counted.
	if err := sink.Publish(snap); err != nil {
		t.Fatal(err)
	}
	if sink.conn.Load() == old {
		if st := sink.Stats(); st.SkippedIntervals != 1 {
			t.Errorf("interval on the closed connection: %+v, want it skipped", st)
		}
	} else {
		t.Log("the connection was replaced before the interval: no skip to see")
	}
	watch.WaitMessage(t, 0, "NATS connection replaced")
	if !sink.Connected() {
		t.Fatal("not connected after the replacement")
	}
	for range 2 {
		if err := sink.Publish(snap); err != nil {
			t.Fatal(err)
		}
	}
	last := sink.seq
	got := collectIntervals(t, sub, "phoenix", last, 1<<20)
	for seq := last - 1; seq <= last; seq++ {
		if iv := got[seq]; iv == nil || len(iv.parts) != 2 {
			t.Errorf("interval %d after the replacement: %+v", seq, iv)
		}
	}
	st := sink.Stats()
	if st.Reconnects != 1 || st.PublishErrors != 1 {
		t.Errorf("after the replacement: %+v, want one reconnect and the server's error", st)
	}
	if err := sink.PublishEvent(&state.Event{Kind: "load", ProgID: 1}); err != nil {
		t.Errorf("event after the replacement: %v", err)
	}
}

// TestNATSCloseWhileReplacing closes the sink while it waits to replace a
// closed connection: Close returns and nothing connects again.
func TestNATSCloseWhileReplacing(t *testing.T) {
	srv := testutil.StartStandaloneNATS(t)
	watch := testutil.NewLogWatch(t)
	sink := newTestSink(t, srv.URL, "closing", watch.Logger(), func(o *NATSOptions) {
		o.Conn.ReconnectWait, o.Conn.MaxReconnectWait = 10*time.Second, 10*time.Second
	})
	forceClose(t, sink)
	watch.WaitMessage(t, 0, "NATS connection closed for good by the client library, connecting again")
	done := make(chan struct{})
	go func() { sink.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(testutil.Wait):
		t.Fatal("Close did not return while a replacement was pending")
	}
	if sink.Connected() || strings.Contains(watch.String(), "NATS connection replaced") {
		t.Error("connected again after Close")
	}
}

// TestNATSKVParts checks that every part has its key and that keys of
// parts no longer needed are deleted.
func TestNATSKVParts(t *testing.T) {
	srv := testutil.StartNATS(t, &server.Options{MaxPayload: 16 << 10, JetStream: true, StoreDir: t.TempDir()})
	sink := newTestSink(t, srv.ClientURL(), "kvp", testutil.NewLogWatch(t).Logger(), func(o *NATSOptions) { o.KV = true })
	snap := bigSnapshot("kvp", []string{"g1"}, 200, 0, testTime)
	if err := sink.Publish(snap); err != nil {
		t.Fatal(err)
	}
	waitKV(t, sink)
	kv := openKVBucket(t, srv.ClientURL())
	readParts := func() []partMsg {
		t.Helper()
		var parts []partMsg
		for n := 1; ; n++ {
			e, err := kv.Get(context.Background(), kvKey("kvp", "g1", n))
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return parts
			}
			if err != nil {
				t.Fatal(err)
			}
			parts = append(parts, testutil.Decode[partMsg](t, &nats.Msg{Subject: e.Key(), Data: e.Value()}))
		}
	}
	parts := readParts()
	if ids := checkParts(t, "g1", parts, sink.Instance()); len(parts) < 3 || !slices.Equal(ids, wantIDs(snap)["g1"]) {
		t.Fatalf("%d parts with %d programs", len(parts), len(ids))
	}
	// The gadget shrinks to one part: the other part keys go.
	small := bigSnapshot("kvp", []string{"g1"}, 3, 0, testTime.Add(time.Second))
	if err := sink.Publish(small); err != nil {
		t.Fatal(err)
	}
	waitKV(t, sink)
	parts = readParts()
	if ids := checkParts(t, "g1", parts, sink.Instance()); len(parts) != 1 || !slices.Equal(ids, wantIDs(small)["g1"]) {
		t.Errorf("after shrinking: %d parts with %v", len(parts), ids)
	}
	if n := sink.PublishErrors(); n != 0 {
		t.Errorf("%d publish errors", n)
	}
}

func TestCleanLabel(t *testing.T) {
	for in, want := range map[string]string{
		"trace_open:latest":           "trace_open:latest",
		"new\nline\ttab":              "newlinetab",
		"\x1b[31mred\x1b[0m":          "[31mred[0m",
		"bidi\u202eevil":              "bidievil",
		"c1\u009bcontrol":             "c1control",
		"ünïcödé":                     "ünïcödé",
		"bad\xffutf8":                 "bad\ufffdutf8",
		"line\u2028sep":               "linesep",
		strings.Repeat("a", 128):      strings.Repeat("a", 128),
		strings.Repeat("a", 129):      strings.Repeat("a", 128),
		strings.Repeat("é", 100):      strings.Repeat("é", 64),
		"a" + strings.Repeat("é", 70): "a" + strings.Repeat("é", 63),
	} {
		got := CleanLabel(in)
		if got != want || len(got) > MaxLabelLen || !utf8.ValidString(got) {
			t.Errorf("CleanLabel(%q) = %q, want %q", in, got, want)
		}
	}
	clean := "a clean label"
	if n := testing.AllocsPerRun(100, func() { CleanLabel(clean) }); n != 0 {
		t.Errorf("CleanLabel of a clean label allocates %v times", n)
	}
}
