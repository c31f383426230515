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

// attribute makes the process that caused load event ev the loader and
// owner of p. A process that is already gone, a PID that now names a
// process started after the event (reused), event PIDs turned off
// (Options.IgnoreEventPIDs) or a kernel thread leave p without an owner,
// for the holders scan of the next sweep to settle.
func (t *Tracker) attribute(p *program, ev loader.ProgramEvent) {
	if ev.PID == 0 || t.opts.IgnoreEventPIDs {
		return
	}
	proc, ok := t.eventProcess(ev)
	if !ok {
		if ev.Comm != "" {
			p.loader = &ProcessRef{PID: ev.PID, Comm: ev.Comm}
		}
		t.place(p, ev.CgroupID, nil)
		return
	}
	p.loader = &ProcessRef{PID: proc.PID, Comm: proc.Comm, Exe: proc.Exe}
	t.place(p, ev.CgroupID, proc)
	if proc.Kernel {
		// Kernel threads (and loads from kernel context) own nothing.
		p.resolved = true
		return
	}
	t.setOwner(p, proc)
}

// eventProcess returns the process ev's PID names, when it can be the one
// that caused ev: it is alive and did not start after the event.
func (t *Tracker) eventProcess(ev loader.ProgramEvent) (*loader.Process, bool) {
	if ev.PID == 0 || t.opts.IgnoreEventPIDs {
		return nil, false
	}
	proc, err := t.process(ev.PID)
	if err != nil {
		return nil, false
	}
	if t.otherInstance(proc.StartTime, ev) {
		t.counters.AttributionsRejected++
		return nil, false
	}
	return proc, true
}

// otherInstance reports whether the process now at the event's PID,
// started at startTicks, cannot be the one the event names: its start
// time differs from the loader's start time the event carries (fentry),
// or, without one, it started after the event.
func (t *Tracker) otherInstance(startTicks uint64, ev loader.ProgramEvent) bool {
	if ev.LoaderStartTime != 0 {
		return ev.LoaderStartTime/tickNs != startTicks
	}
	return t.startedAfter(startTicks, ev.KernelTime)
}

// tickNs is one clock tick of /proc start times, in nanoseconds.
const tickNs = 1e9 / loader.ClockTicksPerSecond

// startedAfter reports whether a process started at startTicks (clock
// ticks since boot, suspend included) certainly started after an event at
// eventNs (CLOCK_MONOTONIC, suspend excluded; 0 when unknown). The event
// time is moved onto the boot clock with the suspend time so far, which
// can only place it later than it was, and one tick of rounding is
// allowed: a process is rejected only when it cannot be the one.
func (t *Tracker) startedAfter(startTicks, eventNs uint64) bool {
	if eventNs == 0 {
		return false
	}
	var offset uint64
	if bc, ok := t.kernel.(bootClock); ok {
		offset = bc.BootOffset()
	}
	return startTicks*tickNs > eventNs+offset+tickNs
}

