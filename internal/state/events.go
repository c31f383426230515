package state

import (
	"encoding/hex"
	"errors"
	"os"

	"github.com/bpfstats/tracker/internal/loader"
)

// Loads and releases pair up on OnEvent: every program whose load was
// published gets exactly one release, and no release is published without
// its load. A program's load is published when its load event is applied
// (a program a sweep or resync found first is published then, late);
// its release when it leaves the inventory, whichever way (release event,
// a sweep that finds it gone, a resync, its ID reused). A load event of a
// program already released (its release event came first, from another
// CPU's ring, or a sweep found it gone, or the read by ID finds it gone)
// inserts nothing and publishes the load and its release together, named
// from the event. A program never announced (found by a sweep, its load
// event lost) leaves quietly.

// goneProgram is a program the kernel released that the inventory no
// longer (or never) holds, kept for goneSweeps sweeps.
type goneProgram struct {
	tag      [8]byte
	name     string
	progType uint32
	// loadSeen: its load was published (with its release, or before it
	// was dropped): a load event arriving now is a duplicate. When false,
	// a load event publishes the load and the release together.
	loadSeen bool
	// releaseSeen: its release event was applied; releaseTime is its
	// kernel time.
	releaseSeen bool
	releaseTime uint64
	// sweeps is Counters.Sweeps when it was noted.
	sweeps uint64
}

// goneSweeps is how many sweeps a goneProgram is kept: a late event of
// a released program arrives within that time, or is taken for new (a
// load is then read by ID and found gone; a release finds nothing).
const goneSweeps = 2

// applyEvent updates the inventory with one event and queues what
// consumers should be told.
func (t *Tracker) applyEvent(ev loader.ProgramEvent) {
	switch ev.Kind {
	case loader.EventLoad:
		t.counters.EventsLoad++
		t.load(ev)
	case loader.EventRelease:
		t.counters.EventsRelease++
		t.release(ev)
	case loader.EventLost:
		t.counters.EventsLost += max(ev.Lost, 1)
	}
}

// flush hands the queued events to cfg.OnEvent in order, and logs what
// the last sweep's audit repaired.
func (t *Tracker) flush(cfg RunConfig) {
	for i, ev := range t.outbox {
		if cfg.OnEvent != nil {
			cfg.OnEvent(ev)
		}
		t.outbox[i] = nil
	}
	t.outbox = t.outbox[:0]
	t.logAudit(cfg)
}

// tagsMatch reports whether two tags may be the same program's: equal, or
// one unknown.
func tagsMatch(a, b [8]byte) bool {
	return a == b || a == [8]byte{} || b == [8]byte{}
}

// goneMatch returns the noted release of program id with a matching tag.
func (t *Tracker) goneMatch(id uint32, tag [8]byte) *goneProgram {
	if g, ok := t.gone[id]; ok && tagsMatch(g.tag, tag) {
		return g
	}
	return nil
}

// noteGone records that program id (tag) is released.
func (t *Tracker) noteGone(id uint32, tag [8]byte, name string, progType uint32) *goneProgram {
	g := &goneProgram{tag: tag, name: name, progType: progType, sweeps: t.counters.Sweeps}
	t.gone[id] = g
	return g
}

// expireGone forgets the releases noted goneSweeps sweeps ago or more.
func (t *Tracker) expireGone() {
	for id, g := range t.gone {
		if t.counters.Sweeps-g.sweeps >= goneSweeps {
			delete(t.gone, id)
		}
	}
}

// loadIsNew reports whether ev is the load of a program the inventory
// neither holds nor noted gone: applying it adds a program and touches
// no other, so a snapshot being built can let it in (see pace.go).
func (t *Tracker) loadIsNew(ev loader.ProgramEvent) bool {
	if ev.Kind != loader.EventLoad || ev.ProgramID == 0 {
		return false
	}
	_, held := t.programs[ev.ProgramID]
	_, gone := t.gone[ev.ProgramID]
	return !held && !gone
}

func (t *Tracker) load(ev loader.ProgramEvent) {
	if ev.ProgramID == 0 {
		return
	}
	if g := t.goneMatch(ev.ProgramID, ev.Tag); g != nil {
		t.loadGone(ev, g)
		return
	}
	if p, ok := t.programs[ev.ProgramID]; ok {
		if tagsMatch(ev.Tag, p.info.Tag) {
			// A sweep or resync found it before the event arrived: learn
			// what the event adds, and publish the load now.
			if p.info.Tag == ([8]byte{}) {
				p.info.Tag = ev.Tag
			}
			if p.loader == nil {
				t.attribute(p, ev)
			}
			t.announce(p, ev)
			return
		}
		// Same ID, other program: the release was missed and the ID reused.
		t.drop(p, nil)
	}
	p := &program{id: ev.ProgramID, info: loader.ProgramInfo{Tag: ev.Tag, Name: ev.Name, Type: ev.Type}}
	if p.info.Name == "" || p.info.Type == 0 || p.info.Tag == ([8]byte{}) {
		// The event does not say it all: one read names the program for
		// the event's consumers, and tells whether it is still there. Its
		// stats wait for the sweep.
		info, err := t.kernel.ReadProgram(p.id)
		switch {
		case err == nil && tagsMatch(p.info.Tag, info.Tag):
			p.info.Name, p.info.Type = info.Name, info.Type
			if info.Tag != ([8]byte{}) {
				p.info.Tag = info.Tag
			}
		case err == nil || errors.Is(err, os.ErrNotExist):
			// Gone, its ID free or already another program's.
			t.loadGone(ev, t.noteGone(p.id, p.info.Tag, p.info.Name, p.info.Type))
			return
		}
	}
	t.insert(p)
	t.attribute(p, ev)
	t.announce(p, ev)
}

