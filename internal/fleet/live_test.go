package fleet

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/publish"
)

// liveGadget is one gadget of a summary in TestLiveRollupsAsCounterSets.
type liveGadget struct {
	id, image, name  string
	runtime, runs    uint64
	recursionMisses  uint64
	programs, memory int
}

// liveSummary encodes node's summary of interval seq of instance.
func liveSummary(t *testing.T, node, instance string, seq uint64, at time.Time, gadgets []liveGadget, unownedRuntime uint64) msg {
	t.Helper()
	m := publish.SummaryMessage{Unowned: publish.MessageTotals{ProgramCount: 3, Runtime: unownedRuntime, Runcount: unownedRuntime / 10}}
	m.Header = publish.Header{Schema: publish.SchemaVersion, Type: publish.TypeSummary, Node: node, Seq: seq, Time: at,
		Interval: time.Second, Instance: instance}
	for _, g := range gadgets {
		m.Gadgets = append(m.Gadgets, publish.GadgetSummary{
			Gadget: publish.GadgetIdentity{ID: g.id, Name: g.name, Image: g.image},
			Totals: publish.MessageTotals{Runtime: g.runtime, Runcount: g.runs, RecursionMisses: g.recursionMisses,
				RuntimeDelta: 7, CPUPercent: 0.5, MapMemory: uint64(g.memory), MapCount: 1, ProgramCount: g.programs},
		})
	}
	return encode(t, node, publish.TokenSummary, m)
}

// The rollups a summary-only fleet keeps live (top's summary mode, the
// aggregator) are those state.CounterSets gives when observed at every
// print: gadgets that go away, counters that go down (a tracker restarted)
// and nodes that expire never make a cumulative counter go down.
func TestLiveRollupsAsCounterSets(t *testing.T) {
	clock := &fakeClock{t: testTime}
	live := summaryView(clock.now)
	// Rollup and ImageRows observe their rounds in the same counter
	// sets: one observed fleet for each.
	observed := New("bpfstats", time.Second, clock.now)
	observedImages := New("bpfstats", time.Second, clock.now)
	if !live.liveRollups() || observed.liveRollups() {
		t.Fatal("want one fleet with live rollups and one observing them at print")
	}
	g := func(id, image, name string, runtime uint64) liveGadget {
		return liveGadget{id: id, image: image, name: name, runtime: runtime, runs: runtime / 10, recursionMisses: runtime / 100, programs: 2, memory: 4096}
	}
	steps := []struct {
		what  string
		msgs  func(at time.Time) []msg
		after time.Duration
	}{
		{"two nodes", func(at time.Time) []msg {
			return []msg{
				liveSummary(t, "n1", "i1", 1, at, []liveGadget{g("g1", "a", "x", 100), g("g2", "a", "y", 200), g("g3", "b", "x", 300)}, 50),
				liveSummary(t, "n2", "i1", 1, at, []liveGadget{g("g4", "a", "x", 1000), g("g5", "c", "z", 2000)}, 70),
			}
		}, time.Second},
		{"counters grow, order changes", func(at time.Time) []msg {
			return []msg{
				liveSummary(t, "n1", "i1", 2, at, []liveGadget{g("g3", "b", "x", 350), g("g1", "a", "x", 150), g("g2", "a", "y", 250)}, 60),
				liveSummary(t, "n2", "i1", 2, at, []liveGadget{g("g4", "a", "x", 1100), g("g5", "c", "z", 2100)}, 80),
			}
		}, time.Second},
		{"a gadget goes, another's counters go down, an image changes", func(at time.Time) []msg {
			return []msg{
				liveSummary(t, "n1", "i1", 3, at, []liveGadget{g("g1", "a", "x", 160), g("g3", "d", "x", 360)}, 65),
				liveSummary(t, "n2", "i2", 1, at, []liveGadget{g("g4", "a", "x", 10), g("g5", "c", "z", 2200), g("g6", "c", "z", 5)}, 5),
			}
		}, time.Second},
		{"n2 silent, then expired", func(at time.Time) []msg {
			return []msg{liveSummary(t, "n1", "i1", 4, at, []liveGadget{g("g1", "a", "x", 170), g("g3", "d", "x", 370)}, 66)}
		}, 4 * time.Second},
		{"n1 alone", func(at time.Time) []msg {
			return []msg{liveSummary(t, "n1", "i1", 5, at, []liveGadget{g("g1", "a", "x", 180), g("g3", "d", "x", 380)}, 67)}
		}, time.Second},
		{"n2 back", func(at time.Time) []msg {
			return []msg{
				liveSummary(t, "n1", "i1", 6, at, []liveGadget{g("g1", "a", "x", 190)}, 68),
				liveSummary(t, "n2", "i3", 1, at, []liveGadget{g("g4", "a", "x", 20)}, 6),
			}
		}, time.Second},
	}
	for i, step := range steps {
		for _, f := range []*Fleet{live, observed, observedImages} {
			ingestAll(t, f, step.msgs(clock.t))
			f.Expire()
		}
		base := RollupMessage{Seq: uint64(i)}
		gotRollup, wantRollup := live.Rollup(base), observed.Rollup(base)
		if !reflect.DeepEqual(gotRollup, wantRollup) {
			t.Errorf("step %d (%s): live rollup\n%+v\nwant, as observed at print\n%+v", i, step.what, gotRollup, wantRollup)
		}
		if got, want := live.ImageRows("", false), observedImages.ImageRows("", false); !reflect.DeepEqual(got, want) {
			t.Errorf("step %d (%s): live image rows\n%+v\nwant\n%+v", i, step.what, got, want)
		}
		clock.advance(step.after)
	}
	// What n2's first instance counted in image a before it restarted and
	// expired is kept: a's runtime is n1's g1 plus every drop.
	images := live.Rollup(RollupMessage{}).Images
	if len(images) == 0 || images[0].Key != "a" || images[0].Totals.Runtime <= 190+20 {
		t.Errorf("image rows %+v: want image a to keep what gone gadgets counted", images)
	}
}

// BenchmarkRollup measures one aggregator rollup of 10,000 nodes'
// summaries (live rollups).
func BenchmarkRollup(b *testing.B) {
	f := summaryView(nil)
	for i := range 10000 {
		_, s := simNode(b, fmt.Sprintf("n%d", i), 1, time.Now(), fleetShape)
		if err := f.Ingest(s.subject, s.data); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		f.Rollup(RollupMessage{})
	}
}
