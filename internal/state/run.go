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
	r := &runLoop{t: t, cfg: cfg}
	r.events, r.readErr = startReader(ctx, cfg)
	if err := t.startupSnapshot(cfg); err != nil {
		return err
	}
	var stop func()
	r.snapshots, stop = startPublisher(cfg)
	defer stop()
	return r.loop(ctx)
}

// startReader reads cfg.Source on a goroutine of its own, until the source
// is closed, ctx ends or reads failed maxReadFailures times in a row; then
// it sends why it stopped on the error channel.
func startReader(ctx context.Context, cfg RunConfig) (<-chan loader.ProgramEvent, <-chan error) {
	events := make(chan loader.ProgramEvent, eventBuffer)
	readErr := make(chan error, 1)
	go func() {
		readErr <- readEvents(ctx, cfg, events)
	}()
	return events, readErr
}

func readEvents(ctx context.Context, cfg RunConfig, events chan<- loader.ProgramEvent) error {
	failures := 0
	for {
		ev, err := cfg.Source.Read()
		switch {
		case err == nil:
			failures = 0
		case errors.Is(err, loader.ErrClosed) || failures >= maxReadFailures:
			return err
		default:
			// A failed read (a bad record, an interrupted walk) may have
			// cost events: resync, back off, and read on.
			failures++
			cfg.Log.Warn().Err(err).Int("failures", failures).Msg("reading events failed")
			ev = loader.ProgramEvent{Kind: loader.EventLost}
			select {
			case <-time.After(time.Duration(failures) * readBackoff):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		select {
		case events <- ev:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// startupSnapshot fills the inventory with the programs already loaded.
func (t *Tracker) startupSnapshot(cfg RunConfig) error {
	added, _, err := t.Resync()
	if err != nil {
		return err
	}
	cfg.Log.Debug().Int("programs", added).Msg("snapshot of existing programs taken")
	return nil
}

// startPublisher hands snapshots to cfg.OnSnapshot on a goroutine of its
// own. One snapshot may wait while the previous one is published; a slower
// publisher holds up the next sweep, never the events. stop returns once
// the last snapshot sent was handed over.
func startPublisher(cfg RunConfig) (snapshots chan<- *Snapshot, stop func()) {
	ch := make(chan *Snapshot, 1)
	published := make(chan struct{})
	go func() {
		defer close(published)
		for s := range ch {
			if cfg.OnSnapshot != nil {
				cfg.OnSnapshot(s)
			}
		}
	}()
	return ch, func() {
		close(ch)
		<-published
	}
}

// runLoop is the state of one Run's main loop.
type runLoop struct {
	t         *Tracker
	cfg       RunConfig
	events    <-chan loader.ProgramEvent
	readErr   <-chan error
	snapshots chan<- *Snapshot
	sweeps    int
}

// loop sweeps at once, then applies events and sweeps on every tick until
// ctx ends, cfg.Count sweeps are done or the reader stopped.
func (r *runLoop) loop(ctx context.Context) error {
	ticker := time.NewTicker(r.cfg.Interval)
	defer ticker.Stop()
	if r.sweep() {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-r.events:
			r.t.handle(ev, r.cfg)
		case err := <-r.readErr:
			if errors.Is(err, loader.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return err
		case <-ticker.C:
			if r.sweep() {
				return nil
			}
		}
	}
}

// drain applies the events that already arrived.
func (r *runLoop) drain() {
	for {
		select {
		case ev := <-r.events:
			r.t.handle(ev, r.cfg)
		default:
			return
		}
	}
}

// sweep runs one sweep and queues its snapshot; it reports whether that
// was the last sweep cfg.Count asks for.
func (r *runLoop) sweep() bool {
	// Apply what already arrived, so the sweep sees the latest inventory,
	// and keep applying events between its phases.
	r.drain()
	snap, err := r.t.sweep(r.drain)
	r.t.flush(r.cfg)
	if err != nil {
		r.cfg.Log.Warn().Err(err).Msg("sweep incomplete")
	}
	r.snapshots <- snap
	r.sweeps++
	return r.cfg.Count > 0 && r.sweeps >= r.cfg.Count
}

func (t *Tracker) handle(ev loader.ProgramEvent, cfg RunConfig) {
	t.applyEvent(ev)
	defer t.flush(cfg)
	if ev.Kind == loader.EventLost {
		added, removed, err := t.Resync()
		if err != nil {
			cfg.Log.Error().Err(err).Msg("resync after lost events failed")
			return
		}
		cfg.Log.Warn().Uint64("lost", ev.Lost).Int("added", added).Int("removed", removed).
			Msg("events lost, inventory resynced from the kernel")
	}
}
