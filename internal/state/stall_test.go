package state_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
)

// sweepSignalKernel is the real kernel, telling on sweeps each time a
// sweep read the programs: the sign that the run loop is alive while its
// consumers are not.
type sweepSignalKernel struct {
	*loader.Kernel
	sweeps chan struct{}
}

func (k *sweepSignalKernel) ReadAllPrograms(ids []uint32, fn func(uint32, *loader.ProgramInfo, error)) error {
	select {
	case k.sweeps <- struct{}{}:
	default:
	}
	return k.Kernel.ReadAllPrograms(ids, fn)
}

// With OnSnapshot and OnEvent both stalled during a burst of load/close
// cycles, the loop applies every event and sweeps on: once the consumers
// move again the inventory equals the kernel's without a resync, and the
// snapshots and events the consumers could not take are counted.
func TestStalledConsumersKeepInventoryExact(t *testing.T) {
	src := testSource(t)
	kernel, err := loader.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	stats, err := loader.EnableStats()
	if err != nil {
		t.Fatalf("enabling stats: %v", err)
	}
	t.Cleanup(func() { stats.Close() })
	k := &sweepSignalKernel{Kernel: kernel, sweeps: make(chan struct{}, 1)}
	tr := state.New(k, state.Options{Node: "it", Source: src.Name()})

	snapGate, eventGate := make(chan struct{}), make(chan struct{})
	snaps := make(chan *state.Snapshot, 1)
	var published atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- tr.Run(ctx, state.RunConfig{
			Source:     src,
			Interval:   50 * time.Millisecond,
			EventQueue: 256,
			Log:        zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
			OnSnapshot: func(s *state.Snapshot) {
				<-snapGate
				select {
				case <-snaps:
				default:
				}
				snaps <- s
			},
			OnEvent: func(*state.Event) {
				<-eventGate
				published.Add(1)
			},
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tracker run: %v", err)
		}
	})
	// Run waits for the calls in progress: open the gates before that,
	// also when the test fails.
	openSnaps := sync.OnceFunc(func() { close(snapGate) })
	openEvents := sync.OnceFunc(func() { close(eventGate) })
	t.Cleanup(func() { openSnaps(); openEvents() })

	const cycles = 1000
	for range cycles {
		loadProgram(t).Close()
	}
	// Sweeps go on while both consumers stall (the first signal may be
	// old; four fresh ones leave a snapshot replaced).
	for range 5 {
		select {
		case <-k.sweeps:
		case <-time.After(30 * time.Second):
			t.Fatal("sweeps stopped while the consumers stall")
		}
	}
	openSnaps()

	deadline := time.Now().Add(30 * time.Second)
	var inv, ids []uint32
	var last state.Counters
	for time.Now().Before(deadline) {
		snap := <-snaps
		inv = inv[:0]
		for _, r := range snap.Programs {
			inv = append(inv, r.ProgID)
		}
		if ids, err = kernel.ProgramIDs(); err != nil {
			t.Fatal(err)
		}
		c := snap.Counters
		last = c
		if c.Resyncs != 1 || c.EventsLost != 0 {
			t.Fatalf("stalled consumers cost a resync: %+v", c)
		}
		allEvents := src.Name() == loader.SourcePoll || (c.EventsLoad >= cycles && c.EventsRelease >= cycles)
		// The first snapshot, taken before the stall, may already hold
		// every event: only the later ones can count what the stall cost.
		if !slices.Equal(inv, ids) || !allEvents || c.Sweeps < 2 {
			continue
		}
		if c.SnapshotsDropped == 0 || (src.Name() != loader.SourcePoll && c.EventsDropped == 0) {
			t.Fatalf("replaced snapshots and dropped events must be counted: %+v", c)
		}
		t.Logf("inventory of %d programs equals the kernel's with OnEvent stalled (%d events published so far); counters %+v",
			len(inv), published.Load(), c)
		openEvents()
		return
	}
	t.Fatalf("inventory %v never equalled the kernel's %v with all events applied (counters %+v)", inv, ids, last)
}
