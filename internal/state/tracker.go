// Package state keeps the inventory of BPF programs, merges their stats
// reads and groups them into gadgets, without calling the kernel itself.
package state

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// Label keys read from a gadget owner's environment (without the
// BPFSTATS_GADGET_ prefix).
const (
	LabelName  = "NAME"
	LabelImage = "IMAGE"
	LabelID    = "ID"
)

// Options configures a Tracker.
type Options struct {
	// Node names this machine; it salts generated gadget IDs so that they
	// are unique across a fleet.
	Node string
	// Source is the name of the event source feeding the tracker, copied
	// into every Snapshot.
	Source string
	// SkipHolders turns off the per-sweep scan of which processes hold
	// program fds. Pids and comms are then empty, and programs whose
	// loader is unknown stay unowned.
	SkipHolders bool
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
	// Self names the tracker's own process (PID, and the name and image
	// its gadget gets): its iterators and hooks are programs like any
	// other, shown as its own gadget so that its cost is visible.
	Self Self
}

// Self identifies the tracker's own process to the inventory.
type Self struct {
	PID         uint32
	Name, Image string
}

// Tracker is the inventory of programs and gadgets. It is not safe for
// concurrent use: one goroutine applies events and runs sweeps (see Run).
type Tracker struct {
	kernel Kernel
	opts   Options

	programs map[uint32]*program
	gadgets  map[instance]*gadget
	maps     map[uint32]*mapEntry
	// processes caches what was read of a process instance, keyed by PID
	// and checked against its start time.
	processes map[uint32]*loader.Process

	counters  Counters
	lastSweep time.Time
	// seen and ids are reused by every sweep to avoid allocations.
	seen map[uint32]struct{}
	ids  []uint32
	// sweepRead holds the PIDs already read in the current ownership
	// settling, so that a process holding many programs is read once.
	sweepRead map[uint32]struct{}
}

// instance names one process instance: a PID alone can be reused.
type instance struct {
	pid       uint32
	startTime uint64
}

type program struct {
	id       uint32
	tag      [8]byte
	loadTime uint64 // 0 until the first read
	name     string
	progType uint32

	gadget *gadget // nil: unowned
	// loader is the process that loaded the program, when an event said so.
	loader *ProcessRef
	// resolved is true once ownership was decided from an event or a holder.
	resolved bool

	read     bool // at least one successful stats read
	info     loader.ProgramInfo
	readAt   time.Time
	hasDelta bool
	runtimeD uint64
	runcntD  uint64
	cpu      float64
	pids     []uint32
	// tagHex caches the hex form of tagOf.
	tagHex string
	tagOf  [8]byte
}

type gadget struct {
	info     Gadget
	owner    instance
	programs int
}

type mapEntry struct {
	info loader.MapInfo
	// used marks maps referenced in the current sweep; the others are evicted.
	used bool
}

// New returns an empty Tracker reading through k.
func New(k Kernel, opts Options) *Tracker {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Tracker{
		kernel:    k,
		opts:      opts,
		programs:  make(map[uint32]*program),
		gadgets:   make(map[instance]*gadget),
		maps:      make(map[uint32]*mapEntry),
		processes: make(map[uint32]*loader.Process),
		seen:      make(map[uint32]struct{}),
	}
}

// Len returns the number of programs in the inventory.
func (t *Tracker) Len() int { return len(t.programs) }

// ProgramIDs returns the IDs in the inventory, sorted.
func (t *Tracker) ProgramIDs() []uint32 {
	ids := make([]uint32, 0, len(t.programs))
	for id := range t.programs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Counters returns the running totals.
func (t *Tracker) Counters() Counters { return t.counters }

// Apply updates the inventory with one event and returns what consumers
// should be told, or nil when the event changed nothing (a duplicate load,
// the release of an unknown program). EventLost is counted only: the
// caller must call Resync.
func (t *Tracker) Apply(ev loader.ProgramEvent) *Event {
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
		ProgType:   ProgTypeName(typ),
		Tag:        hex.EncodeToString(p.tag[:]),
		Loader:     p.loader,
		KernelTime: ev.KernelTime,
		Time:       t.opts.Now(),
	}
	if p.gadget != nil {
		g := p.gadget.info
		out.Gadget = &g
	}
	return out
}

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
		ID:    proc.Labels[LabelID],
		Name:  proc.Labels[LabelName],
		Image: proc.Labels[LabelImage],
		Owner: ProcessRef{PID: proc.PID, Comm: proc.Comm, Exe: proc.Exe},
	}
	if self := t.opts.Self; self.PID != 0 && self.PID == proc.PID {
		g.Name = cmp.Or(g.Name, self.Name)
		g.Image = cmp.Or(g.Image, self.Image)
	}
	if g.ID == "" {
		g.ID = GadgetID(t.opts.Node, proc.PID, proc.StartTime)
	}
	if g.Name == "" {
		g.Name = proc.Comm
	}
	if g.Image == "" {
		g.Image = proc.Exe
	}
	return g
}

// GadgetID is the generated ID of the gadget owned by one process instance
// on one node: 11 hex digits, stable for the life of the process.
func GadgetID(node string, pid uint32, startTime uint64) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d/%d", node, pid, startTime))
	return hex.EncodeToString(sum[:])[:11]
}

func (t *Tracker) remove(p *program) {
	t.unown(p)
	delete(t.programs, p.id)
}

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
	start := t.opts.Now()
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
			t.merge(p, *info, t.opts.Now())
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
	if !t.opts.SkipHolders {
		if err := t.settleOwners(); err != nil {
			errs = append(errs, err)
		}
		between()
	}
	end := t.opts.Now()
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

