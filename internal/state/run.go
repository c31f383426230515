package state

import (
	"cmp"
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
	// OnSnapshot receives the sweeps' snapshots, in order, on a goroutine
	// of its own, so that encoding and publishing never hold up the loop
	// that applies events. With Count 0, a snapshot still waiting when the
	// next one is ready is replaced by it (Counters.SnapshotsDropped): a
	// slow consumer gets fewer, fresher snapshots. With Count > 0 every
	// snapshot is handed over, the loop waiting for the consumer when it
	// must (applying events meanwhile): a bounded run prints every table
	// it was asked for.
	OnSnapshot func(*Snapshot)
	// OnEvent receives each applied load or release, in order, on a
	// goroutine of its own, through a queue of EventQueue events. When the
	// queue is full the event is dropped for OnEvent only
	// (Counters.EventsDropped); the inventory applied it.
	OnEvent func(*Event)
	// EventQueue is how many events may wait for OnEvent; 0 means
	// DefaultEventQueue.
	EventQueue int
	// RecycleSnapshots promises that OnSnapshot keeps nothing of a
	// snapshot's Programs slice after it returns (the rows it points to
	// are never written and may be kept): Run then builds a later
	// snapshot's list of rows in the same storage, saving an allocation of
	// 24 bytes per program per sweep (its row pointer and versions).
	RecycleSnapshots bool
	Log              zerolog.Logger
}

// DefaultEventQueue is the default RunConfig.EventQueue: a few seconds of
// a load storm, about 3 MiB of events at most.
const DefaultEventQueue = 16384

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
//
// No OnSnapshot or OnEvent call runs after Run returned. When Run ends on
// its own (Count sweeps done, the source closed or failing), it first
// hands over every queued event and the last snapshot. When ctx ends it
// waits only for the calls in progress: what is still queued is dropped
// and counted, so that a stalled consumer cannot hold up a shutdown for
// more than its current call.
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
	r.startConsumers()
	err := r.loop(ctx)
	r.stopConsumers(ctx.Err() != nil)
	return err
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
			handOver()
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

// runLoop is the state of one Run's main loop.
type runLoop struct {
	t       *Tracker
	cfg     RunConfig
	events  <-chan loader.ProgramEvent
	readErr <-chan error
	// snapshots and published hand snapshots and events to the consumers;
	// nil when the config has none.
	snapshots *consumer[*Snapshot]
	published *consumer[*Event]
	sweeps    int
	// full and free pass the batches of a sweep's program read between
	// the reading goroutine and the loop; reading is set meanwhile, and
	// lost holds the lost-events notices held back until it is over (see
	// pace.go).
	full, free chan *readBatch
	reading    bool
	lost       []loader.ProgramEvent
	// held are the events a snapshot in progress held back (see
	// yieldLoads).
	held []loader.ProgramEvent
	// spare returns the storage of snapshots OnSnapshot is done with
	// (RecycleSnapshots).
	spare chan snapshotStorage
}

// snapshotStorage is the storage of a snapshot's program rows and
// versions, reused; both are empty.
type snapshotStorage struct {
	rows     []*Row
	versions []uint64
}

// storageOf returns the storage of snap, which no consumer uses any more.
func storageOf(snap *Snapshot) snapshotStorage {
	return snapshotStorage{snap.Programs[:0], snap.versions[:0]}
}

// recycle hands the storage of snap, which no consumer uses any more, to
// the sweeps; it is dropped when two are waiting already.
func (r *runLoop) recycle(snap *Snapshot) {
	select {
	case r.spare <- storageOf(snap):
	default:
	}
}

// startConsumers starts the goroutines of OnSnapshot and OnEvent.
func (r *runLoop) startConsumers() {
	if fn := r.cfg.OnSnapshot; fn != nil {
		if r.cfg.RecycleSnapshots {
			r.spare = make(chan snapshotStorage, 2)
			fn = func(snap *Snapshot) {
				r.cfg.OnSnapshot(snap)
				r.recycle(snap)
			}
		}
		r.snapshots = startConsumer(1, fn)
	}
	if r.cfg.OnEvent != nil {
		r.published = startConsumer(cmp.Or(r.cfg.EventQueue, DefaultEventQueue), r.cfg.OnEvent)
	}
}

// stopConsumers waits for the consumers, after they took what is queued
// unless discard is set; what they did not take is counted as dropped.
func (r *runLoop) stopConsumers(discard bool) {
	if r.snapshots != nil {
		r.t.counters.SnapshotsDropped += uint64(r.snapshots.stop(discard))
	}
	if r.published != nil {
		r.t.counters.EventsDropped += uint64(r.published.stop(discard))
	}
}

