package fleet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// header is a valid header of node, instance i1, at the fake clock's time.
func header(node string, seq uint64, at time.Time) publish.Header {
	return publish.Header{Schema: publish.SchemaVersion, Node: node, Seq: seq, Time: at, Interval: time.Second, Instance: "i1"}
}

// mustReject ingests m and fails unless the fleet refuses it.
func mustReject(t *testing.T, f *Fleet, m msg, why string) {
	t.Helper()
	if err := f.Ingest(m.subject, m.data); err == nil || !strings.Contains(err.Error(), why) {
		t.Fatalf("message on %s: error %v, want %q", m.subject, err, why)
	}
}

// A body's node field is not who sent it: the subject is.
func TestFleetNodeFromSubject(t *testing.T) {
	f := New("", time.Second, nil)
	h := header("a", 1, testTime)
	msgs := instanceInterval(t, h, []fleetGadget{{id: "g1"}}, nil)
	for i := range msgs {
		msgs[i].subject = strings.Replace(msgs[i].subject, "bpfstats.a.", "bpfstats.nodeX.", 1)
	}
	ingestAll(t, f, msgs)
	if got := gadgetIDs(f.GadgetRows("")); !reflect.DeepEqual(got, []string{"nodeX/g1"}) {
		t.Fatalf("rows %v, want [nodeX/g1]", got)
	}
	if _, ok := f.nodes["a"]; ok {
		t.Fatal("the body's node a got a row")
	}
	// A program row's own nodeName is not trusted either.
	h = header("nodeX", 2, testTime)
	h.Type = publish.TypeUnowned
	ingestAll(t, f, []msg{encode(t, "nodeX", publish.TokenUnowned, publish.UnownedMessage{Header: h,
		Programs: []state.Row{{NodeName: "a", ProgID: 9}}})})
	for _, r := range f.ProgramRows("") {
		if r.NodeName != "nodeX" {
			t.Fatalf("program row %+v names another node", r)
		}
	}
	// Subjects the trackers never use are refused; the kind comes from the
	// subject: a node message on a gadget subject is not a node message.
	mustReject(t, f, msg{"other.nodeX._node", msgs[2].data}, "not under bpfstats")
	mustReject(t, f, msg{"bpfstats.nodeX", msgs[2].data}, "want <prefix>.<node>.<token>")
	mustReject(t, f, msg{"bpfstats.nodeX.a.b", msgs[2].data}, "want <prefix>.<node>.<token>")
	mustReject(t, f, msg{"bpfstats." + strings.Repeat("n", 300) + "._node", msgs[2].data}, "token over")
	mustReject(t, f, msg{"bpfstats.nodeX.g2", msgs[2].data}, `type "node" on a gadget subject`)
	if s := f.Stats(); s.RejectedSubject != 4 || s.RejectedDecode != 1 || s.Nodes != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// A message from the future is refused and cannot freeze a node; an
// absurd interval cannot make a node that never expires.
func TestFleetRejectsFutureTimesAndAbsurdIntervals(t *testing.T) {
	clock := &fakeClock{t: testTime}
	f := New("", time.Second, clock.now)
	ingestAll(t, f, interval(t, "b", 1, testTime, time.Second, 0, []fleetGadget{{id: "g", runtime: 1}}, nil))
	future := interval(t, "b", 2, time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), time.Second, 0, []fleetGadget{{id: "g", runtime: 99}}, nil)
	for _, m := range future {
		mustReject(t, f, m, "beyond now")
	}
	// Within the allowed skew is fine.
	for seq := uint64(2); seq <= 4; seq++ {
		clock.advance(time.Second)
		ingestAll(t, f, interval(t, "b", seq, clock.t.Add(MaxClockSkew), time.Second, 0, []fleetGadget{{id: "g", runtime: seq}}, nil))
		if rows := f.GadgetRows(""); len(rows) != 1 || rows[0].Runtime != seq {
			t.Fatalf("b stopped updating at seq %d: %+v", seq, rows)
		}
	}

	for _, iv := range []time.Duration{9e18, -time.Second, time.Millisecond, 2 * time.Hour} {
		m := interval(t, "fake", 1, testTime, iv, 0, nil, nil)[1]
		mustReject(t, f, m, "interval")
	}
	// A huge elapsed time without an interval is bounded, not trusted.
	ingestAll(t, f, interval(t, "slow", 1, clock.t, 0, 9e18, nil, nil))
	if s := f.Stats(); s.RejectedTime != 3 || s.RejectedInterval != 4 || s.Nodes != 2 {
		t.Fatalf("stats %+v, want 3 rejected times, 4 rejected intervals, nodes b and slow", s)
	}
	clock.advance(ExpiryIntervals*MaxInterval + time.Second)
	if gone := f.Expire(); !reflect.DeepEqual(gone, []string{"b", "slow"}) {
		t.Fatalf("expired %v, want [b slow]", gone)
	}
}

