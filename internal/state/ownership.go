package state

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"slices"

	"github.com/bpfstats/tracker/internal/loader"
)

// attribute makes the process pid the loader and owner of p. A process
// that is already gone, or a kernel thread, leaves p unresolved, for the
// holders scan of the next sweep to settle.
func (t *Tracker) attribute(p *program, pid uint32, comm string) {
	proc, err := t.process(pid)
	if err != nil {
		if comm != "" {
			p.loader = &ProcessRef{PID: pid, Comm: comm}
		}
		return
	}
	p.loader = &ProcessRef{PID: proc.PID, Comm: proc.Comm, Exe: proc.Exe}
	if proc.Exe == "" {
		// Kernel threads (and loads from kernel context) own nothing.
		p.resolved = true
		return
	}
	t.setOwner(p, proc)
}

// process returns the cached process pid, reading it when it is new or its
// PID now names another instance. Within one sweep a process is read once.
func (t *Tracker) process(pid uint32) (*loader.Process, error) {
	if t.sweepRead != nil {
		if _, ok := t.sweepRead[pid]; ok {
			if cached, ok := t.processes[pid]; ok {
				return cached, nil
			}
			return nil, fmt.Errorf("process %d: %w", pid, os.ErrNotExist)
		}
		t.sweepRead[pid] = struct{}{}
	}
	fresh, err := t.kernel.ReadProcess(pid)
	if err != nil {
		delete(t.processes, pid)
		return nil, err
	}
	if cached, ok := t.processes[pid]; ok && cached.StartTime == fresh.StartTime {
		// Labels are taken from the environment when the instance is first
		// seen; keep them stable.
		return cached, nil
	}
	t.processes[pid] = &fresh
	return &fresh, nil
}

func (t *Tracker) setOwner(p *program, proc *loader.Process) {
	key := instance{pid: proc.PID, startTime: proc.StartTime}
	g, ok := t.gadgets[key]
	if !ok {
		g = &gadget{owner: key, info: t.gadgetInfo(proc)}
		t.gadgets[key] = g
	}
	if p.gadget == g {
		p.resolved = true
		return
	}
	t.unown(p)
	p.gadget = g
	g.programs++
	p.resolved = true
}

func (t *Tracker) unown(p *program) {
	t.retire(p, p.share.reported)
	if p.gadget == nil {
		return
	}
	p.gadget.programs--
	if p.gadget.programs == 0 {
		delete(t.gadgets, p.gadget.owner)
	}
	p.gadget = nil
}

func (t *Tracker) gadgetInfo(proc *loader.Process) Gadget {
	g := Gadget{
		ID:    proc.Labels[labelID],
		Name:  proc.Labels[labelName],
		Image: proc.Labels[labelImage],
		Owner: ProcessRef{PID: proc.PID, Comm: proc.Comm, Exe: proc.Exe},
	}
	if self := t.opts.Self; self.PID != 0 && self.PID == proc.PID {
		g.Name = cmp.Or(g.Name, self.Name)
		g.Image = cmp.Or(g.Image, self.Image)
	}
	if g.ID == "" {
		g.ID = gadgetID(t.opts.Node, proc.PID, proc.StartTime)
	}
	if g.Name == "" {
		g.Name = proc.Comm
	}
	if g.Image == "" {
		g.Image = proc.Exe
	}
	return g
}

// gadgetID is the generated ID of the gadget owned by one process instance
// on one node: 11 hex digits, stable for the life of the process.
func gadgetID(node string, pid uint32, startTime uint64) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d/%d", node, pid, startTime))
	return hex.EncodeToString(sum[:])[:11]
}

// settleOwners scans fd holders, records them per program, hands programs
// whose owner is gone to a live holder, and resolves programs that
// predate the tracker.
func (t *Tracker) settleOwners() error {
	holders, err := t.kernel.Holders()
	if err != nil {
		return fmt.Errorf("scanning program holders: %w", err)
	}
	t.sweepRead = make(map[uint32]struct{})
	defer func() { t.sweepRead = nil }()
	// An owner that exited no longer owns anything.
	for key, g := range t.gadgets {
		proc, err := t.process(key.pid)
		if err == nil && proc.StartTime == key.startTime {
			continue
		}
		for _, p := range t.programs {
			if p.gadget == g {
				t.unown(p)
				p.resolved = false
			}
		}
	}
	relevant := make(map[uint32]struct{}, len(t.gadgets))
	for key := range t.gadgets {
		relevant[key.pid] = struct{}{}
	}
	for id, p := range t.programs {
		p.pids = append(p.pids[:0], holders[id]...)
		slices.Sort(p.pids)
		for _, pid := range p.pids {
			relevant[pid] = struct{}{}
			if _, ok := t.processes[pid]; !ok {
				t.process(pid) //nolint:errcheck // a holder that exited has no comm to show
			}
		}
		if p.resolved && (p.gadget != nil || len(p.pids) == 0) {
			continue
		}
		p.resolved = true
		if owner := t.pickHolder(p.pids); owner != nil {
			t.setOwner(p, owner)
		}
	}
	// Forget processes that neither hold programs nor own gadgets.
	for pid := range t.processes {
		if _, ok := relevant[pid]; !ok {
			delete(t.processes, pid)
		}
	}
	return nil
}

// pickHolder chooses the owner among the holders of a program: one that
// already owns a gadget, else the lowest PID that is a user process.
func (t *Tracker) pickHolder(pids []uint32) *loader.Process {
	var first *loader.Process
	for _, pid := range pids {
		proc, err := t.process(pid)
		if err != nil || proc.Exe == "" {
			continue
		}
		if _, ok := t.gadgets[instance{pid: proc.PID, startTime: proc.StartTime}]; ok {
			return proc
		}
		if first == nil {
			first = proc
		}
	}
	return first
}
