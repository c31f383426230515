package fleet

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

var testTime = time.Date(2025, 11, 26, 6, 0, 0, 123456789, time.UTC)

// fakeClock is the fleet's injected clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

type fleetGadget struct {
	id, image string
	runtime   uint64
	programs  []uint32
}

// msg is one message as received: its subject and body.
type msg struct {
	subject string
	data    []byte
}

// encode makes the message of v on bpfstats.<node>.<token>.
func encode(t *testing.T, node, token string, v any) msg {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return msg{subject: "bpfstats." + node + "." + token, data: data}
}

// interval encodes one interval of a node, of instance "i1", as a tracker
// publishes it.
func interval(t *testing.T, node string, seq uint64, at time.Time, iv, elapsed time.Duration, gadgets []fleetGadget, unowned []uint32) []msg {
	t.Helper()
	h := publish.Header{Schema: publish.SchemaVersion, Node: node, Seq: seq, Time: at, Elapsed: elapsed, Interval: iv, Instance: "i1"}
	return instanceInterval(t, h, gadgets, unowned)
}

// instanceInterval encodes one interval with the header h.
func instanceInterval(t *testing.T, h publish.Header, gadgets []fleetGadget, unowned []uint32) []msg {
	t.Helper()
	var out []msg
	add := func(token string, v any) { out = append(out, encode(t, h.Node, token, v)) }
	for _, g := range gadgets {
		h.Type = publish.TypeGadget
		m := publish.GadgetMessage{
			Header: h,
			Gadget: publish.GadgetIdentity{ID: g.id, Name: "name-" + g.id, Image: g.image},
			Owner:  state.ProcessRef{PID: 100, Comm: "owner"},
			Totals: publish.MessageTotals{Runtime: g.runtime, Runcount: 10, MapMemory: 1000, MapCount: 2, ProgramCount: len(g.programs), CPUPercent: 0.25},
		}
		for _, id := range g.programs {
			m.Programs = append(m.Programs, state.Row{
				GadgetID: g.id, GadgetName: "name-" + g.id, GadgetImage: g.image, ProgID: id,
				PIDs: []uint32{100, 200}, Comms: []string{"owner", "holder"},
			})
		}
		add(g.id, m)
	}
	h.Type = publish.TypeUnowned
	u := publish.UnownedMessage{Header: h, Totals: publish.MessageTotals{ProgramCount: len(unowned), MapMemory: 5}}
	for _, id := range unowned {
		u.Programs = append(u.Programs, state.Row{ProgID: id})
	}
	add(publish.TokenUnowned, u)
	h.Type = publish.TypeNode
	add(publish.TokenNode, publish.NodeMessage{Header: h, Version: "test"})
	return out
}

func ingestAll(t *testing.T, f *Fleet, msgs []msg) {
	t.Helper()
	for _, m := range msgs {
		if err := f.Ingest(m.subject, m.data); err != nil {
			t.Fatal(err)
		}
	}
}

func gadgetIDs(rows []Row) []string {
	var ids []string
	for _, r := range rows {
		ids = append(ids, r.NodeName+"/"+r.GadgetID)
	}
	return ids
}

func TestFleetDropsSilentNodeAfterThreeIntervals(t *testing.T) {
	clock := &fakeClock{t: testTime}
	f := New("", time.Second, clock.now)
	g := []fleetGadget{{id: "g1", image: "img"}}
	ingestAll(t, f, interval(t, "fast", 1, testTime, time.Second, 0, g, nil))
	ingestAll(t, f, interval(t, "slow", 1, testTime, 10*time.Second, 0, g, nil))
	// No interval field: the elapsed time stands in for it.
	ingestAll(t, f, interval(t, "old", 1, testTime, 0, 2*time.Second, g, nil))

	clock.advance(3 * time.Second)
	if gone := f.Expire(); len(gone) != 0 {
		t.Fatalf("dropped %v after exactly three intervals", gone)
	}
	clock.advance(time.Millisecond)
	if gone := f.Expire(); !reflect.DeepEqual(gone, []string{"fast"}) {
		t.Fatalf("dropped %v, want [fast]", gone)
	}
	if got := gadgetIDs(f.GadgetRows("")); !reflect.DeepEqual(got, []string{"old/g1", "slow/g1"}) {
		t.Fatalf("rows %v", got)
	}
	// A message keeps a node alive.
	ingestAll(t, f, interval(t, "old", 2, testTime.Add(2*time.Second), 0, 2*time.Second, g, nil))
	clock.advance(6 * time.Second)
	if gone := f.Expire(); len(gone) != 0 {
		t.Fatalf("dropped %v", gone)
	}
	clock.advance(24 * time.Second)
	if gone := f.Expire(); !reflect.DeepEqual(gone, []string{"old", "slow"}) {
		t.Fatalf("dropped %v, want [old slow]", gone)
	}
	if len(f.nodes) != 0 {
		t.Fatalf("nodes left: %v", f.nodes)
	}
}