// Labels are capped when stored: a 900 KB gadget name neither pads every
// row nor stays in memory.
func TestFleetCapsLabels(t *testing.T) {
	f := New("", time.Second, nil)
	huge := strings.Repeat("é", 450<<10)
	h := header("n", 1, testTime)
	h.Type = publish.TypeGadget
	g := publish.GadgetMessage{Header: h, Gadget: publish.GadgetIdentity{ID: "g", Name: huge, Image: "\x1b[2Jimg"},
		Owner: state.ProcessRef{Comm: huge, Exe: huge},
		Programs: []state.Row{{ProgID: 1, ProgName: huge, Comms: []string{huge},
			PIDs: make([]uint32, 5000), MapIDs: make([]uint32, 5000), Loader: &state.ProcessRef{Exe: huge}}}}
	ingestAll(t, f, []msg{encode(t, "n", "g", g)})
	rows := f.GadgetRows("")
	if len(rows) != 1 || len(rows[0].GadgetName) != MaxLabelBytes || !utf8.ValidString(rows[0].GadgetName) ||
		len(rows[0].Loader.Exe) != MaxLabelBytes {
		t.Fatalf("gadget row not capped: name %d bytes, exe %d bytes", len(rows[0].GadgetName), len(rows[0].Loader.Exe))
	}
	p := f.ProgramRows("")[0]
	if len(p.ProgName) != MaxLabelBytes || len(p.Comms[0]) != MaxLabelBytes || len(p.PIDs) != MaxListEntries ||
		len(p.MapIDs) != MaxListEntries || len(p.Loader.Exe) != MaxLabelBytes {
		t.Fatalf("program row not capped: %d %d %d %d", len(p.ProgName), len(p.Comms[0]), len(p.PIDs), len(p.MapIDs))
	}
	if s := f.Stats(); s.CappedLabels != 6 || s.CappedLists != 2 {
		t.Fatalf("stats %+v, want 6 capped labels, 2 capped lists", s)
	}
	var table bytes.Buffer
	if err := f.Render(&table, Options{All: true, Columns: mustColumns(t, "comms")}); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(table.String(), "\n") {
		if utf8.RuneCountInString(line) > 400 || strings.Contains(line, "\x1b") {
			t.Fatalf("table line of %d runes: %.200q", utf8.RuneCountInString(line), line)
		}
	}
	table.Reset()
	if err := f.Render(&table, Options{By: "image"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), `\x1b[2Jimg`) {
		t.Fatalf("image table not escaped:\n%s", table.String())
	}
}

func mustColumns(t *testing.T, extra ...string) []publish.Column {
	t.Helper()
	cols, err := publish.SelectColumns(extra)
	if err != nil {
		t.Fatal(err)
	}
	return cols
}

// Order is the publisher's (instance, seq): a replayed interval is
// ignored and keeps no node alive; a restarted tracker replaces its old
// instance, whose messages are stale from then on, also once the node
// expired.
func TestFleetOrdersByInstanceAndSeq(t *testing.T) {
	clock := &fakeClock{t: testTime}
	f := New("", time.Second, clock.now)
	first := interval(t, "n", 1, testTime, time.Second, 0, []fleetGadget{{id: "old", runtime: 1}}, nil)
	ingestAll(t, f, first)
	ingestAll(t, f, interval(t, "n", 2, testTime, time.Second, 0, []fleetGadget{{id: "old", runtime: 2}}, nil))
	// Replays, with later times and the same times: stale.
	for range 5 {
		clock.advance(time.Second)
		for _, m := range first {
			mustReject(t, f, m, "stale")
		}
	}
	if rows := f.GadgetRows(""); len(rows) != 1 || rows[0].Runtime != 2 {
		t.Fatalf("replay changed the view: %+v", rows)
	}
	if gone := f.Expire(); !reflect.DeepEqual(gone, []string{"n"}) {
		t.Fatalf("replays kept node n alive: expired %v", gone)
	}
	// Gone, and a replay cannot bring it back.
	for _, m := range first {
		mustReject(t, f, m, "stale")
	}
	if s := f.Stats(); s.Nodes != 0 || s.Stale != 5*3+3 {
		t.Fatalf("stats %+v", s)
	}

	// The tracker restarts: a new instance from seq 1, with an older time.
	h := header("n", 1, testTime.Add(-time.Hour))
	h.Instance = "i2"
	restarted := instanceInterval(t, h, []fleetGadget{{id: "new", runtime: 1}}, nil)
	ingestAll(t, f, restarted)
	if got := gadgetIDs(f.GadgetRows("")); !reflect.DeepEqual(got, []string{"n/new"}) {
		t.Fatalf("after restart %v, want [n/new]", got)
	}
	// The old instance's messages are stale now, whatever their seq.
	mustReject(t, f, interval(t, "n", 99, clock.t, time.Second, 0, []fleetGadget{{id: "old"}}, nil)[0], "stale")
	// Another restart also replaces i2.
	h.Instance, h.Seq = "i3", 1
	ingestAll(t, f, instanceInterval(t, h, nil, []uint32{5}))
	if rows := f.ProgramRows(""); len(rows) != 1 || rows[0].ProgID != 5 || len(f.GadgetRows("")) != 0 {
		t.Fatalf("after second restart: programs %+v", rows)
	}
}

