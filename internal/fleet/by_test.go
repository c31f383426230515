package fleet

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

const (
	cidA = "aaaaaaaaaaaa0123456789abcdef0123456789abcdef0123456789abcdef0123"
	cidB = "bbbbbbbbbbbb0123456789abcdef0123456789abcdef0123456789abcdef0123"
)

// placedInterval is one interval of node whose gadgets' programs ran
// where places says (by gadget ID), plus one unowned program.
func placedInterval(t *testing.T, node string, seq uint64, at time.Time, gadgets []fleetGadget, places map[string]state.Placement) []msg {
	t.Helper()
	msgs := interval(t, node, seq, at, time.Second, time.Duration(seq-1)*time.Second, gadgets, []uint32{9})
	for i, m := range msgs {
		var g publish.GadgetMessage
		if !strings.HasSuffix(m.subject, "._unowned") && !strings.HasSuffix(m.subject, "._node") {
			if err := json.Unmarshal(m.data, &g); err != nil {
				t.Fatal(err)
			}
			for j := range g.Programs {
				g.Programs[j].Placement = places[g.Gadget.ID]
			}
			msgs[i] = encode(t, node, g.Gadget.ID, g)
		}
	}
	return msgs
}

func TestGroupRows(t *testing.T) {
	clock := &fakeClock{t: testTime}
	f := New("", time.Second, clock.now)
	places := map[string]state.Placement{
		"a": {Unit: "cri-containerd-" + cidA + ".scope", ContainerID: cidA, PodUID: "uid-1", PodName: "ig-1", PodNamespace: "gadget"},
		"b": {Unit: "cri-containerd-" + cidB + ".scope", ContainerID: cidB, PodUID: "uid-1", PodName: "ig-1", PodNamespace: "gadget"},
		"c": {Unit: "ig.service"},
		"d": {Unit: "ig.service"},
		// A pod the node cannot name (no CRI socket): its UID.
		"e": {ContainerID: cidA, PodUID: "uid-2"},
	}
	g := func(id string, runtime uint64, progs ...uint32) fleetGadget {
		return fleetGadget{id: id, image: "img", runtime: runtime, programs: progs}
	}
	ingestAll(t, f, placedInterval(t, "n1", 1, clock.t, []fleetGadget{g("a", 10, 1), g("b", 20, 2), g("c", 30, 3)}, places))
	ingestAll(t, f, placedInterval(t, "n2", 1, clock.t, []fleetGadget{g("d", 40, 4), g("e", 50, 5), g("f", 60, 6)}, places))

	type want struct {
		key     string
		nodes   int
		gadgets int
		runtime uint64
	}
	check := func(by string, all bool, wants []want) {
		t.Helper()
		rows, err := f.GroupRows(by, "", all)
		if err != nil {
			t.Fatal(err)
		}
		var got []want
		for _, r := range rows {
			key := r.Key
			if r.Unowned {
				key = "(unowned)"
			}
			got = append(got, want{key, r.Nodes, r.Gadgets, r.Runtime})
			if r.By != by {
				t.Errorf("row %+v of rollup %s", r, by)
			}
		}
		if !reflect.DeepEqual(got, wants) {
			t.Errorf("by %s:\n got %+v\nwant %+v", by, got, wants)
		}
	}
	check(ByUnit, false, []want{
		{"", 1, 2, 110},
		{"cri-containerd-" + cidA + ".scope", 1, 1, 10},
		{"cri-containerd-" + cidB + ".scope", 1, 1, 20},
		{"ig.service", 2, 2, 70},
	})
	check(ByContainer, true, []want{{"", 2, 3, 130}, {cidA, 2, 2, 60}, {cidB, 1, 1, 20}, {"(unowned)", 2, 0, 0}})
	check(ByPod, false, []want{{"", 2, 3, 130}, {"gadget/ig-1", 1, 2, 30}, {"uid-2", 1, 1, 50}})

	// Gadget b ends, a runs on: the pod's counter never goes down.
	clock.advance(time.Second)
	ingestAll(t, f, placedInterval(t, "n1", 2, clock.t, []fleetGadget{g("a", 15, 1), g("c", 30, 3)}, places))
	check(ByPod, false, []want{{"", 2, 3, 130}, {"gadget/ig-1", 1, 1, 35}, {"uid-2", 1, 1, 50}})
	// The unit rollup has counters of its own: b's unit row is gone (no
	// gadget left), the others go on.
	check(ByUnit, false, []want{
		{"", 1, 2, 110},
		{"cri-containerd-" + cidA + ".scope", 1, 1, 15},
		{"ig.service", 2, 2, 70},
	})

	var table bytes.Buffer
	if err := f.Render(&table, Options{By: ByContainer, All: true}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[1], "CONTAINERID ") || !strings.HasPrefix(lines[2], "(none)") ||
		!strings.HasPrefix(lines[3], cidA[:12]+" ") || !strings.HasPrefix(lines[4], "(unowned)") {
		t.Errorf("table:\n%s", table.String())
	}
	t.Logf("by container:\n%s", table.String())
	var js bytes.Buffer
	if err := f.Render(&js, Options{By: ByPod, JSON: true}); err != nil {
		t.Fatal(err)
	}
	var decoded Print[GroupRow]
	if err := json.Unmarshal(js.Bytes(), &decoded); err != nil || len(decoded.Rows) != 3 || decoded.Rows[1].Key != "gadget/ig-1" {
		t.Errorf("JSON print %s (%v)", js.String(), err)
	}

	for _, by := range []string{"", "image", ByUnit, ByContainer, ByPod} {
		if o := (Options{By: by}); !ValidBy(by) || o.setDefaults() != nil {
			t.Errorf("rollup %q refused", by)
		}
	}
	if ValidBy("node") {
		t.Error("rollup node accepted")
	}
	if _, err := f.GroupRows("image", "", false); err == nil {
		t.Error("GroupRows took the image rollup")
	}
}
