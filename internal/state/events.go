package state

import (
	"encoding/hex"

	"github.com/bpfstats/tracker/internal/loader"
)

// apply updates the inventory with one event and returns what consumers
// should be told, or nil when the event changed nothing (a duplicate load,
// the release of an unknown program). EventLost is counted only: the
// caller must call Resync (Run does).
func (t *Tracker) apply(ev loader.ProgramEvent) *Event {
	switch ev.Kind {
	case loader.EventLoad:
		t.counters.EventsLoad++
		return t.load(ev)
	case loader.EventRelease:
		t.counters.EventsRelease++
		return t.release(ev)
	case loader.EventLost:
		t.counters.EventsLost += max(ev.Lost, 1)
	}
	return nil
}

func (t *Tracker) load(ev loader.ProgramEvent) *Event {
	if ev.ProgramID == 0 {
		return nil
	}
	if p, ok := t.programs[ev.ProgramID]; ok {
		if ev.Tag == p.tag || ev.Tag == ([8]byte{}) || p.tag == ([8]byte{}) {
			// The snapshot found it before the event arrived: only learn
			// what the event adds.
			if p.tag == ([8]byte{}) {
				p.tag = ev.Tag
			}
			if p.loader == nil && ev.PID != 0 {
				t.attribute(p, ev.PID, ev.Comm)
			}
			return nil
		}
		// Same ID, other program: the release was missed and the ID reused.
		t.remove(p)
	}
	p := &program{id: ev.ProgramID, tag: ev.Tag, name: ev.Name, progType: ev.Type}
	if p.name == "" || p.progType == 0 {
		// The perf side-band carries neither: one read names the program
		// for the event's consumers. Its stats wait for the sweep.
		if info, err := t.kernel.ReadProgram(p.id); err == nil && (p.tag == info.Tag || p.tag == ([8]byte{})) {
			p.name, p.progType, p.tag = info.Name, info.Type, info.Tag
		}
	}
	t.programs[p.id] = p
	if ev.PID != 0 {
		t.attribute(p, ev.PID, ev.Comm)
	}
	return t.event("load", p, ev)
}

func (t *Tracker) release(ev loader.ProgramEvent) *Event {
	p, ok := t.programs[ev.ProgramID]
	if !ok {
		return nil
	}
	if ev.Tag != ([8]byte{}) && p.tag != ([8]byte{}) && ev.Tag != p.tag {
		// A late release of an earlier program with this ID.
		return nil
	}
	out := t.event("release", p, ev)
	out.Runtime, out.Runcount = p.info.RunTime, p.info.RunCount
	t.remove(p)
	return out
}

func (t *Tracker) event(kind string, p *program, ev loader.ProgramEvent) *Event {
	name, typ := p.name, p.progType
	if name == "" {
		name = ev.Name
	}
	if typ == 0 {
		typ = ev.Type
	}
	out := &Event{
		Kind:       kind,
		ProgID:     p.id,
		ProgName:   name,
		ProgType:   progTypeName(typ),
		Tag:        hex.EncodeToString(p.tag[:]),
		Loader:     p.loader,
		KernelTime: ev.KernelTime,
		Time:       t.opts.now(),
	}
	if p.gadget != nil {
		g := p.gadget.info
		out.Gadget = &g
	}
	return out
}

func (t *Tracker) remove(p *program) {
	t.retire(p, statsOf(p))
	t.unown(p)
	delete(t.programs, p.id)
}