// Caps: nodes, gadgets per node, program rows per gadget, parts.
func TestFleetCaps(t *testing.T) {
	clock := &fakeClock{t: testTime}
	f := New("", time.Second, clock.now)
	h := header("", 1, testTime)
	h.Type = publish.TypeNode
	for i := range MaxNodes + 10 {
		node := fmt.Sprintf("n%d", i)
		h.Node = node
		m := encode(t, node, publish.TokenNode, publish.NodeMessage{Header: h})
		err := f.Ingest(m.subject, m.data)
		if (err != nil) != (i >= MaxNodes) {
			t.Fatalf("node %d: %v", i, err)
		}
	}
	h.Node, h.Type = "n0", publish.TypeGadget
	for i := range MaxGadgetsPerNode + 10 {
		id := fmt.Sprintf("g%d", i)
		m := encode(t, "n0", id, publish.GadgetMessage{Header: h, Gadget: publish.GadgetIdentity{ID: id}})
		if err := f.Ingest(m.subject, m.data); (err != nil) != (i >= MaxGadgetsPerNode) {
			t.Fatalf("gadget %d: %v", i, err)
		}
	}
	// One gadget with more rows than a set may hold, as raw JSON.
	var body bytes.Buffer
	fmt.Fprintf(&body, `{"schema":%q,"type":"gadget","seq":1,"instance":"i1","time":"2025-01-01T00:00:00Z","gadget":{"id":"big"},"programs":[`, publish.SchemaVersion)
	for i := range MaxProgramsPerSet + 7 {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `{"progID":%d}`, i+1)
	}
	body.WriteString("]}")
	if err := f.Ingest("bpfstats.n1.big", body.Bytes()); err != nil {
		t.Fatal(err)
	}
	if got := len(f.ProgramRows("n1")); got != MaxProgramsPerSet {
		t.Fatalf("%d program rows, want %d", got, MaxProgramsPerSet)
	}
	for _, p := range [][2]int{{0, 3}, {4, 3}, {1, MaxParts + 1}, {-1, 2}} {
		h.Part, h.Parts = p[0], p[1]
		mustReject(t, f, encode(t, "n0", "g0", publish.GadgetMessage{Header: h}), "part")
	}
	s := f.Stats()
	if s.Nodes != MaxNodes || s.DroppedNodes != 10 || s.DroppedGadgets != 10 || s.DroppedPrograms != 7 || s.RejectedPart != 4 {
		t.Fatalf("stats %+v", s)
	}
	// Expiry gives the rows back.
	clock.advance(time.Hour)
	f.Expire()
	if f.programs != 0 || len(f.nodes) != 0 {
		t.Fatalf("%d program rows, %d nodes left after expiry", f.programs, len(f.nodes))
	}
}

// partMsg is part p of parts of gadget g's interval seq on node n, with
// the given program IDs.
func partMsg(t *testing.T, seq uint64, p, parts int, runtime uint64, progs ...uint32) msg {
	t.Helper()
	h := header("n", seq, testTime)
	h.Type, h.Part, h.Parts = publish.TypeGadget, p, parts
	m := publish.GadgetMessage{Header: h, Gadget: publish.GadgetIdentity{ID: "g", Name: "split"},
		Totals: publish.MessageTotals{Runtime: runtime, ProgramCount: 4}}
	for _, id := range progs {
		m.Programs = append(m.Programs, state.Row{ProgID: id, PIDs: []uint32{id * 10}})
	}
	return encode(t, "n", "g", m)
}

