package state

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// AuditReader is an extension point of Kernel: a kernel that lists every
// program in the same pass that reads the ones asked for (loader.Kernel,
// with the bpf_prog iterator or a BPF_PROG_GET_NEXT_ID walk) implements
// it, and Sweep's audit then costs no second listing.
type AuditReader interface {
	// ReadAllPrograms calls fn once for every ID of ids, as
	// BatchReader.ReadPrograms, and once for every other program the
	// kernel lists, with its info.
	ReadAllPrograms(ids []uint32, fn func(id uint32, info *loader.ProgramInfo, err error)) error
}

// Resync makes the inventory equal to the kernel's program list: programs
// the events missed are added (their owner is settled by the next sweep's
// holders scan) and programs that are gone are removed (their release
// published if their load was). It is the start-up snapshot and the
// answer to lost events.
func (t *Tracker) Resync() (added, removed int, err error) {
	ids, err := t.kernel.ProgramIDs()
	if err != nil {
		return 0, 0, fmt.Errorf("resync: %w", err)
	}
	clear(t.seen)
	if len(t.programs) == 0 {
		// The first listing (a one-shot, a daemon's start): sized once
		// rather than grown and rehashed through every power of two.
		t.programs = make(map[uint32]*program, len(ids))
		t.seen = make(map[uint32]struct{}, len(ids))
	}
	for _, id := range ids {
		t.seen[id] = struct{}{}
		if _, ok := t.programs[id]; !ok && t.goneMatch(id, [8]byte{}) == nil {
			t.insert(&program{id: id})
			added++
		}
	}
	for id, p := range t.programs {
		if _, ok := t.seen[id]; !ok {
			t.drop(p, nil)
			removed++
		}
	}
	t.counters.Resyncs++
	return added, removed, nil
}

// Recycle hands the storage of snap's list of program rows to the next
// Sweep, which then builds its snapshot without allocating it again, as Run
// does with RunConfig.RecycleSnapshots: for a caller of Sweep that is done
// with snap. snap must not be used after. Not for use while Run runs.
func (t *Tracker) Recycle(snap *Snapshot) {
	if snap != nil && snap.versions != nil {
		t.spare = storageOf(snap)
	}
}

// Sweep reads the stats of every program in the inventory and the maps they
// use, settles ownership, and returns the resulting Snapshot. Every sweep
// is also an audit: the same read lists the kernel's programs, and the
// inventory is made equal to that list (programs it missed are added,
// read and given an owner from their holders; programs gone are removed).
// Failed reads of programs that still exist, and a failed scan of holders,
// are returned joined in the error, with the snapshot still valid (such
// programs keep their previous values). The events a sweep causes (the
// releases of published programs it found gone) go to Run's OnEvent;
// outside Run they are dropped.
func (t *Tracker) Sweep() (*Snapshot, error) {
	snap, err := t.sweep(inline{})
	clear(t.outbox)
	t.outbox = t.outbox[:0]
	return snap, err
}

// auditCount is what one sweep's audit repaired.
type auditCount struct{ added, removed int }

// sweep is Sweep with its long kernel reads run by pace, which lets Run
// apply the events that arrive meanwhile (see pace.go). A program loaded
// meanwhile gets its first read next sweep, unless the read lists it.
func (t *Tracker) sweep(pace pacer) (*Snapshot, error) {
	t.pace = pace
	defer func() { t.pace = nil }()
	start := t.opts.now()
	var errs []error
	t.holdersScanned, t.memlockChanged = false, false
	// The registry before the programs, applied right after them.
	regErr := t.readRegistry()
	if err := t.readAll(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, regErr, t.applyRegistry())
	pace.yield()
	t.readMaps()
	pace.yield()
	if err := t.settleOwners(); err != nil {
		errs = append(errs, err)
	}
	pace.yield()
	end := t.opts.now()
	took := end.Sub(start)
	links, err := t.walkLinks(&took)
	if err != nil {
		errs = append(errs, err)
	}
	snap := t.snapshot(end, links)
	snap.SweepDuration = took
	if !t.lastSweep.IsZero() {
		snap.Elapsed = end.Sub(t.lastSweep)
	}
	t.lastSweep = end
	t.expireGone()
	t.counters.Sweeps++
	snap.Counters = t.counters
	// The events the snapshot held back, for the next one.
	pace.yield()
	return snap, errors.Join(errs...)
}

