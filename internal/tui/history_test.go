package tui

import (
	"fmt"
	"slices"
	"testing"
)

func cpus(s []Sample) []float32 {
	out := make([]float32, len(s))
	for i, v := range s {
		out[i] = v.CPU
	}
	return out
}

func TestHistoryKeepsLastN(t *testing.T) {
	h := NewHistory(4, 10)
	for i := 1; i <= 6; i++ {
		h.Begin()
		h.Record("a", Sample{CPU: float32(i), Runs: float32(10 * i)})
	}
	got := h.Samples("a", h.Tick())
	if want := []float32{3, 4, 5, 6}; !slices.Equal(cpus(got), want) {
		t.Fatalf("samples %v, want %v", cpus(got), want)
	}
	if got[3].Runs != 60 {
		t.Fatalf("runs of the newest %v, want 60", got[3].Runs)
	}
	// An earlier interval: what the paused view shows.
	if got, want := cpus(h.Samples("a", 5)), []float32{3, 4, 5}; !slices.Equal(got, want) {
		t.Fatalf("samples up to 5: %v, want %v", got, want)
	}
	if got := h.Samples("a", 2); got != nil {
		t.Fatalf("samples up to 2 (out of the ring) %v, want none", cpus(got))
	}
	if got := h.Samples("nope", h.Tick()); got != nil {
		t.Fatalf("samples of an unknown row %v", got)
	}
}

func TestHistoryStartsAtFirstSample(t *testing.T) {
	h := NewHistory(5, 10)
	h.Begin()
	h.Record("old", Sample{CPU: 1})
	h.Begin()
	h.Record("old", Sample{CPU: 2})
	h.Record("new", Sample{CPU: 7})
	if got, want := cpus(h.Samples("new", h.Tick())), []float32{7}; !slices.Equal(got, want) {
		t.Fatalf("a new row's samples %v, want %v", got, want)
	}
	// A second record in one interval replaces the first.
	h.Record("new", Sample{CPU: 8})
	if got, want := cpus(h.Samples("new", h.Tick())), []float32{8}; !slices.Equal(got, want) {
		t.Fatalf("after a second record: %v, want %v", got, want)
	}
}

func TestHistoryGapsAreZero(t *testing.T) {
	h := NewHistory(5, 10)
	h.Begin()
	h.Record("a", Sample{CPU: 1})
	h.Begin() // a is absent
	h.Begin() // a is absent
	if got, want := cpus(h.Samples("a", h.Tick())), []float32{1, 0, 0}; !slices.Equal(got, want) {
		t.Fatalf("absent intervals: %v, want %v", got, want)
	}
	h.Begin()
	h.Record("a", Sample{CPU: 4})
	if got, want := cpus(h.Samples("a", h.Tick())), []float32{1, 0, 0, 4}; !slices.Equal(got, want) {
		t.Fatalf("back after a gap: %v, want %v", got, want)
	}
	// A gap as long as the ring (the row is not dropped yet) leaves only
	// zeros and the new sample.
	for range 5 {
		h.Begin()
	}
	h.Record("a", Sample{CPU: 9})
	if got, want := cpus(h.Samples("a", h.Tick())), []float32{0, 0, 0, 0, 9}; !slices.Equal(got, want) {
		t.Fatalf("after a long gap: %v, want %v", got, want)
	}
}

func TestHistoryDropsVanishedRows(t *testing.T) {
	h := NewHistory(3, 10)
	h.Begin()
	h.Record("gone", Sample{CPU: 1})
	h.Record("stays", Sample{CPU: 1})
	for i := range 3 {
		h.Begin()
		h.Record("stays", Sample{CPU: 1})
		if h.Len() != 2 {
			t.Fatalf("after %d intervals without it the row was dropped early (%d rows)", i+1, h.Len())
		}
	}
	h.Begin()
	if h.Len() != 1 || h.Samples("gone", h.Tick()) != nil {
		t.Fatalf("a row absent for 4 intervals of 3 is still tracked (%d rows)", h.Len())
	}
}

func TestHistoryCapsRows(t *testing.T) {
	h := NewHistory(2, 3)
	h.Begin()
	for i := range 5 {
		h.Record(fmt.Sprint("row", i), Sample{CPU: 1})
	}
	if h.Len() != 3 || h.Refused != 2 {
		t.Fatalf("%d rows tracked, %d refused; want 3 and 2", h.Len(), h.Refused)
	}
	// Once rows vanish, new ones are tracked again.
	for range 3 {
		h.Begin()
	}
	h.Record("late", Sample{CPU: 1})
	if h.Samples("late", h.Tick()) == nil {
		t.Fatalf("a row was refused after the others were dropped")
	}
}

func TestHistoryDefaults(t *testing.T) {
	h := NewHistory(0, 0)
	if h.Size() != DefaultHistory || h.maxSeries != DefaultMaxSeries {
		t.Fatalf("defaults %d, %d", h.Size(), h.maxSeries)
	}
}

func TestSparkline(t *testing.T) {
	for _, tc := range []struct {
		values []float64
		width  int
		top    float64
		want   string
	}{
		{[]float64{0, 1, 2, 4, 8}, 5, 0, " ▁▂▄█"},
		{[]float64{0, 0}, 4, 0, "    "},
		{[]float64{0.001, 100}, 2, 0, "▁█"},
		{[]float64{1, 2, 3, 4}, 2, 0, "▆█"},
		{[]float64{1, 4, 16}, 3, 16, "▁▂█"},
		{[]float64{1, 2}, 2, 16, "▁▁"},
		{nil, 0, 0, ""},
	} {
		if got := sparkline(tc.values, tc.width, tc.top); got != tc.want {
			t.Errorf("sparkline(%v, %d) = %q, want %q", tc.values, tc.width, got, tc.want)
		}
	}
}

func TestChart(t *testing.T) {
	got := chart([]float64{1, 2, 4}, 4, 2)
	// 1 of 4 over 16 eighths is 4 eighths: half the lower cell.
	want := []string{"   █", " ▄██"}
	if !slices.Equal(got, want) {
		t.Fatalf("chart = %q, want %q", got, want)
	}
}