func nodeMsg(t *testing.T, seq uint64) msg {
	t.Helper()
	h := header("n", seq, testTime)
	h.Type = publish.TypeNode
	return encode(t, "n", publish.TokenNode, publish.NodeMessage{Header: h})
}

func progIDs(rows []Row) []uint32 {
	var ids []uint32
	for _, r := range rows {
		ids = append(ids, r.ProgID)
	}
	return ids
}

// A gadget split over parts shows as one gadget with every part's
// programs, from live messages and from key-value keys; an interval that
// closes with a part missing shows what came and is counted.
func TestFleetReassemblesParts(t *testing.T) {
	f := New("", time.Second, nil)
	ingestAll(t, f, []msg{partMsg(t, 1, 1, 2, 100, 1, 2), partMsg(t, 1, 2, 2, 100, 3, 4), nodeMsg(t, 1)})
	rows := f.GadgetRows("")
	if len(rows) != 1 || rows[0].Runtime != 100 || !reflect.DeepEqual(rows[0].PIDs, []uint32{10, 20, 30, 40}) {
		t.Fatalf("gadget rows %+v", rows)
	}
	if got := progIDs(f.ProgramRows("")); !reflect.DeepEqual(got, []uint32{1, 2, 3, 4}) {
		t.Fatalf("programs %v", got)
	}
	// The next interval's first part: the complete one stays shown until
	// the second arrives.
	ingestAll(t, f, []msg{partMsg(t, 2, 1, 2, 200, 1, 2)})
	if rows := f.GadgetRows(""); rows[0].Runtime != 100 || len(f.ProgramRows("")) != 4 {
		t.Fatalf("half an interval shown: %+v", rows)
	}
	ingestAll(t, f, []msg{partMsg(t, 2, 2, 2, 200, 3, 5), nodeMsg(t, 2)})
	if got := progIDs(f.ProgramRows("")); f.GadgetRows("")[0].Runtime != 200 || !reflect.DeepEqual(got, []uint32{1, 2, 3, 5}) {
		t.Fatalf("second interval: programs %v", got)
	}
	// Part 2 of interval 3 is lost.
	ingestAll(t, f, []msg{partMsg(t, 3, 1, 2, 300, 1), nodeMsg(t, 3)})
	if got := progIDs(f.ProgramRows("")); f.GadgetRows("")[0].Runtime != 300 || !reflect.DeepEqual(got, []uint32{1}) {
		t.Fatalf("incomplete interval: programs %v", got)
	}
	if s := f.Stats(); s.IncompleteIntervals != 1 || f.programs != 1 {
		t.Fatalf("stats %+v, %d rows held", s, f.programs)
	}

	// The key-value bucket: <node>.<gadget> and <node>.<gadget>.p<N>.
	kv := New("", time.Second, nil)
	for _, e := range []struct {
		key string
		m   msg
	}{{"n.g", partMsg(t, 7, 1, 3, 700, 1)}, {"n.g.p2", partMsg(t, 7, 2, 3, 700, 2)}, {"n.g.p3", partMsg(t, 7, 3, 3, 700, 3)}, {"n._node", nodeMsg(t, 7)}} {
		if err := kv.ingestAt(e.key, e.m.data, time.Now()); err != nil {
			t.Fatalf("key %s: %v", e.key, err)
		}
	}
	if got := progIDs(kv.ProgramRows("")); !reflect.DeepEqual(got, []uint32{1, 2, 3}) {
		t.Fatalf("programs from the bucket %v", got)
	}
	if err := kv.ingestAt("n.g.x2", partMsg(t, 8, 1, 1, 1).data, time.Now()); err == nil {
		t.Fatal("accepted key n.g.x2")
	}
}

// The JSON print carries the counters.
func TestFleetJSONCounters(t *testing.T) {
	f := New("", time.Second, nil)
	ingestAll(t, f, interval(t, "n", 1, testTime, time.Second, 0, []fleetGadget{{id: "g"}}, nil))
	mustReject(t, f, msg{"bpfstats.n.g", []byte("{")}, "decoding")
	var out bytes.Buffer
	if err := f.Render(&out, Options{JSON: true}); err != nil {
		t.Fatal(err)
	}
	var p Print[Row]
	if err := json.Unmarshal(out.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	if p.Fleet.Nodes != 1 || p.Fleet.Accepted != 3 || p.Fleet.RejectedDecode != 1 || len(p.Rows) != 1 || p.Time.IsZero() {
		t.Fatalf("print %s", out.String())
	}
}
