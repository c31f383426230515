package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/loader"
)

// RunConfig wires a Tracker to its event source and consumers.
type RunConfig struct {
	// Source delivers load and release events. Run reads it until it is
	// closed or ctx ends; the caller closes it.
	Source loader.Source
	// Interval between sweeps; the first sweep runs at once.
	Interval time.Duration
	// Count stops Run after that many sweeps; 0 runs until ctx ends.
	Count int
	// OnSnapshot receives every sweep's snapshot, in order, on a goroutine
	// of its own: encoding and publishing a large snapshot does not hold up
	// the events meanwhile. Run returns only after the last call returned.
	OnSnapshot func(*Snapshot)
	// OnEvent receives each applied load or release as it arrives.
	OnEvent func(*Event)
	Log     zerolog.Logger
}

// eventBuffer is how many events may wait between the source's reader and
// the loop; the kernel-side rings hold far more.
const eventBuffer = 4096

// A source whose reads keep failing ends Run after maxReadFailures in a row,
// waiting readBackoff longer after each.
const (
	maxReadFailures = 10
	readBackoff     = 100 * time.Millisecond
)

// Run takes the start-up snapshot of the kernel's programs, then applies
// events as they arrive and sweeps every cfg.Interval until ctx ends or
// cfg.Count sweeps are done. The source must already be attached, so that
// nothing loaded between the snapshot and the first event is missed.
func (t *Tracker) Run(ctx context.Context, cfg RunConfig) error {
	if cfg.Interval <= 0 {
		return fmt.Errorf("running tracker: interval must be positive, got %v", cfg.Interval)
	}
	// The reader goroutine outlives Run only until the caller closes the source.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan loader.ProgramEvent, eventBuffer)
	readErr := make(chan error, 1)
	go func() {
		failures := 0
		for {
			ev, err := cfg.Source.Read()
			switch {
			case err == nil:
				failures = 0
			case errors.Is(err, loader.ErrClosed) || failures >= maxReadFailures:
				readErr <- err
				return
			default:
				// A failed read (a bad record, an interrupted walk) may have
				// cost events: resync, back off, and read on.
				failures++
				cfg.Log.Warn().Err(err).Int("failures", failures).Msg("reading events failed")
				ev = loader.ProgramEvent{Kind: loader.EventLost}
				select {
				case <-time.After(time.Duration(failures) * readBackoff):
				case <-ctx.Done():
					readErr <- ctx.Err()
					return
				}
			}
			select {
			case events <- ev:
			case <-ctx.Done():
				readErr <- ctx.Err()
				return
			}
		}
	}()

	added, _, err := t.Resync()
	if err != nil {
		return err
	}
	cfg.Log.Debug().Int("programs", added).Msg("snapshot of existing programs taken")

	// One snapshot may wait while the previous one is published; a slower
	// publisher holds up the next sweep, never the events.
	snapshots := make(chan *Snapshot, 1)
	published := make(chan struct{})
	go func() {
		defer close(published)
		for s := range snapshots {
			if cfg.OnSnapshot != nil {
				cfg.OnSnapshot(s)
			}
		}
	}()
	defer func() {
		close(snapshots)
		<-published
	}()

	ticker := time.NewTicker(cfg.Interval)
	defer ticker.Stop()
	sweeps := 0
	drain := func() {
		for {
			select {
			case ev := <-events:
				t.handle(ev, cfg)
			default:
				return
			}
		}
	}
	sweep := func() bool {
		// Apply what already arrived, so the sweep sees the latest
		// inventory, and keep applying events between its phases.
		drain()
		snap, err := t.sweep(drain)
		if err != nil {
			cfg.Log.Warn().Err(err).Msg("sweep incomplete")
		}
		snapshots <- snap
		sweeps++
		return cfg.Count > 0 && sweeps >= cfg.Count
	}
	if sweep() {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-events:
			t.handle(ev, cfg)
		case err := <-readErr:
			if errors.Is(err, loader.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return err
		case <-ticker.C:
			if sweep() {
				return nil
			}
		}
	}
}

func (t *Tracker) handle(ev loader.ProgramEvent, cfg RunConfig) {
	out := t.Apply(ev)
	if ev.Kind == loader.EventLost {
		added, removed, err := t.Resync()
		if err != nil {
			cfg.Log.Error().Err(err).Msg("resync after lost events failed")
			return
		}
		cfg.Log.Warn().Uint64("lost", ev.Lost).Int("added", added).Int("removed", removed).
			Msg("events lost, inventory resynced from the kernel")
		return
	}
	if out != nil && cfg.OnEvent != nil {
		cfg.OnEvent(out)
	}
}
