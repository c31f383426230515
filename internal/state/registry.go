package state

import (
	"fmt"

	"github.com/bpfstats/tracker/internal/loader"
)

// Registry is where runners that cannot label their objects register
// their programs as gadgets (loader.Registry, the map pinned at
// register.DefaultPath). The tracker reads it every sweep and removes the
// registrations of programs that are gone.
type Registry interface {
	// Registrations returns every registration; the slice is valid until
	// the next call.
	Registrations() ([]loader.Registration, error)
	// Remove deletes regs and returns how many it deleted.
	Remove(regs []loader.Registration) (int, error)
}

// registration is the labels a registration gives a program; zero for none.
type registration struct{ id, name, image string }

// registered is p's registration, zero for none.
func (p *program) registered() registration {
	if p.registration == nil {
		return registration{}
	}
	return *p.registration
}

// regKey names one registration: a program ID and the tag of the program
// registered under it.
type regKey struct {
	id  uint32
	tag [8]byte
}

// registryState is what the tracker keeps of the registry.
type registryState struct {
	// entries are the registrations of the last read that worked.
	entries map[regKey]registration
	// fresh is true when this sweep read entries before reading the
	// programs: an entry whose program that read did not find is gone.
	fresh bool
	// gone is reused by every sweep to avoid allocations.
	gone []loader.Registration
}

// readRegistry reads the registrations. It runs before the sweep reads
// the programs, so that a registered program missing from that read is
// gone, and not one loaded and registered meanwhile. A failed read keeps
// the last registrations.
func (t *Tracker) readRegistry() error {
	t.reg.fresh = false
	if t.opts.Registry == nil {
		return nil
	}
	regs, err := t.opts.Registry.Registrations()
	if err != nil {
		return fmt.Errorf("reading registrations: %w", err)
	}
	if t.reg.entries == nil {
		t.reg.entries = make(map[regKey]registration, len(regs))
	}
	clear(t.reg.entries)
	for _, r := range regs {
		t.reg.entries[regKey{r.ProgID, r.Tag}] = registration{id: r.Gadget.ID, name: r.Gadget.Name, image: r.Gadget.Image}
	}
	t.reg.fresh = true
	return nil
}

// applyRegistry runs after the sweep read the programs: it gives each
// program read the registration of its ID and tag, moves those whose
// registration changed to the gadget of their new labels, and removes
// the registrations of programs gone.
func (t *Tracker) applyRegistry() error {
	if t.opts.Registry == nil {
		return nil
	}
	for _, p := range t.programs {
		if !p.read {
			continue // no tag yet: the next sweep
		}
		if want := t.reg.entries[regKey{p.id, p.info.Tag}]; want != p.registered() {
			p.registration = nil
			if want != (registration{}) {
				p.registration = &want
			}
			t.regroup(p)
			// settleOwners gives it its gadget: it must run this sweep.
			t.holdersStale = true
		}
	}
	if !t.reg.fresh {
		return nil
	}
	gone := t.reg.gone[:0]
	for k := range t.reg.entries {
		if p, ok := t.programs[k.id]; ok && (!p.read || p.info.Tag == k.tag) {
			continue
		}
		gone = append(gone, loader.Registration{ProgID: k.id, Tag: k.tag})
		delete(t.reg.entries, k)
	}
	t.reg.gone = gone
	removed, err := t.opts.Registry.Remove(gone)
	t.counters.RegistrationsRemoved += uint64(removed)
	if err != nil {
		return fmt.Errorf("removing registrations of programs gone: %w", err)
	}
	return nil
}

// regroup forgets p's labels and, when p has a gadget, moves it to the
// gadget of its new labels: its owner's, if that process still runs,
// else none (settleOwners gives it its holder's or its labels' gadget).
// An unowned p is settled by settleOwners too.
func (t *Tracker) regroup(p *program) {
	p.labels = nil
	if p.gadget == nil {
		return
	}
	owner := p.gadget.key.owner
	if owner.pid != 0 {
		if proc, err := t.process(owner.pid); err == nil && proc.StartTime == owner.startTime {
			t.setOwner(p, proc)
		}
		return // an owner gone: settleOwners unowns its programs
	}
	t.unown(p)
}
