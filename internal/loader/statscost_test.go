package loader

import (
	"errors"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/testutil"
)

// skipWithoutStats skips on kernels without BPF_ENABLE_STATS.
func skipWithoutStats(t *testing.T) {
	t.Helper()
	stats, err := EnableStats()
	testutil.SkipIfUnknownAttachType(t, err, "BPF_ENABLE_STATS")
	if err := stats.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestMeasureStatsCost(t *testing.T) {
	skipWithoutStats(t)
	cost, err := MeasureStatsCost()
	testutil.SkipIfUnsupported(t, err, "stats cost")
	// A sanity bound, not a timing assertion: two clock reads and a
	// counter update are tens of nanoseconds, nowhere near 10 µs.
	if cost <= 0 || cost >= 10*time.Microsecond {
		t.Fatalf("stats cost per run = %v, want in (0, 10µs)", cost)
	}
	t.Logf("stats cost per run: %v", cost)
}

func TestMeasureStatsCostWithStatsOn(t *testing.T) {
	skipWithoutStats(t)
	stats, err := EnableStats()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stats.Close() })
	if _, err := MeasureStatsCost(); !errors.Is(err, ErrStatsAlreadyOn) {
		t.Fatalf("with stats held on: err = %v, want ErrStatsAlreadyOn", err)
	}
}
