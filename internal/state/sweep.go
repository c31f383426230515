package state

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// Resync makes the inventory equal to the kernel's program list: programs
// the events missed are added (their owner is settled by the next sweep's
// holders scan) and programs that are gone are removed. It is the start-up
// snapshot and the answer to lost events.
func (t *Tracker) Resync() (added, removed int, err error) {
	ids, err := t.kernel.ProgramIDs()
	if err != nil {
		return 0, 0, fmt.Errorf("resync: %w", err)
	}
	clear(t.seen)
	for _, id := range ids {
		t.seen[id] = struct{}{}
		if _, ok := t.programs[id]; !ok {
			t.programs[id] = &program{id: id}
			added++
		}
	}
	for id, p := range t.programs {
		if _, ok := t.seen[id]; !ok {
			t.remove(p)
			removed++
		}
	}
	t.counters.Resyncs++
	return added, removed, nil
}

// Sweep reads the stats of every program in the inventory and the maps they
// use, settles ownership, and returns the resulting Snapshot. Programs that
// vanished are dropped quietly. Failed reads of programs that still exist,
// and a failed scan of holders, are returned joined in the error, with the
// snapshot still valid (such programs keep their previous values).
func (t *Tracker) Sweep() (*Snapshot, error) {
	return t.sweep(func() {})
}

// sweep is Sweep calling between() between its phases, so that Run can
// apply the events that arrived meanwhile instead of holding them for the
// whole sweep. A program loaded meanwhile gets its first read next sweep.
func (t *Tracker) sweep(between func()) (*Snapshot, error) {
	start := t.opts.now()
	var errs []error
	each := func(id uint32, info *loader.ProgramInfo, err error) {
		p, ok := t.programs[id]
		switch {
		case !ok:
		case errors.Is(err, os.ErrNotExist):
			t.remove(p)
		case err != nil:
			errs = append(errs, fmt.Errorf("reading program %d: %w", id, err))
		default:
			t.merge(p, *info, t.opts.now())
		}
	}
	if br, ok := t.kernel.(BatchReader); ok {
		t.ids = t.ids[:0]
		for id := range t.programs {
			t.ids = append(t.ids, id)
		}
		if err := br.ReadPrograms(t.ids, each); err != nil {
			errs = append(errs, fmt.Errorf("reading programs: %w", err))
		}
	} else {
		for id := range t.programs {
			info, err := t.kernel.ReadProgram(id)
			each(id, &info, err)
		}
	}
	between()
	for _, m := range t.maps {
		m.used = false
	}
	for _, p := range t.programs {
		for _, mid := range p.info.MapIDs {
			t.mapInfo(mid)
		}
	}
	for id, m := range t.maps {
		if !m.used {
			delete(t.maps, id)
		}
	}
	between()
	if err := t.settleOwners(); err != nil {
		errs = append(errs, err)
	}
	between()
	end := t.opts.now()
	snap := t.snapshot(end)
	snap.SweepDuration = end.Sub(start)
	if !t.lastSweep.IsZero() {
		snap.Elapsed = end.Sub(t.lastSweep)
	}
	t.lastSweep = end
	t.counters.Sweeps++
	snap.Counters = t.counters
	return snap, errors.Join(errs...)
}

// merge folds one stats read into p. Deltas are taken against the previous
// read of the same program over the real time between the two reads.
func (t *Tracker) merge(p *program, info loader.ProgramInfo, now time.Time) {
	if p.read && info.LoadTime != p.loadTime {
		// The ID now names another program: start over.
		t.unown(p)
		*p = program{id: p.id}
	}
	if p.read && info.RunTime >= p.info.RunTime && info.RunCount >= p.info.RunCount {
		p.hasDelta = true
		p.runtimeD = info.RunTime - p.info.RunTime
		p.runcntD = info.RunCount - p.info.RunCount
		p.cpu = 0
		if dt := now.Sub(p.readAt); dt > 0 {
			p.cpu = float64(p.runtimeD) / float64(dt.Nanoseconds()) * 100
		}
	} else {
		p.hasDelta = false
		p.runtimeD, p.runcntD, p.cpu = 0, 0, 0
	}
	p.read = true
	p.loadTime = info.LoadTime
	p.tag = info.Tag
	p.name = info.Name
	p.progType = info.Type
	// Keep the map ID slice: the kernel reader may reuse its buffer.
	mapIDs := append(p.info.MapIDs[:0], info.MapIDs...)
	slices.Sort(mapIDs)
	mapIDs = slices.Compact(mapIDs)
	p.info = info
	p.info.MapIDs = mapIDs
	p.readAt = now
}

// bpfFNoPrealloc is BPF_F_NO_PREALLOC: such maps allocate elements as they
// are inserted, so their memlock (Linux 6.4+) grows and shrinks.
const bpfFNoPrealloc = 1

func (t *Tracker) mapInfo(id uint32) *mapEntry {
	if m, ok := t.maps[id]; ok {
		if !m.used && m.info.Flags&bpfFNoPrealloc != 0 {
			// Once per sweep: the rest of what a map is never changes.
			if info, err := t.kernel.ReadMap(id); err == nil {
				m.info.Memlock = info.Memlock
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