func TestFleetEndedGadgetsAndStaleMessages(t *testing.T) {
	f := New("", time.Second, nil)
	t1 := testTime
	ingestAll(t, f, interval(t, "n", 1, t1, time.Second, 0,
		[]fleetGadget{{id: "g1", runtime: 1}, {id: "g2", runtime: 1}}, []uint32{5}))
	if got := gadgetIDs(f.GadgetRows("")); !reflect.DeepEqual(got, []string{"n/g1", "n/g2"}) {
		t.Fatalf("rows %v", got)
	}
	// g2 ends: the node message of the next interval drops it.
	t2 := t1.Add(time.Second)
	second := interval(t, "n", 2, t2, time.Second, time.Second, []fleetGadget{{id: "g1", runtime: 2}}, nil)
	ingestAll(t, f, second)
	if got := gadgetIDs(f.GadgetRows("")); !reflect.DeepEqual(got, []string{"n/g1"}) {
		t.Fatalf("rows after g2 ended %v", got)
	}
	// The first interval arriving late (a key-value entry) changes nothing.
	for _, m := range interval(t, "n", 1, t1, time.Second, 0, []fleetGadget{{id: "g1", runtime: 1}, {id: "g3"}}, nil) {
		if err := f.Ingest(m.subject, m.data); err == nil || !strings.Contains(err.Error(), "stale") {
			t.Fatalf("late message %s: error %v, want stale", m.subject, err)
		}
	}
	rows := f.GadgetRows("")
	if got := gadgetIDs(rows); !reflect.DeepEqual(got, []string{"n/g1"}) || rows[0].Runtime != 2 {
		t.Fatalf("stale interval applied: %+v", rows)
	}
	// A restarted tracker counts from 1 again, as a new instance.
	h := publish.Header{Schema: publish.SchemaVersion, Node: "n", Seq: 1, Time: t1, Interval: time.Second, Instance: "i2"}
	ingestAll(t, f, instanceInterval(t, h, []fleetGadget{{id: "g4"}}, nil))
	if got := gadgetIDs(f.GadgetRows("")); !reflect.DeepEqual(got, []string{"n/g4"}) {
		t.Fatalf("rows after restart %v", got)
	}
	if info := f.nodes["n"].info; info == nil || info.Version != "test" {
		t.Fatalf("node info %+v", info)
	}

	for _, bad := range []string{`{"schema":"bpfstats/v2","type":"gadget","node":"n"}`, `not json`, `{"schema":"bpfstats/v1","type":"x","node":"n"}`} {
		if err := f.Ingest("bpfstats.n.g5", []byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	if s := f.Stats(); s.RejectedDecode != 3 || s.Stale != 4 || s.Nodes != 1 {
		t.Errorf("stats %+v, want 3 rejected for decoding, 1 stale", s)
	}
}

func TestFleetViews(t *testing.T) {
	f := New("", time.Second, nil)
	open := func(id string, progs ...uint32) fleetGadget {
		return fleetGadget{id: id, image: "trace_open:latest", runtime: 100, programs: progs}
	}
	ingestAll(t, f, interval(t, "web-1", 1, testTime, time.Second, 0, []fleetGadget{open("a", 10, 11)}, []uint32{2}))
	ingestAll(t, f, interval(t, "web-2", 1, testTime, time.Second, 0, []fleetGadget{open("b", 20)}, nil))
	ingestAll(t, f, interval(t, "db-1", 1, testTime, time.Second, 0,
		[]fleetGadget{open("c", 30), {id: "d", image: "trace_exec:latest", runtime: 7, programs: []uint32{31}}}, []uint32{3}))

	if got := gadgetIDs(f.GadgetRows("web-*")); !reflect.DeepEqual(got, []string{"web-1/a", "web-2/b"}) {
		t.Errorf("glob web-*: %v", got)
	}
	rows := f.GadgetRows("web-1")
	if len(rows) != 1 || !reflect.DeepEqual(rows[0].PIDs, []uint32{100, 200}) ||
		!reflect.DeepEqual(rows[0].Comms, []string{"owner", "holder"}) || rows[0].ProgramCount != 2 {
		t.Errorf("gadget row %+v", rows)
	}

	var progs []uint32
	for _, r := range f.ProgramRows("") {
		progs = append(progs, r.ProgID)
	}
	// Sorted by node, then program: db-1, web-1, web-2.
	if want := []uint32{3, 30, 31, 2, 10, 11, 20}; !reflect.DeepEqual(progs, want) {
		t.Errorf("program rows %v, want %v", progs, want)
	}

	images := f.ImageRows("", false)
	if len(images) != 2 {
		t.Fatalf("images %+v", images)
	}
	o := images[1]
	if o.GadgetImage != "trace_open:latest" || o.Nodes != 3 || o.Gadgets != 3 || o.Runtime != 300 ||
		o.MapMemory != 3000 || o.ProgramCount != 4 || !reflect.DeepEqual(o.NodeNames, []string{"db-1", "web-1", "web-2"}) {
		t.Errorf("trace_open rollup %+v", o)
	}
	if e := images[0]; e.GadgetImage != "trace_exec:latest" || e.Nodes != 1 || e.Runtime != 7 {
		t.Errorf("trace_exec rollup %+v", e)
	}
	if all := f.ImageRows("", true); len(all) != 3 || all[0].GadgetImage != "" || all[0].Nodes != 2 || all[0].ProgramCount != 2 {
		t.Errorf("rollup with unowned %+v", all)
	}

	var table bytes.Buffer
	if err := f.Render(&table, Options{NodeGlob: "web-*"}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "# ") || !strings.Contains(lines[0], " nodes=3 accepted=10 rejected=0 ") {
		t.Fatalf("table:\n%s", table.String())
	}
	lines = lines[1:]
	if !reflect.DeepEqual(strings.Fields(lines[0])[:4], []string{"NODENAME", "GADGETID", "GADGETNAME", "GADGETIMAGE"}) ||
		!strings.HasPrefix(lines[1], "web-1") || !strings.HasPrefix(lines[2], "web-2") {
		t.Errorf("table:\n%s", table.String())
	}
	t.Logf("table:\n%s", table.String())
	var js bytes.Buffer
	if err := f.Render(&js, Options{By: "image", JSON: true}); err != nil {
		t.Fatal(err)
	}
	var decoded Print[ImageRow]
	if strings.Count(js.String(), "\n") != 1 || json.Unmarshal(js.Bytes(), &decoded) != nil || len(decoded.Rows) != 2 ||
		decoded.Fleet.Nodes != 3 || decoded.Fleet.Accepted != 10 {
		t.Errorf("JSON print %q", js.String())
	}
	var byImage bytes.Buffer
	if err := f.Render(&byImage, Options{By: "image", All: true}); err != nil {
		t.Fatal(err)
	}
	t.Logf("by image:\n%s", byImage.String())

	for _, bad := range []Options{{By: "node"}, {NodeGlob: "["}, {SubjectPrefix: "a.>"}} {
		if err := bad.setDefaults(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}

// Comms are distinct names, not one per pid: the fleet row takes the
// union of its programs' lists.
func TestFleetGadgetRowComms(t *testing.T) {
	g := &programSet{parts: [][]state.Row{
		{{PIDs: []uint32{300, 100}, Comms: []string{"a", "b"}}},
		{{PIDs: []uint32{200}, Comms: []string{"b"}}},
	}}
	r := gadgetRow("n", g)
	if !slices.Equal(r.PIDs, []uint32{100, 200, 300}) || !slices.Equal(r.Comms, []string{"a", "b"}) {
		t.Fatalf("pids %v comms %v, want [100 200 300] [a b]", r.PIDs, r.Comms)
	}
}

// A per-image rollup never goes down when one of its gadgets (or its
// node) goes away: what that gadget counted stays in the rollup.
func TestImageRollupNeverDecreases(t *testing.T) {
	clock := &fakeClock{t: testTime}
	f := New("bpfstats", time.Second, clock.now)
	runtime := func() uint64 {
		t.Helper()
		rows := f.ImageRows("", false)
		if len(rows) != 1 {
			t.Fatalf("image rows %+v", rows)
		}
		return rows[0].Runtime
	}
	both := []fleetGadget{{id: "g1", image: "img", runtime: 100, programs: []uint32{1}}, {id: "g2", image: "img", runtime: 50, programs: []uint32{2}}}
	ingestAll(t, f, interval(t, "n1", 1, clock.t, time.Second, 0, both, nil))
	if got := runtime(); got != 150 {
		t.Fatalf("rollup %d, want 150", got)
	}
	clock.advance(time.Second)
	// g2 ended; g1 ran 20 more.
	ingestAll(t, f, interval(t, "n1", 2, clock.t, time.Second, time.Second,
		[]fleetGadget{{id: "g1", image: "img", runtime: 120, programs: []uint32{1}}}, nil))
	if got := runtime(); got != 170 {
		t.Fatalf("rollup %d after g2 left, want 170 (never below 150)", got)
	}
}

// Gadget rows built from messages carry the cost columns their totals
// imply, as the tracker's own rows do.
func TestGadgetRowsCarryCost(t *testing.T) {
	clock := &fakeClock{t: testTime}
	f := New("bpfstats", time.Second, clock.now)
	ingestAll(t, f, interval(t, "n1", 1, clock.t, time.Second, 0,
		[]fleetGadget{{id: "g1", image: "img", runtime: 1000, programs: []uint32{1}}}, nil))
	rows := f.GadgetRows("")
	if len(rows) != 1 || rows[0].NsPerRun != 100 {
		t.Fatalf("gadget rows %+v, want nsPerRun 1000 ns / 10 runs", rows)
	}
}

// Gadget rows, from summaries or gadget messages, normalize cpuPercent by
// the CPUs the node reports (cpuPercentNorm), and leave it 0 when a node
// does not say (older trackers) or claims an impossible count.
func TestGadgetRowsNormalizeByNodeCPUs(t *testing.T) {
	for _, cpus := range []int{4, 0, -1, MaxCPUs + 1} {
		want := 0.0
		if cpus == 4 {
			want = 0.125 // cpuPercent 0.5 over 4 CPUs
		}
		h := publish.Header{Schema: publish.SchemaVersion, Type: publish.TypeSummary, Node: "n1", Seq: 1, Time: testTime,
			Interval: time.Second, Instance: "i1"}
		sum := publish.SummaryMessage{NodeMessage: publish.NodeMessage{Header: h, CPUs: cpus}, Gadgets: []publish.GadgetSummary{{
			Gadget: publish.GadgetIdentity{ID: "g1", Name: "x", Image: "img"},
			Totals: publish.MessageTotals{CPUPercent: 0.5, RuncountDelta: 10, ProgramCount: 1},
		}}}
		summaries := summaryView(func() time.Time { return testTime })
		ingestAll(t, summaries, []msg{encode(t, "n1", publish.TokenSummary, sum)})
		detail := New("bpfstats", time.Second, func() time.Time { return testTime })
		msgs := interval(t, "n1", 1, testTime, time.Second, time.Second, []fleetGadget{{id: "g1", image: "img", programs: []uint32{1}}}, nil)
		var node publish.NodeMessage
		last := &msgs[len(msgs)-1]
		if err := json.Unmarshal(last.data, &node); err != nil {
			t.Fatal(err)
		}
		node.CPUs = cpus
		*last = encode(t, "n1", publish.TokenNode, node)
		ingestAll(t, detail, msgs)
		for what, f := range map[string]*Fleet{"summary": summaries, "gadget message": detail} {
			rows := f.GadgetRows("")
			if len(rows) != 1 {
				t.Fatalf("%s rows %+v", what, rows)
			}
			// The detail rows' cpuPercent is 0.25 (interval's totals).
			got, wantNorm := rows[0].CPUPercentNorm, want
			if what == "gadget message" && want != 0 {
				wantNorm = 0.25 / 4
			}
			if got != wantNorm {
				t.Errorf("cpus %d, %s row: cpuPercentNorm %v, want %v", cpus, what, got, wantNorm)
			}
		}
	}
}