// readMaps reads the maps the programs use (new ones, and the memlock of
// those that allocate as they grow) and forgets the maps no program uses.
//
// A sweep after which no program came, went or changed its maps, and
// that knows no map whose memlock grows, has nothing to read or forget.
func (t *Tracker) readMaps() {
	if !t.mapsStale && t.growingMaps == 0 {
		return
	}
	// Thousands of maps: these passes yield as the loop over programs
	// does (maps added or deleted meanwhile are fine for range).
	n := 0
	for _, m := range t.maps {
		m.used = false
		t.yieldEach(&n)
	}
	t.batchReadMaps()
	for i, p := range t.sortedPrograms() {
		if i%yieldEvery == yieldEvery-1 {
			// The order stays valid: events only mark it stale. A program
			// released meanwhile keeps its maps one sweep more.
			t.pace.yield()
		}
		for _, mid := range p.info.MapIDs {
			t.mapInfo(mid)
		}
	}
	t.growingMaps = 0
	for id, m := range t.maps {
		t.yieldEach(&n)
		switch {
		case !m.used:
			delete(t.maps, id)
		case m.info.MemlockGrows():
			t.growingMaps++
		}
	}
	t.mapsStale = false
}

// yieldEach yields to events every yieldEvery calls, counted in n.
func (t *Tracker) yieldEach(n *int) {
	if *n++; *n%yieldEvery == 0 {
		t.pace.yield()
	}
}

// readAll reads every program of the inventory and audits it against the
// kernel's list, in one pass where the kernel is an AuditReader.
func (t *Tracker) readAll() error {
	var errs []error
	now := t.opts.now()
	t.audit = auditCount{}
	order := t.sortedPrograms()
	cursor := 0
	// lookup finds a program of the inventory: the kernel lists programs
	// in ID order, so a cursor over order finds most of them without a
	// map lookup, while order is the inventory (no event or repair
	// changed it since).
	lookup := func(id uint32) (*program, bool) {
		if !t.orderStale {
			for cursor < len(order) && order[cursor].id < id {
				cursor++
			}
			if cursor < len(order) && order[cursor].id == id {
				return order[cursor], true
			}
		}
		p, ok := t.programs[id]
		return p, ok
	}
	each := func(id uint32, info *loader.ProgramInfo, err error) {
		p, ok := lookup(id)
		if rerr := t.audited(p, ok, id, info, err, now); rerr != nil {
			errs = append(errs, rerr)
		}
	}
	ids := t.ids // not changed before the next sweep
	if err := t.pace.readPrograms(func(fn readFunc) error { return t.readKernel(ids, fn) }, each); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// readKernel reads the programs of ids and the others the kernel lists,
// calling fn for each, in one pass where the kernel is an AuditReader.
// It calls nothing but the kernel: Run runs it on a goroutine of its own.
func (t *Tracker) readKernel(ids []uint32, fn readFunc) error {
	if ar, ok := t.kernel.(AuditReader); ok {
		if err := ar.ReadAllPrograms(ids, fn); err != nil {
			return fmt.Errorf("reading programs: %w", err)
		}
		return nil
	}
	// List, then read the union: a program listed and gone by its read
	// was never seen.
	var errs []error
	listed, err := t.kernel.ProgramIDs()
	if err != nil {
		errs = append(errs, fmt.Errorf("listing programs: %w", err))
	}
	union := append(listed, ids...)
	slices.Sort(union)
	union = slices.Compact(union)
	if br, ok := t.kernel.(BatchReader); ok {
		if err := br.ReadPrograms(union, fn); err != nil {
			errs = append(errs, fmt.Errorf("reading programs: %w", err))
		}
		return errors.Join(errs...)
	}
	var info loader.ProgramInfo
	for _, id := range union {
		var err error
		info, err = t.kernel.ReadProgram(id)
		fn(id, &info, err)
	}
	return errors.Join(errs...)
}

// audited applies one program read of the audit: id is in the inventory
// (as p, when ok), in the kernel, or both.
func (t *Tracker) audited(p *program, ok bool, id uint32, info *loader.ProgramInfo, err error, now time.Time) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		if ok {
			t.drop(p, nil)
			t.audit.removed++
			t.counters.RepairsRemoved++
		}
		return nil
	case err != nil:
		if !ok {
			return nil // listed, unreadable: the next sweep tries again
		}
		return fmt.Errorf("reading program %d: %w", id, err)
	case ok && tagsMatch(p.info.Tag, info.Tag) && (!p.read || p.info.LoadTime == info.LoadTime):
		t.merge(p, *info, now)
		return nil
	case ok:
		// The ID now names another program: the old one is gone.
		t.drop(p, nil)
		t.audit.removed++
		t.counters.RepairsRemoved++
	}
	if t.goneMatch(id, info.Tag) != nil {
		return nil // released, listed by a read racing with its release
	}
	p = &program{id: id}
	t.insert(p)
	t.merge(p, *info, now)
	t.audit.added++
	t.counters.RepairsAdded++
	return nil
}

