package state

import (
	"strings"

	"github.com/bpfstats/tracker/internal/loader"
)

// rodataSuffix ends the name of an object's read-only globals map, where
// its loader puts the program labels.
const rodataSuffix = ".rodata"

// labelsOf returns p's program labels, reading them the first time (one
// read per program: its ID and tag never change its labels). A read that
// found no .rodata map before the first sweep read p is repeated once by
// relabel; after that read, the map IDs tell without a syscall, once
// the tracker knows each of those maps (see knowsNoRodata). A program
// whose object has no labels takes those of its registration, if any
// (registry.go): object labels win over a registration.
//
// The many programs without labels share one record (Tracker.noLabels):
// labels are never written once set.
func (t *Tracker) labelsOf(p *program) *programLabels {
	if p.labels == nil {
		l := t.objectLabels(p)
		if l.key() == "" {
			reg := p.registered()
			l.id, l.name, l.image = reg.id, reg.name, reg.image
		}
		if l == t.noLabels {
			p.labels = &t.noLabels
		} else {
			p.labels = &l
		}
	}
	return p.labels
}

// objectLabels reads the labels in p's object (its .rodata).
func (t *Tracker) objectLabels(p *program) programLabels {
	r, ok := t.kernel.(MetadataReader)
	if !ok || (p.read && t.knowsNoRodata(p)) {
		return programLabels{final: true}
	}
	md, err := r.ReadProgramMetadata(p.id)
	l := programLabels{final: err != nil || md.Rodata || p.read}
	// A tag that differs: the ID is another program's now; p is gone.
	if err == nil && tagsMatch(p.info.Tag, md.Tag) {
		l.id, l.name, l.image = md.Vars[metaID], md.Vars[metaName], md.Vars[metaImage]
	}
	return l
}

// knowsNoRodata reports whether the tracker knows every map p used at its
// last read, and none of them is a .rodata map. A map it does not know
// yet may be one: an event applied between a sweep's program read and
// its map read (Run applies events at the sweep's yields) finds a program
// read with a new .rodata map that only the map read will name.
func (t *Tracker) knowsNoRodata(p *program) bool {
	for _, id := range p.info.MapIDs {
		m, ok := t.maps[id]
		if !ok || strings.HasSuffix(m.info.Name, rodataSuffix) {
			return false
		}
	}
	return true
}

// relabel reads again the labels of a program read when it had no
// .rodata map yet, now that a sweep read it, and moves it to the gadget
// of its labels if they differ.
func (t *Tracker) relabel(p *program) {
	if p.labels == nil || p.labels.final || !p.read {
		return
	}
	before := p.labels.key()
	p.labels = nil
	if t.labelsOf(p).key() == before || p.gadget == nil {
		return
	}
	owner := p.gadget.key.owner
	if owner.pid == 0 {
		return
	}
	if proc, err := t.process(owner.pid); err == nil && proc.StartTime == owner.startTime {
		t.setOwner(p, proc)
	}
}

// ownByLabels gives a labelled program no process holds to the gadget of
// its labels: one a process owns when there is one (the rest of its
// programs are held), else one of its own, so that the labels survive
// their process and a tracker restart.
func (t *Tracker) ownByLabels(p *program) {
	key := t.labelsOf(p).key()
	if key == "" || p.gadget != nil {
		return
	}
	for k, g := range t.gadgets {
		if k.label == key && k.owner.pid != 0 {
			t.unown(p)
			p.gadget = g
			g.programs++
			p.resolved = true
			return
		}
	}
	t.setOwner(p, nil)
}

// ownsGadget reports whether proc owns a gadget of any labels.
func (t *Tracker) ownsGadget(proc *loader.Process) bool {
	owner := instance{pid: proc.PID, startTime: proc.StartTime}
	for k := range t.gadgets {
		if k.owner == owner {
			return true
		}
	}
	return false
}

// place sets where p's loader ran, once: from the load event's cgroup ID
// when the kernel resolves it (the fentry source), else from the
// process's cgroup (nil proc: unknown yet). It is set in p's row, which
// is the only copy (a Placement is 128 bytes, for thousands of
// programs), and marks the row's head for refreshing. p must be in the
// inventory (it has a row).
func (t *Tracker) place(p *program, cgroupID uint64, proc *loader.Process) {
	if p.row.Cgroup != "" {
		return
	}
	if r, ok := t.kernel.(CgroupResolver); ok && cgroupID != 0 {
		if path, err := r.CgroupPath(cgroupID); err == nil {
			p.setPlacement(placementOf(path))
			return
		}
	}
	if proc != nil {
		// A process without a cgroup path leaves it empty: asked again.
		p.setPlacement(placementOf(proc.Cgroup))
	}
}

// setPlacement sets p's placement, marking it placed only when it
// changed: a row refreshed every sweep would be encoded every interval.
// The pod's name and namespace, which the row keeps from the resolver
// (see namePods), are not part of what changed; a new placement starts
// without them.
func (p *program) setPlacement(pl Placement) {
	if pl != p.row.Placement.unnamed() {
		p.ownRow().Placement, p.placed = pl, true
	}
}
