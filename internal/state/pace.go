package state

import (
	"runtime"

	"github.com/bpfstats/tracker/internal/loader"
)

// Events never wait for a sweep. Under Run, the long kernel reads of a
// sweep run on a goroutine of their own while the loop goes on applying
// events: the program read (handed to the loop in batches of
// readBatchSize reads, which the loop merges between events), the batch
// of map reads and the holders scan (when they are due), and the walk of
// the links. The other phases yield to pending events every yieldEvery
// programs (or maps). So do the settling of owners after a holders scan
// and the building of the snapshot's rows, which at thousands of
// programs take milliseconds, but only to loads of programs the inventory
// does not hold (see yieldLoads): a snapshot is one point in time, and
// such a load changes nothing it sums (the program joins the next
// snapshot); the settling holds programs a release would drop. Any other
// event (a release, a lost-events notice, a load of a program the
// inventory holds) is held back until that phase ends, with the events
// that must follow it (the same program's; all, after a lost-events
// notice). Sweep, outside Run, reads on the calling goroutine.
//
// So a Kernel given to Run must be safe for concurrent use, as
// loader.Kernel is: ReadAllPrograms (or ProgramIDs and ReadPrograms or
// ReadProgram), Holders and ReadAttachments run concurrently with the
// reads of events (ReadProgram, ReadProcess, ReadProgramMetadata,
// CgroupPath). An event that needs such a read may still wait for the
// kernel itself (loader.Kernel serializes its single reads with each
// chunk of a holders scan, about a millisecond, not with the whole
// scan). A lost-events resync (which lists programs, as the program read
// does) waits until the read phase is over.

// readFunc receives one program read; info is valid during the call only.
type readFunc = func(id uint32, info *loader.ProgramInfo, err error)

// pacer runs a sweep's long kernel reads and lets events in between.
type pacer interface {
	// readPrograms runs read, which calls its argument once per program
	// read, and hands each read to each on the sweeping goroutine.
	readPrograms(read func(readFunc) error, each readFunc) error
	// scanHolders runs scan and returns its result.
	scanHolders(scan func() (map[uint32][]uint32, error)) (map[uint32][]uint32, error)
	// offload runs work, which must not touch the Tracker (only the
	// kernel and its own variables), and returns when it is done.
	offload(work func())
	// yield applies the events that arrived.
	yield()
	// yieldLoads applies the loads of new programs that arrived (see
	// loadIsNew), which the snapshot being built may see, and holds back
	// every other event, and the ones that must follow it, for the next
	// yield.
	yieldLoads()
}

// yieldEvery is how many programs a sweep phase handles between two
// yields, and readBatchSize how many reads a batch hands to the loop.
const (
	yieldEvery    = 256
	readBatchSize = 256
)

// inline is the pacer of Sweep: everything on the calling goroutine, no
// events in between.
type inline struct{}

func (inline) readPrograms(read func(readFunc) error, each readFunc) error { return read(each) }

func (inline) scanHolders(scan func() (map[uint32][]uint32, error)) (map[uint32][]uint32, error) {
	return scan()
}

func (inline) offload(work func()) { work() }

func (inline) yield() {}

func (inline) yieldLoads() {}

// readRecord is one program read handed from the reading goroutine to
// the loop; readBatch a batch of them, with their map IDs.
type readRecord struct {
	id   uint32
	info loader.ProgramInfo
	err  error
}

type readBatch struct {
	recs []readRecord
	maps []uint32
}

// add copies one read into b.
func (b *readBatch) add(id uint32, info *loader.ProgramInfo, err error) {
	rec := readRecord{id: id, err: err}
	if info != nil {
		rec.info = *info
		start := len(b.maps)
		b.maps = append(b.maps, info.MapIDs...)
		rec.info.MapIDs = b.maps[start:len(b.maps):len(b.maps)]
	}
	b.recs = append(b.recs, rec)
}

func (b *readBatch) reset() {
	clear(b.recs)
	b.recs, b.maps = b.recs[:0], b.maps[:0]
}