// cpuPercent is the share of one CPU p ran between its last two reads.
func (p *program) cpuPercent() float64 {
	if p.interval <= 0 {
		return 0
	}
	return float64(p.runtimeD) / float64(p.interval.Nanoseconds()) * 100
}

// merge folds one stats read into p. Deltas are taken against the previous
// read of the same program over the real time between the two reads.
func (t *Tracker) merge(p *program, info loader.ProgramInfo, now time.Time) {
	if p.read && info.RunTime >= p.info.RunTime && info.RunCount >= p.info.RunCount {
		p.hasDelta = true
		p.runtimeD = info.RunTime - p.info.RunTime
		p.runcntD = info.RunCount - p.info.RunCount
		p.interval = max(now.Sub(t.epoch)-p.readAt, 0)
	} else {
		p.hasDelta = false
		p.runtimeD, p.runcntD, p.interval = 0, 0, 0
	}
	p.read = true
	// Keep the map ID slice: the kernel reader may reuse its buffer.
	sorted := append(t.mapScratch[:0], info.MapIDs...)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	t.mapScratch = sorted
	if !slices.Equal(sorted, p.info.MapIDs) {
		t.mapsStale = true // a new program, or maps bound to it
	}
	mapIDs := append(p.info.MapIDs[:0], sorted...)
	p.info = info
	p.info.MapIDs = mapIDs
	p.readAt = now.Sub(t.epoch)
}

// auditWarnMin is how many repairs in one sweep make a warning: fewer are
// usually events in flight during the read (a load or release the kernel
// did before the read, its event applied after).
const auditWarnMin = 16

// logAudit logs what the last sweep's audit repaired, once.
func (t *Tracker) logAudit(cfg RunConfig) {
	a := t.audit
	if a.added+a.removed == 0 || t.pace != nil {
		// Nothing, or a sweep still in progress (events are flushed
		// between its batches): logged once the sweep is over.
		return
	}
	t.audit = auditCount{}
	level := cfg.Log.Debug()
	if a.added+a.removed >= auditWarnMin && t.opts.Source != loader.SourcePoll {
		level = cfg.Log.Warn()
	}
	level.Int("added", a.added).Int("removed", a.removed).
		Msg("sweep audit repaired the inventory: events missed or not applied yet")
}

func (t *Tracker) mapInfo(id uint32) *mapEntry {
	if m, ok := t.maps[id]; ok {
		if !m.used && m.info.MemlockGrows() {
			// Once per sweep: the rest of what a map is never changes.
			if info, err := t.kernel.ReadMap(id); err == nil && info.Memlock != m.info.Memlock {
				m.info.Memlock = info.Memlock
				t.memlockChanged = true
			}
		}
		m.used = true
		return m
	}
	info, err := t.kernel.ReadMap(id)
	if err != nil {
		// Gone between the program read and now, or unreadable: count it
		// with what is known (its ID).
		info = loader.MapInfo{ID: id}
	}
	m := &mapEntry{info: info, used: true}
	t.maps[id] = m
	return m
}