// loop sweeps at once, then applies events and sweeps on every tick until
// ctx ends, cfg.Count sweeps are done or the reader stopped.
func (r *runLoop) loop(ctx context.Context) error {
	ticker := time.NewTicker(r.cfg.Interval)
	defer ticker.Stop()
	if r.sweep(ctx) {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-r.events:
			r.handle(ev)
		case err := <-r.readErr:
			if errors.Is(err, loader.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return err
		case <-ticker.C:
			if r.sweep(ctx) {
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
			r.handle(ev)
		default:
			return
		}
	}
}

// sweep runs one sweep and queues its snapshot; it reports whether that
// was the last sweep cfg.Count asks for.
func (r *runLoop) sweep(ctx context.Context) bool {
	// Apply what already arrived, so the sweep sees the latest inventory,
	// and keep applying events during it.
	r.drain()
	select {
	case st := <-r.spare:
		r.t.spare = st
	default:
	}
	snap, err := r.t.sweep(r)
	r.flush()
	if err != nil {
		r.cfg.Log.Warn().Err(err).Msg("sweep incomplete")
	}
	r.sweeps++
	last := r.cfg.Count > 0 && r.sweeps >= r.cfg.Count
	switch {
	case r.snapshots == nil:
	case r.cfg.Count > 0:
		if !r.handOver(ctx, snap) {
			r.t.counters.SnapshotsDropped++
		}
	default:
		if old := r.snapshots.replace(snap); old != nil {
			r.t.counters.SnapshotsDropped++
			if r.spare != nil {
				r.recycle(old)
			}
		}
	}
	return last
}

// handOver queues snap for OnSnapshot, applying events while it waits for
// room; it reports false when ctx ended first.
func (r *runLoop) handOver(ctx context.Context, snap *Snapshot) bool {
	for {
		select {
		case r.snapshots.queue <- snap:
			return true
		case ev := <-r.events:
			r.handle(ev)
		case <-ctx.Done():
			return false
		}
	}
}

// handle applies one event and queues what consumers should be told.
func (r *runLoop) handle(ev loader.ProgramEvent) {
	if ev.Kind == loader.EventLost && r.reading {
		// Its resync lists the programs, as the read in progress does:
		// after the read (yield).
		r.lost = append(r.lost, ev)
		return
	}
	t := r.t
	t.applyEvent(ev)
	defer r.flush()
	if ev.Kind == loader.EventLost {
		added, removed, err := t.Resync()
		if err != nil {
			r.cfg.Log.Error().Err(err).Msg("resync after lost events failed")
			return
		}
		r.cfg.Log.Warn().Uint64("lost", ev.Lost).Int("added", added).Int("removed", removed).
			Msg("events lost, inventory resynced from the kernel")
	}
}

// flush queues the events the inventory produced (loads, releases, and
// the releases a sweep or resync found) for OnEvent, in order, without
// ever waiting: a full queue drops and counts.
func (r *runLoop) flush() {
	cfg := r.cfg
	cfg.OnEvent = func(ev *Event) {
		if r.published != nil && !r.published.offer(ev) {
			r.t.counters.EventsDropped++
		}
	}
	r.t.flush(cfg)
}

// consumer hands values to a function on a goroutine of its own, in the
// order they were queued. One goroutine (the run loop) queues; stop ends
// it.
type consumer[T any] struct {
	queue chan T
	// quit tells the goroutine to stop before the queue is empty; done
	// is closed when it returned.
	quit, done chan struct{}
}

func startConsumer[T any](size int, fn func(T)) *consumer[T] {
	c := &consumer[T]{queue: make(chan T, size), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			// Checked first: a select between a ready queue and quit
			// picks either.
			select {
			case <-c.quit:
				return
			default:
			}
			select {
			case v, ok := <-c.queue:
				if !ok {
					return
				}
				fn(v)
			case <-c.quit:
				return
			}
		}
	}()
	return c
}

// offer queues v unless the queue is full, and reports whether it did.
func (c *consumer[T]) offer(v T) bool {
	select {
	case c.queue <- v:
		return true
	default:
		return false
	}
}

// replace queues v in a queue of one, in place of the value still waiting
// there, if any; it returns the value it replaced (the zero value when
// none).
func (c *consumer[T]) replace(v T) (replaced T) {
	if c.offer(v) {
		return replaced
	}
	select {
	case replaced = <-c.queue:
	default:
		// The consumer took it meanwhile.
	}
	// The queue is empty now and only this goroutine fills it: this send
	// cannot block.
	c.queue <- v
	return replaced
}

// stop waits until the goroutine returned: after it handed over all that
// is queued, or only the value in hand when discard is set. It returns how
// many queued values were never handed over.
func (c *consumer[T]) stop(discard bool) int {
	if discard {
		close(c.quit)
	}
	close(c.queue)
	<-c.done
	n := 0
	for range c.queue {
		n++
	}
	return n
}