// readPrograms runs read on a goroutine of its own; the loop merges its
// batches and applies events until the read is done.
func (r *runLoop) readPrograms(read func(readFunc) error, each readFunc) error {
	if r.full == nil {
		// Two batches: one filled while the loop merges the other.
		r.full, r.free = make(chan *readBatch), make(chan *readBatch, 2)
		r.free <- new(readBatch)
		r.free <- new(readBatch)
	}
	done := make(chan error, 1)
	go func() {
		b := <-r.free
		err := read(func(id uint32, info *loader.ProgramInfo, err error) {
			b.add(id, info, err)
			if len(b.recs) == readBatchSize {
				r.full <- b
				handOver()
				b = <-r.free
			}
		})
		r.full <- b
		done <- err
	}()
	r.reading = true
	defer func() { r.reading = false }()
	for {
		select {
		case b := <-r.full:
			for i := range b.recs {
				rec := &b.recs[i]
				each(rec.id, &rec.info, rec.err)
			}
			b.reset()
			r.free <- b
		case err := <-done:
			return err
		case ev := <-r.events:
			r.handle(ev)
		}
	}
}

// scanHolders runs scan on a goroutine of its own, applying events until
// it is done.
func (r *runLoop) scanHolders(scan func() (map[uint32][]uint32, error)) (holders map[uint32][]uint32, err error) {
	r.offload(func() { holders, err = scan() })
	return holders, err
}

// offload runs work on a goroutine of its own, applying events until it
// is done.
func (r *runLoop) offload(work func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		work()
	}()
	for {
		select {
		case <-done:
			return
		case ev := <-r.events:
			r.handle(ev)
		}
	}
}

// yield applies the lost-events resyncs held back during a read and the
// events held back during a snapshot, then the events that arrived.
func (r *runLoop) yield() {
	letOthersRun()
	for len(r.lost) > 0 {
		ev := r.lost[0]
		r.lost = r.lost[1:]
		r.handle(ev)
	}
	r.lost = nil
	for len(r.held) > 0 {
		ev := r.held[0]
		r.held = r.held[1:]
		r.handle(ev)
	}
	r.held = nil
	r.drain()
}

// yieldLoads applies the loads of new programs that arrived; every other
// event waits in r.held for yield, and so does a load that a held event
// must precede (see heldBefore): each program's events, and everything
// after a lost-events notice, are applied in the order they came.
func (r *runLoop) yieldLoads() {
	letOthersRun()
	for {
		select {
		case ev := <-r.events:
			if r.t.loadIsNew(ev) && !r.heldBefore(ev) {
				r.handle(ev)
			} else {
				r.held = append(r.held, ev)
			}
		default:
			return
		}
	}
}

// heldBefore reports whether a held event must be applied before ev: a
// lost-events notice (its resync lists every program) or an event of the
// same program. Events of different programs commute: during a load
// storm the sweep's audit adds programs before their load event arrives,
// and such an event, held, must not hold back the loads behind it.
func (r *runLoop) heldBefore(ev loader.ProgramEvent) bool {
	for i := range r.held {
		if h := &r.held[i]; h.Kind == loader.EventLost || h.ProgramID == ev.ProgramID {
			return true
		}
	}
	return false
}

// letOthersRun lets the goroutines that events wait for run before the
// loop goes on: the event reader, woken from epoll_wait, and the OnEvent
// consumer, made ready by the loop's own sends. While the loop builds a
// snapshot it never blocks, and with the other Ps busy (a load storm's
// caller in bpf(2), the sweep's reads) Go's scheduler would run them only
// when the loop's phase ends or its 10 ms slice is up. Measured with
// make bench's freshness at 5000 programs: p99 lower in 4 of 4 paired
// runs (3.8 against 4.5 ms on average).
func letOthersRun() { runtime.Gosched() }

// handOver runs the goroutine that the caller's send just made ready (the
// loop) before the caller goes on, in particular before it blocks in a
// system call (the event reader's epoll_wait, the next chunk of a kernel
// read). Go queues that goroutine on the sender's P, and a P whose
// goroutine sits in a system call is taken over only by the runtime's
// monitor, which sleeps up to 10 ms when the process has been quiet: with
// both Ps of a 2-CPU machine in system calls (the sweep's read and the
// reader's epoll_wait), events waited 5-17 ms in make bench's freshness
// runs at 5000 programs.
func handOver() { runtime.Gosched() }