// loadGone applies the load event of a program already released: nothing
// is inserted; the load and its release are published together, once.
func (t *Tracker) loadGone(ev loader.ProgramEvent, g *goneProgram) {
	if g.loadSeen {
		return // a duplicate
	}
	g.loadSeen = true
	t.counters.LoadsGone++
	p := &program{id: ev.ProgramID, info: loader.ProgramInfo{Tag: ev.Tag, Name: ev.Name, Type: ev.Type}}
	if p.info.Tag == ([8]byte{}) {
		p.info.Tag = g.tag
	}
	if p.info.Name == "" {
		p.info.Name = g.name
	}
	if p.info.Type == 0 {
		p.info.Type = g.progType
	}
	var gadget *gadget
	if proc, ok := t.eventProcess(ev); ok {
		p.loader = &ProcessRef{PID: proc.PID, Comm: proc.Comm, Exe: proc.Exe}
		// A gone program's labels cannot be read: its process's gadget
		// without labels, if any.
		gadget = t.gadgets[gadgetKey{owner: instance{pid: proc.PID, startTime: proc.StartTime}}]
	} else if ev.PID != 0 && ev.Comm != "" && !t.opts.IgnoreEventPIDs {
		p.loader = &ProcessRef{PID: ev.PID, Comm: ev.Comm}
	}
	load := t.event("load", p, ev.KernelTime)
	release := t.event("release", p, g.releaseTime)
	if gadget != nil {
		info := gadget.info
		load.Gadget, release.Gadget = &info, &info
	}
	t.outbox = append(t.outbox, load, release)
}

// announce publishes p's load, once.
func (t *Tracker) announce(p *program, ev loader.ProgramEvent) {
	if p.announced {
		return
	}
	p.announced = true
	t.outbox = append(t.outbox, t.event("load", p, ev.KernelTime))
}

func (t *Tracker) release(ev loader.ProgramEvent) {
	if p, ok := t.programs[ev.ProgramID]; ok && tagsMatch(ev.Tag, p.info.Tag) {
		t.drop(p, &ev)
		return
	}
	if g := t.goneMatch(ev.ProgramID, ev.Tag); g != nil {
		// A sweep found it gone first, or its load was applied gone: its
		// release, if any, is published already.
		g.releaseSeen = true
		return
	}
	// Its load has not arrived yet (another CPU's ring), or never will:
	// keep the release for the load to find.
	g := t.noteGone(ev.ProgramID, ev.Tag, ev.Name, ev.Type)
	g.releaseSeen, g.releaseTime = true, ev.KernelTime
}

// drop removes p, which the kernel released (ev is its release event, nil
// when a sweep, a resync or a reused ID told), publishing its release if
// its load was published, and notes it gone so that late events about it
// pair up.
func (t *Tracker) drop(p *program, ev *loader.ProgramEvent) {
	g := t.noteGone(p.id, p.info.Tag, p.info.Name, p.info.Type)
	g.loadSeen = p.announced
	if ev != nil {
		g.releaseSeen, g.releaseTime = true, ev.KernelTime
		if p.info.Name == "" {
			p.info.Name = ev.Name
		}
		if p.info.Type == 0 {
			p.info.Type = ev.Type
		}
	}
	if p.announced {
		out := t.event("release", p, g.releaseTime)
		// As of the last sweep: what ran between it and the release is
		// not counted (no source reads a program's stats at release).
		out.Runtime, out.Runcount = p.info.RunTime, p.info.RunCount
		t.outbox = append(t.outbox, out)
	}
	t.remove(p)
}

func (t *Tracker) event(kind string, p *program, kernelTime uint64) *Event {
	out := &Event{
		Kind:       kind,
		ProgID:     p.id,
		ProgName:   p.info.Name,
		ProgType:   progTypeName(p.info.Type),
		Tag:        hex.EncodeToString(p.info.Tag[:]),
		Loader:     p.loader,
		KernelTime: kernelTime,
		Time:       t.opts.now(),
	}
	if p.gadget != nil {
		g := p.gadget.info
		t.namePod(&g.Placement)
		out.Gadget = &g
	}
	return out
}

func (t *Tracker) remove(p *program) {
	t.retire(p, statsOf(p))
	t.unown(p)
	delete(t.programs, p.id)
	p.dropped = true
	t.inventoryChanged()
}

// insert adds p to the inventory.
func (t *Tracker) insert(p *program) {
	if p.row == nil {
		p.row = new(Row)
	}
	t.programs[p.id] = p
	t.orderAdded = append(t.orderAdded, p)
	t.inventoryChanged()
}
