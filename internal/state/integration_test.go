package state_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
)

// These tests run the inventory on the real kernel with a real event
// source: on the host the one auto picks (perf under lockdown), in the
// qemu kernel matrix the one TRACKER_TEST_SOURCE forces (fentry).

func testSource(t *testing.T) loader.Source {
	t.Helper()
	if err := loader.CheckPrivileges(); err != nil {
		t.Skip("needs root: ", err)
	}
	name := os.Getenv("TRACKER_TEST_SOURCE")
	if name == "" {
		name = loader.SourceAuto
	}
	src, err := loader.OpenSource(name, loader.SourceOptions{PollInterval: 50 * time.Millisecond, Logf: t.Logf})
	if err != nil {
		t.Fatalf("opening source %s: %v", name, err)
	}
	t.Cleanup(func() { src.Close() })
	t.Logf("integration source=%s", src.Name())
	return src
}

func loadProgram(t *testing.T) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "tk_state_it",
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatalf("loading program: %v", err)
	}
	return prog
}

// runTracker runs the inventory in the background and hands each snapshot
// to the test.
func runTracker(t *testing.T, src loader.Source) (*state.Tracker, <-chan *state.Snapshot) {
	t.Helper()
	return runTrackerEvents(t, src, nil)
}

// runTrackerEvents is runTracker handing each published event to onEvent.
func runTrackerEvents(t *testing.T, src loader.Source, onEvent func(*state.Event)) (*state.Tracker, <-chan *state.Snapshot) {
	t.Helper()
	kernel, err := loader.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	stats, err := loader.EnableStats()
	if err != nil {
		t.Fatalf("enabling stats: %v", err)
	}
	t.Cleanup(func() { stats.Close() })
	tr := state.New(kernel, state.Options{Node: "it", Source: src.Name()})
	snaps := make(chan *state.Snapshot, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- tr.Run(ctx, state.RunConfig{
			Source:   src,
			Interval: 50 * time.Millisecond,
			Log:      zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
			OnEvent:  onEvent,
			OnSnapshot: func(s *state.Snapshot) {
				select {
				case <-snaps:
				default:
				}
				snaps <- s
			},
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tracker run: %v", err)
		}
	})
	return tr, snaps
}

// After a burst of load/close cycles, the inventory equals the kernel's
// program list: nothing missed, nothing stale.
func TestInventoryMatchesKernelAfterBurst(t *testing.T) {
	src := testSource(t)
	_, snaps := runTracker(t, src)
	<-snaps

	const cycles = 1000
	for range cycles {
		loadProgram(t).Close()
	}
	kernel, _ := loader.NewKernel("")
	deadline := time.Now().Add(30 * time.Second)
	var inv, ids []uint32
	var last state.Counters
	for time.Now().Before(deadline) {
		snap := <-snaps
		inv = inv[:0]
		for _, r := range snap.Programs {
			inv = append(inv, r.ProgID)
		}
		var err error
		if ids, err = kernel.ProgramIDs(); err != nil {
			t.Fatal(err)
		}
		// Wait for every event to be applied: until then the two may agree
		// by chance (loads and releases cancel out).
		c := snap.Counters
		// Polling misses programs shorter-lived than its interval: there
		// only the end state can be asked for.
		allEvents := src.Name() == loader.SourcePoll || (c.EventsLoad >= cycles && c.EventsRelease >= cycles)
		if slices.Equal(inv, ids) && allEvents {
			t.Logf("inventory of %d programs equals the kernel's after %d load/close cycles (%d loads, %d releases, %d lost, %d resyncs)",
				len(inv), cycles, c.EventsLoad, c.EventsRelease, c.EventsLost, c.Resyncs)
			return
		}
		last = c
	}
	t.Fatalf("inventory %v never equalled the kernel's %v with all events applied (counters %+v)", inv, ids, last)
}

// A program that runs shows rising run time and count across sweeps.
func TestSweepsSeeRisingStats(t *testing.T) {
	src := testSource(t)
	_, snaps := runTracker(t, src)
	prog := loadProgram(t)
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	find := func(s *state.Snapshot) (state.Row, bool) {
		for _, r := range s.Programs {
			if r.ProgID == uint32(id) {
				return *r, true
			}
		}
		return state.Row{}, false
	}
	var first state.Row
	for ok := false; !ok; first, ok = find(<-snaps) {
	}
	// BPF_PROG_TEST_RUN with repeat counts in run stats.
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64), Repeat: 1000}); err != nil {
		t.Fatalf("running program: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		r, ok := find(<-snaps)
		if ok && r.Runcount >= first.Runcount+1000 && r.Runtime > first.Runtime {
			return
		}
	}
	t.Fatalf("program %d stats did not rise by 1000 runs", id)
}
