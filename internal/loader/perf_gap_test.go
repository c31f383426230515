package loader

import (
	"fmt"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/testgadget"
)

// TestPerfSourceGap stops reading, loads programs with 15-character names
// on one CPU, then reads: every load arrives, with its name from the
// KSYMBOL record, or the source reports a loss; never a silent gap.
//
// Each load writes a 96-byte KSYMBOL and a 48-byte BPF_EVENT. An 8-page
// ring holds 227 loads and then has 80 bytes free: the next KSYMBOL is
// refused, a BPF_EVENT would fit but none follows, and no PERF_RECORD_LOST
// is written. The default 512-page ring ends the same way after 14,563
// loads; a reader that took "less room than a BPF_EVENT" for full missed it.
func TestPerfSourceGap(t *testing.T) {
	for _, tc := range []struct {
		loads   int
		counter bool
	}{
		{loads: 200, counter: true},
		{loads: 2000, counter: true},
		{loads: 200, counter: false},
		{loads: 2000, counter: false},
	} {
		t.Run(fmt.Sprintf("%d loads, lost counter %v", tc.loads, tc.counter), func(t *testing.T) {
			perfCheckGap(t, tc.loads, perfConfig{pages: 8, lostCounter: tc.counter})
		})
	}
}

func perfCheckGap(t *testing.T, loads int, cfg perfConfig) {
	perfPinCPU(t, perfFirstCPU(t))
	src := perfOpen(t, cfg)
	names := make(map[uint32]string, loads)
	for i := range loads {
		name := fmt.Sprintf("gapload_%07d", i) // 15 characters, the most
		names[testgadget.ProgramID(t, testgadget.LoadSocketFilter(t, name))] = name
	}

	events := srcPump(t, src)
	seen := make(map[uint32]bool, loads)
	var lost *ProgramEvent
	timeout := time.After(srcDeadline)
	for len(seen) < loads && lost == nil {
		select {
		case ev := <-events:
			want, ours := names[ev.ProgramID]
			switch {
			case ev.Kind == EventLost:
				lost = &ev
			case ev.Kind != EventLoad || !ours:
			case ev.Name != want:
				t.Errorf("load of program %d named %q, want %q", ev.ProgramID, ev.Name, want)
				seen[ev.ProgramID] = true
			default:
				seen[ev.ProgramID] = true
			}
		case <-timeout:
			t.Fatalf("%d of %d loads read and no loss reported after %v: a silent gap",
				len(seen), loads, srcDeadline)
		}
	}
	// A loss comes after every event of the read that found it: all loads
	// that were in the ring are in seen.
	missing := loads - len(seen)
	switch {
	case lost == nil:
		t.Logf("all %d loads read", loads)
	case missing == 0 && cfg.lostCounter:
		t.Errorf("all %d loads read, yet a loss of %d reported", loads, lost.Lost)
	case cfg.lostCounter && lost.Lost < uint64(missing):
		t.Errorf("%d loads missing, but a loss of only %d records reported", missing, lost.Lost)
	default:
		t.Logf("%d of %d loads read, then a loss of %d records", len(seen), loads, lost.Lost)
	}
}
