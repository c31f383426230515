package loader

import (
	"fmt"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testgadget"
)

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"0", []int{0}},
		{"0-3", []int{0, 1, 2, 3}},
		{"0-1,4,6-7", []int{0, 1, 4, 6, 7}},
	} {
		got, err := parseCPUList(tc.in)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("parseCPUList(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "a", "3-1", "1-"} {
		if got, err := parseCPUList(bad); err == nil {
			t.Errorf("parseCPUList(%q) = %v, want an error", bad, got)
		}
	}
}

func TestDiffCPUs(t *testing.T) {
	for _, tc := range []struct {
		watched, online, added, gone []int
	}{
		{watched: []int{0, 1}, online: []int{0, 1}},
		{watched: []int{0}, online: []int{0, 1, 2}, added: []int{1, 2}},
		{watched: []int{0, 1, 2, 3}, online: []int{0}, gone: []int{1, 2, 3}},
		{watched: []int{0, 2}, online: []int{0, 1}, added: []int{1}, gone: []int{2}},
		{watched: nil, online: []int{3}, added: []int{3}},
	} {
		added, gone := diffCPUs(tc.watched, tc.online)
		if !slices.Equal(added, tc.added) || !slices.Equal(gone, tc.gone) {
			t.Errorf("diffCPUs(%v, %v) = %v, %v; want %v, %v",
				tc.watched, tc.online, added, gone, tc.added, tc.gone)
		}
	}
}

// perfScan runs one CPU scan as Read would.
func perfScan(tb testing.TB, src *perfSource) {
	tb.Helper()
	src.mu.Lock()
	err := src.scanCPUs()
	src.mu.Unlock()
	if err != nil {
		tb.Fatalf("scanning CPUs: %v", err)
	}
}

// perfRingOf returns the source's ring of cpu, nil if none.
func perfRingOf(src *perfSource, cpu int) *perfRing {
	for _, ring := range src.rings {
		if ring.cpu == cpu {
			return ring
		}
	}
	return nil
}

// perfCheckLoadOn loads a program on cpu and waits for its load event,
// and with wantLost for an EventLost too (a loss found by a scan comes last
// in the next read, so right after the load).
func perfCheckLoadOn(t *testing.T, src *perfSource, cpu int, wantLost bool) {
	t.Helper()
	perfPinCPU(t, cpu)
	prog := testgadget.LoadSocketFilter(t, "perf_cpu_load")
	id := testgadget.ProgramID(t, prog)
	events := srcPump(t, src)
	lostSeen := false
	load := srcWaitFor(t, events, fmt.Sprintf("load of program %d on cpu %d", id, cpu), func(ev ProgramEvent) bool {
		lostSeen = lostSeen || ev.Kind == EventLost
		return ev.Kind == EventLoad && ev.ProgramID == id
	})
	if load.Name != "perf_cpu_load" {
		t.Errorf("load name %q, want %q", load.Name, "perf_cpu_load")
	}
	if wantLost && !lostSeen {
		srcWaitFor(t, events, "loss for the CPU attached", func(ev ProgramEvent) bool {
			return ev.Kind == EventLost
		})
	}
}

// TestPerfSourceAttachesCPU opens the source as if only the first CPU were
// online, so a later scan finds the second one coming online: it is
// watched from then on, with a loss reported for what it did before.
func TestPerfSourceAttachesCPU(t *testing.T) {
	cpus, err := onlineCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if len(cpus) < 2 {
		t.Skipf("perf: needs two online CPUs, have %v", cpus)
	}
	scans := 0
	src := perfOpen(t, perfConfig{pages: 16, lostCounter: true, online: func() ([]int, error) {
		scans++
		if scans == 1 {
			return cpus[:1], nil
		}
		return cpus, nil
	}})
	if len(src.rings) != 1 {
		t.Fatalf("%d rings open for one CPU", len(src.rings))
	}
	perfScan(t, src)
	if perfRingOf(src, cpus[1]) == nil {
		t.Fatalf("cpu %d not watched after a scan", cpus[1])
	}
	perfCheckLoadOn(t, src, cpus[1], true)
}

// TestPerfSourceReopensStoppedEvent switches one CPU's event off, as the
// kernel does when the CPU goes offline (and, after a suspend, online
// again before this process runs): a scan that finds its enabled time
// standing still replaces it, reports a loss, and loads on that CPU are
// seen again.
func TestPerfSourceReopensStoppedEvent(t *testing.T) {
	cpu := perfFirstCPU(t)
	src := perfOpen(t, perfConfig{pages: 16, lostCounter: true})
	stopped := perfRingOf(src, cpu)
	if err := unix.IoctlSetInt(stopped.fd, unix.PERF_EVENT_IOC_DISABLE, 0); err != nil {
		t.Fatalf("disabling the event of cpu %d: %v", cpu, err)
	}
	// The first scan may still see time the event ran before it stopped.
	for range 2 {
		perfScan(t, src)
	}
	if perfRingOf(src, cpu) == stopped {
		t.Fatalf("stopped event of cpu %d still in use after two scans", cpu)
	}
	perfCheckLoadOn(t, src, cpu, true)
}