// snapshot builds the rows of the current inventory.
func (t *Tracker) snapshot(now time.Time) *Snapshot {
	snap := &Snapshot{
		Node:       t.opts.Node,
		Time:       now,
		Source:     t.opts.Source,
		Programs:   make([]Row, 0, len(t.programs)),
		GadgetInfo: make(map[string]Gadget, len(t.gadgets)),
	}
	// Rows are built in ID order, and their slices cut from two shared
	// arrays: a snapshot of thousands of programs costs a few allocations.
	t.ids = t.ids[:0]
	var nMaps, nPIDs int
	for id, p := range t.programs {
		if p.read {
			t.ids = append(t.ids, id)
			nMaps += len(p.info.MapIDs)
			nPIDs += len(p.pids)
		}
	}
	slices.Sort(t.ids)
	mapArena := make([]uint32, 0, nMaps)
	pidArena := make([]uint32, 0, nPIDs)
	cut := func(arena *[]uint32, v []uint32) []uint32 {
		start := len(*arena)
		*arena = append(*arena, v...)
		return (*arena)[start:len(*arena):len(*arena)]
	}
	byGadget := make(map[*gadget]*rowSum, len(t.gadgets))
	unowned := newRowSum(Row{NodeName: t.opts.Node})
	// Programs listed by a snapshot or an event but never read (gone
	// before the first sweep, or the read failed) have no row.
	for _, id := range t.ids {
		p := t.programs[id]
		if p.tagHex == "" || p.tagOf != p.tag {
			p.tagHex, p.tagOf = hex.EncodeToString(p.tag[:]), p.tag
		}
		row := Row{
			NodeName: t.opts.Node,
			ProgID:   p.id,
			ProgName: p.name,
			ProgType: ProgTypeName(p.progType),
			Totals: Totals{
				Runtime:         p.info.RunTime,
				Runcount:        p.info.RunCount,
				RuntimeDelta:    p.runtimeD,
				RuncountDelta:   p.runcntD,
				CPUPercent:      p.cpu,
				RecursionMisses: p.info.RecursionMisses,
			},
			Loader: p.loader,
			MapIDs: cut(&mapArena, p.info.MapIDs),
			Tag:    p.tagHex,
			PIDs:   cut(&pidArena, p.pids),
		}
		for _, mid := range row.MapIDs {
			row.MapMemory += t.maps[mid].info.Memlock
		}
		row.MapCount = len(row.MapIDs)
		row.Comms = t.comms(row.PIDs)
		sum := unowned
		if g := p.gadget; g != nil {
			row.GadgetID, row.GadgetName, row.GadgetImage = g.info.ID, g.info.Name, g.info.Image
			var ok bool
			if sum, ok = byGadget[g]; !ok {
				sum = newRowSum(Row{
					NodeName:    t.opts.Node,
					GadgetID:    g.info.ID,
					GadgetName:  g.info.Name,
					GadgetImage: g.info.Image,
					Loader:      &g.info.Owner,
				})
				byGadget[g] = sum
			}
		}
		sum.add(&row)
		snap.Programs = append(snap.Programs, row)
	}

	snap.Gadgets = make([]Row, 0, len(byGadget))
	for g, sum := range byGadget {
		snap.Gadgets = append(snap.Gadgets, t.total(sum))
		snap.GadgetInfo[g.info.ID] = g.info
	}
	snap.Unowned = t.total(unowned)
	sort.Slice(snap.Gadgets, func(i, j int) bool {
		a, b := snap.Gadgets[i], snap.Gadgets[j]
		if a.GadgetName != b.GadgetName {
			return a.GadgetName < b.GadgetName
		}
		return a.GadgetID < b.GadgetID
	})
	return snap
}

// rowSum accumulates program rows into one gadget-level row.
type rowSum struct {
	row  Row
	maps map[uint32]struct{}
	pids map[uint32]struct{}
}

func newRowSum(head Row) *rowSum {
	return &rowSum{row: head, maps: make(map[uint32]struct{}), pids: make(map[uint32]struct{})}
}

func (s *rowSum) add(r *Row) {
	t := r.Totals
	// A program's row counts itself (its own ProgramCount is 0); the maps
	// are counted once each by total.
	t.ProgramCount, t.MapMemory, t.MapCount = 1, 0, 0
	s.row.Add(t)
	for _, mid := range r.MapIDs {
		s.maps[mid] = struct{}{}
	}
	for _, pid := range r.PIDs {
		s.pids[pid] = struct{}{}
	}
}

// total finishes a sum: a map shared by two of its programs counts once.
func (t *Tracker) total(s *rowSum) Row {
	for mid := range s.maps {
		s.row.MapIDs = append(s.row.MapIDs, mid)
		s.row.MapMemory += t.maps[mid].info.Memlock
	}
	slices.Sort(s.row.MapIDs)
	s.row.MapCount = len(s.row.MapIDs)
	for pid := range s.pids {
		s.row.PIDs = append(s.row.PIDs, pid)
	}
	if s.row.PIDs == nil {
		s.row.PIDs = make([]uint32, 0)
	}
	slices.Sort(s.row.PIDs)
	s.row.Comms = t.comms(s.row.PIDs)
	return s.row
}

// comms returns the distinct command names of pids, in PID order.
func (t *Tracker) comms(pids []uint32) []string {
	// Empty, not nil: JSON consumers get [] as for pids.
	out := make([]string, 0)
	for _, pid := range pids {
		if proc, ok := t.processes[pid]; ok && !slices.Contains(out, proc.Comm) {
			out = append(out, proc.Comm)
		}
	}
	return out
}

var _ Kernel = (*loader.Kernel)(nil)
