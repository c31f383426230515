package publish

import (
	"testing"

	"github.com/bpfstats/tracker/internal/publish/metricstest"
	"github.com/bpfstats/tracker/internal/state"
)

// gadgetSnapshot is a snapshot of gadget rows only: id, name, image and
// cumulative runcount and runtime per gadget.
func gadgetSnapshot(rows ...[5]any) *state.Snapshot {
	snap := &state.Snapshot{}
	for _, r := range rows {
		snap.Gadgets = append(snap.Gadgets, state.Row{
			GadgetID: r[0].(string), GadgetName: r[1].(string), GadgetImage: r[2].(string),
			Totals: state.Totals{Runcount: uint64(r[3].(int)), Runtime: uint64(r[4].(int))},
		})
	}
	return snap
}

// The seed's runcount_total and runtime_total of one label set never go
// down while instances with those labels come and go, and the increase
// between two scrapes is what the live instances really ran: rate() shows
// no spike when an instance leaves.
func TestMetricsCountersNeverDecreaseAcrossInstances(t *testing.T) {
	m, err := NewMetrics(MetricsOptions{OmitRuntimeMetrics: true})
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{labelGadgetName: "trace", labelGadgetImage: "trace:1", labelProgName: ""}
	steps := []struct {
		name       string
		snap       *state.Snapshot
		runs, time float64
	}{
		{"two instances", gadgetSnapshot(
			[5]any{"a", "trace", "trace:1", 1000, 50000},
			[5]any{"b", "trace", "trace:1", 400, 20000}), 1400, 70000},
		{"a runs on, b exits", gadgetSnapshot(
			[5]any{"a", "trace", "trace:1", 1100, 55000}), 1500, 75000},
		{"b restarts as c", gadgetSnapshot(
			[5]any{"a", "trace", "trace:1", 1200, 60000},
			[5]any{"c", "trace", "trace:1", 10, 300}), 1610, 80300},
		{"a's own totals drop (a bug upstream): the series stays flat", gadgetSnapshot(
			[5]any{"a", "trace", "trace:1", 900, 40000},
			[5]any{"c", "trace", "trace:1", 10, 300}), 1610, 80300},
		{"everyone gone, then d", gadgetSnapshot(), 0, 0},
		{"d", gadgetSnapshot(
			[5]any{"d", "trace", "trace:1", 5, 100}), 1615, 80400},
	}
	var lastRuns, lastTime float64
	for _, step := range steps {
		if err := m.Publish(step.snap); err != nil {
			t.Fatal(err)
		}
		mfs := scrapeMetrics(t, m)
		if len(step.snap.Gadgets) == 0 {
			if got := metricstest.Find(mfs, "runcount_total", labels); len(got) != 0 {
				t.Errorf("%s: series exported without a live gadget", step.name)
			}
			continue
		}
		runs, err := metricstest.Value(mfs, "runcount_total", labels)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		rt, err := metricstest.Value(mfs, "runtime_total", labels)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if runs != step.runs || rt != step.time {
			t.Errorf("%s: runcount_total %v runtime_total %v, want %v and %v", step.name, runs, rt, step.runs, step.time)
		}
		if runs < lastRuns || rt < lastTime {
			t.Errorf("%s: counters went down: runcount %v -> %v, runtime %v -> %v", step.name, lastRuns, runs, lastTime, rt)
		}
		lastRuns, lastTime = runs, rt
	}
}