// bootClock is an extension point of Kernel: loader.Kernel tells how far
// the boot clock (process start times) is ahead of the monotonic clock
// (event times). Without it the two are taken to be equal (no suspend).
type bootClock interface {
	BootOffset() uint64
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

// setOwner makes proc's gadget for p's labels own p; a nil proc means
// no process: the gadget of p's labels alone (p must have labels).
func (t *Tracker) setOwner(p *program, proc *loader.Process) {
	labels := t.labelsOf(p)
	key := gadgetKey{label: labels.key()}
	if proc != nil {
		key.owner = instance{pid: proc.PID, startTime: proc.StartTime}
		t.place(p, 0, proc)
	}
	g, ok := t.gadgets[key]
	if !ok {
		g = &gadget{key: key, info: t.gadgetInfo(proc, labels, key.label)}
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
		delete(t.gadgets, p.gadget.key)
	}
	p.gadget = nil
}

// gadgetInfo names the gadget of proc (nil: none) for programs with
// labels (labelKey is their key): each of ID, name and image from the
// labels, else the environment, else the process (see Gadget).
func (t *Tracker) gadgetInfo(proc *loader.Process, labels *programLabels, labelKey string) Gadget {
	var g Gadget
	if labels != nil {
		g = Gadget{ID: labels.id, Name: labels.name, Image: labels.image}
	}
	if proc == nil {
		if g.ID == "" {
			g.ID = gadgetID(t.opts.Node, 0, 0, labelKey)
		}
		return g
	}
	g.Owner = ProcessRef{PID: proc.PID, Comm: proc.Comm, Exe: proc.Exe}
	g.Placement = placementOf(proc.Cgroup)
	if labelKey == "" {
		// The environment's ID names the process's one unlabelled gadget.
		g.ID = proc.Labels[labelID]
	}
	g.Name = cmp.Or(g.Name, proc.Labels[labelName])
	g.Image = cmp.Or(g.Image, proc.Labels[labelImage])
	if self := t.opts.Self; self.PID != 0 && self.PID == proc.PID {
		g.Name = cmp.Or(g.Name, self.Name)
		g.Image = cmp.Or(g.Image, self.Image)
	}
	if g.ID == "" {
		g.ID = gadgetID(t.opts.Node, proc.PID, proc.StartTime, labelKey)
	}
	g.Name = cmp.Or(g.Name, proc.Comm)
	g.Image = cmp.Or(g.Image, proc.Exe)
	return g
}

// gadgetID is the generated ID of a gadget on one node: 11 hex digits,
// stable for the life of the owner process (pid 0 for none) and the
// labels' key.
func gadgetID(node string, pid uint32, startTime uint64, labelKey string) string {
	in := fmt.Appendf(nil, "%s/%d/%d", node, pid, startTime)
	if labelKey != "" {
		in = fmt.Appendf(in, "/%s", labelKey)
	}
	sum := sha256.Sum256(in)
	return hex.EncodeToString(sum[:])[:11]
}

// settleOwners scans fd holders when they may have changed (see
// holders.go), records them per program, hands programs whose owner is
// gone to a live holder, and resolves programs that predate the tracker.
func (t *Tracker) settleOwners() error {
	if !t.holdersDue() {
		return nil
	}
	holders, err := t.pace.scanHolders(t.kernel.Holders)
	if err != nil {
		t.holdersStale = true
		return fmt.Errorf("scanning program holders: %w", err)
	}
	t.holdersStale, t.sweepsSinceScan, t.holdersScanned = false, 0, true
	t.sweepRead = make(map[uint32]struct{})
	defer func() { t.sweepRead = nil }()
	// An owner that exited no longer owns anything.
	for key, g := range t.gadgets {
		if key.owner.pid == 0 {
			continue // labelled programs no process holds
		}
		proc, err := t.process(key.owner.pid)
		if err == nil && proc.StartTime == key.owner.startTime {
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
		relevant[key.owner.pid] = struct{}{}
	}
	var holderless []*program
	n := 0
	for id, p := range t.programs {
		if n++; n%yieldEvery == 0 {
			// Only loads of new programs (see yieldLoads): a release
			// would drop a program held in holderless. A program loaded
			// now may be visited or not; it has no holders in this scan
			// either way, and the next sweep scans again.
			t.pace.yieldLoads()
		}
		p.pids = append(p.pids[:0], holders[id]...)
		slices.Sort(p.pids)
		for _, pid := range p.pids {
			relevant[pid] = struct{}{}
			if _, ok := t.processes[pid]; !ok {
				t.process(pid) //nolint:errcheck // a holder that exited has no comm to show
			}
		}
		t.relabel(p)
		if !p.read || (p.labels != nil && !p.labels.final) {
			t.holdersStale = true // settled again once read
		}
		if p.resolved && (p.gadget != nil || len(p.pids) == 0) {
			if p.gadget == nil {
				holderless = append(holderless, p)
			}
			continue
		}
		p.resolved = true
		if owner := t.pickHolder(p.pids); owner != nil {
			t.setOwner(p, owner)
		} else {
			holderless = append(holderless, p)
		}
	}
	// After the holders, so that a labelled program joins its live
	// gadget rather than one of its own.
	for _, p := range holderless {
		t.ownByLabels(p)
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
		if err != nil || proc.Kernel {
			continue
		}
		if t.ownsGadget(proc) {
			return proc
		}
		if first == nil {
			first = proc
		}
	}
	return first
}
