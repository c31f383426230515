package state

import (
	"cmp"
	"encoding/hex"
	"slices"
	"sort"
	"time"
)

// Rows are shared from snapshot to snapshot. A program keeps its Row in
// program.row, and a snapshot points to it: from then on the row is read
// only, and a sweep that changes any of its fields first replaces it by a
// copy (ownRow). Its slices are replaced, never written into, when they
// change: the map IDs, PIDs and comms of a row are shared, read only, by
// every row since they last changed. A gadget (and the unowned row) keeps
// its distinct maps, PIDs and comms the same way, and recomputes them only
// when one of its programs' lists changed, a program joined or left it,
// or the holders were scanned. So a sweep of programs that did not change
// allocates the snapshot's two slices and nothing per program, and the
// rows of a steady inventory exist once, not once in the Tracker and once
// in the snapshot a publisher reads.

// ownRow returns p's row for writing: when a snapshot holds it, a copy,
// which is p's row from then on.
func (p *program) ownRow() *Row {
	if p.rowShared {
		r := *p.row
		p.row, p.rowShared = &r, false
	}
	return p.row
}

// snapshot builds the rows of the current inventory; links are the
// sweep's walk of the kernel's BPF links, which fill the Attach columns.
func (t *Tracker) snapshot(now time.Time, links *linkWalk) *Snapshot {
	order := t.sortedPrograms()
	snap := &Snapshot{
		Node:       t.opts.Node,
		Time:       now,
		Source:     t.opts.Source,
		Programs:   t.spare.rows,
		GadgetInfo: make(map[string]Gadget, len(t.gadgets)),
		versions:   t.spare.versions,
	}
	t.spare = snapshotStorage{}
	if cap(snap.Programs) < len(order) || cap(snap.versions) < 2*len(order) {
		snap.Programs, snap.versions = make([]*Row, 0, len(order)), make([]uint64, 0, 2*len(order))
	}
	t.summed = t.summed[:0]
	t.unownedSum.reset()
	// Programs listed by a snapshot or an event but never read (gone
	// before the first sweep, or the read failed) have no row.
	for i, p := range order {
		if i%yieldEvery == yieldEvery-1 {
			// Only loads of new programs: order and the sums stay valid.
			t.pace.yieldLoads()
		}
		if !p.read {
			continue
		}
		row := t.programRow(p)
		sum := &t.unownedSum
		if g := p.gadget; g != nil {
			sum = t.gadgetSum(g)
		}
		sum.add(p, liveShare(p))
		p.share.reported = statsOf(p)
		// The columns that do not change the row's versions (see
		// Snapshot.RowVersion).
		if attach := links.of(p.id); !slices.Equal(row.Attach, attach) || (row.Attach == nil) != (attach == nil) {
			row = p.ownRow()
			row.Attach = links.keep(attach)
		}
		if t.opts.Pods != nil {
			pl := row.Placement.unnamed()
			t.namePod(&pl)
			if pl != row.Placement {
				row = p.ownRow()
				row.Placement = pl
			}
		}
		snap.Programs = append(snap.Programs, row)
		p.rowShared = true
		snap.versions = append(snap.versions, p.rowVer, p.slowVer)
	}

	// Recycled storage may point to rows of a larger inventory after
	// them: they would be kept alive.
	clear(snap.Programs[len(snap.Programs):cap(snap.Programs)])
	snap.Gadgets = make([]Row, 0, len(t.summed))
	for _, g := range t.summed {
		snap.Gadgets = append(snap.Gadgets, t.total(&g.sum, t.gadgetHead(g), &g.ledger, now))
		snap.GadgetInfo[g.info.ID] = g.info
	}
	snap.Unowned = t.total(&t.unownedSum, Row{NodeName: t.opts.Node}, &t.unowned, now)
	sort.Slice(snap.Gadgets, func(i, j int) bool {
		a, b := snap.Gadgets[i], snap.Gadgets[j]
		if a.GadgetName != b.GadgetName {
			return a.GadgetName < b.GadgetName
		}
		return a.GadgetID < b.GadgetID
	})
	t.namePods(snap)
	return snap
}

// sortedPrograms returns the inventory in ID order, brought up to date
// only when it changed since the last call; t.ids holds the same IDs.
// During a load storm every phase of a sweep finds it changed: the
// programs inserted since are sorted and merged in, and those dropped
// left out, in one pass over the order, instead of sorting the whole
// inventory again (the loop applies no event meanwhile).
func (t *Tracker) sortedPrograms() []*program {
	if !t.orderStale && len(t.order) == len(t.programs) {
		return t.order
	}
	dropped := func(p *program) bool { return p.dropped }
	added := slices.DeleteFunc(t.orderAdded, dropped)
	slices.SortFunc(added, func(a, b *program) int { return cmp.Compare(a.id, b.id) })
	t.order = slices.DeleteFunc(t.order, dropped)
	if len(t.order)+len(added) == len(t.programs) {
		t.order = mergeOrder(t.order, added)
	} else {
		// Not a program inserted or dropped the usual way: sort all.
		clear(t.order)
		t.order = t.order[:0]
		for _, p := range t.programs {
			t.order = append(t.order, p)
		}
		slices.SortFunc(t.order, func(a, b *program) int { return cmp.Compare(a.id, b.id) })
	}
	clear(t.orderAdded)
	t.orderAdded = t.orderAdded[:0]
	t.ids = t.ids[:0]
	for _, p := range t.order {
		t.ids = append(t.ids, p.id)
	}
	t.orderStale = false
	return t.order
}

// mergeOrder returns order and added, each sorted by ID, merged in
// order's storage: the merge runs from the back, so that no program is
// overwritten before it is moved.
func mergeOrder(order, added []*program) []*program {
	kept, n := len(order), len(order)+len(added)
	order = slices.Grow(order, len(added))[:n]
	i, j := kept-1, len(added)-1
	for k := n - 1; k >= 0; k-- {
		if j < 0 || (i >= 0 && order[i].id > added[j].id) {
			order[k] = order[i]
			i--
		} else {
			order[k] = added[j]
			j--
		}
	}
	return order
}

// frozen returns a copy of v for rows to share: never nil, never written
// to. An empty one costs no allocation.
func frozen[T any](v []T) []T {
	return append(make([]T, 0, len(v)), v...)
}

// programRow refreshes and returns the row of program p, its gadget's
// columns included: p's row, replaced by a changed copy when a snapshot
// holds it and a field changed. Each field is compared before it is
// written, so that telling what changed needs no copy of the row.
func (t *Tracker) programRow(p *program) *Row {
	r := p.row
	tot := Totals{
		Runtime:         p.info.RunTime,
		Runcount:        p.info.RunCount,
		RuntimeDelta:    p.runtimeD,
		RuncountDelta:   p.runcntD,
		CPUPercent:      p.cpuPercent(),
		RecursionMisses: p.info.RecursionMisses,
		MapMemory:       r.MapMemory,
		MapCount:        len(p.info.MapIDs),
	}
	// numbers: Totals or Cost changed; slow: any other field.
	numbers := !p.rowOK || tot != r.Totals
	if numbers {
		r = p.ownRow()
		r.Totals = tot
		// Without runs in the interval the cost columns do not depend on
		// its length; with runs, Runcount changed.
		t.fillCost(r, p.interval)
	}
	slow := t.refreshHead(p)
	r = p.row
	lists := !p.rowOK || p.rowGadget != p.gadget
	if !p.rowOK || !slices.Equal(r.MapIDs, p.info.MapIDs) {
		r = p.ownRow()
		r.MapIDs, lists, slow = frozen(p.info.MapIDs), true, true
	}
	if lists || t.memlockChanged {
		var mem uint64
		for _, mid := range r.MapIDs {
			if m, ok := t.maps[mid]; ok {
				mem += m.info.Memlock
			}
		}
		if mem != r.MapMemory {
			r = p.ownRow()
			r.MapMemory, numbers = mem, true
		}
	}
	pidsChanged := !p.rowOK || !slices.Equal(r.PIDs, p.pids)
	if pidsChanged {
		r = p.ownRow()
		r.PIDs, lists, slow = frozen(p.pids), true, true
	}
	if pidsChanged || t.holdersScanned {
		if comms := t.sharedComms(r.Comms, r.PIDs); !sameSlice(comms, r.Comms) {
			r = p.ownRow()
			r.Comms, slow = comms, true
		}
	}
	if lists {
		// The sums of p's holder list its maps and PIDs again.
		t.rowGen++
		p.rowGen = t.rowGen
	}
	if numbers || slow {
		t.rowVer++
		p.rowVer = t.rowVer
		if slow {
			p.slowVer = t.rowVer
		}
	}
	p.rowOK, p.rowGadget = true, p.gadget
	return r
}

// refreshHead sets the identity columns of p's row (node, program,
// loader, placement, gadget) and reports whether any changed (always on
// p's first row).
func (t *Tracker) refreshHead(p *program) bool {
	r := p.row
	gid, gname, gimage := "", "", ""
	if g := p.gadget; g != nil {
		gid, gname, gimage = g.info.ID, g.info.Name, g.info.Image
	}
	typ := progTypeName(p.info.Type)
	// r.Placement is set by place alone, which marks it placed.
	placed := p.placed
	p.placed = false
	if p.rowOK && !placed && r.NodeName == t.opts.Node && r.ProgID == p.id && r.ProgName == p.info.Name &&
		r.ProgType == typ && r.Loader == p.loader && p.rowTag == p.info.Tag && r.GadgetID == gid &&
		r.GadgetName == gname && r.GadgetImage == gimage {
		return false
	}
	r = p.ownRow()
	r.NodeName, r.ProgID, r.ProgName, r.ProgType = t.opts.Node, p.id, p.info.Name, typ
	r.Loader = p.loader
	if !p.rowOK || p.rowTag != p.info.Tag {
		r.Tag, p.rowTag = hex.EncodeToString(p.info.Tag[:]), p.info.Tag
	}
	r.GadgetID, r.GadgetName, r.GadgetImage = gid, gname, gimage
	return true
}

// sameSlice reports whether a and b are the same slice: both nil or
// neither (JSON tells them apart), the same length and, when not empty,
// the same first element.
func sameSlice[T any](a, b []T) bool {
	return (a == nil) == (b == nil) && len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// gadgetHead is the identity part of g's row.
func (t *Tracker) gadgetHead(g *gadget) Row {
	head := Row{
		NodeName:    t.opts.Node,
		GadgetID:    g.info.ID,
		GadgetName:  g.info.Name,
		GadgetImage: g.info.Image,
		Placement:   g.info.Placement,
	}
	if g.key.owner.pid != 0 {
		head.Loader = &g.info.Owner
	}
	return head
}

// gadgetSum returns g's sum for the snapshot being built, starting it
// when g has no program in it yet.
func (t *Tracker) gadgetSum(g *gadget) *rowSum {
	if g.summedAt != t.counters.Sweeps+1 {
		g.summedAt = t.counters.Sweeps + 1
		g.sum.reset()
		t.summed = append(t.summed, g)
	}
	return &g.sum
}

// rowSum accumulates program rows into one holder-level row (a gadget's,
// or the unowned row), and keeps the lists of its last row.
type rowSum struct {
	count int
	// live sums what the holder counts of its live programs.
	live runStats
	// gens sums the members' rowGen: with count, it changes whenever a
	// member's lists changed or the members did, since every change takes
	// a generation above all others.
	gens    uint64
	members []*program

	// The lists of the last row and the count and gens they are of.
	listsOK            bool
	listsCount         int
	listsGens          uint64
	mapIDs, pids       []uint32
	comms              []string
	mapMemory          uint64
	scratchM, scratchP []uint32
}

// reset starts a new sum, keeping the lists of the last one.
func (s *rowSum) reset() {
	clear(s.members)
	s.count, s.live, s.gens, s.members = 0, runStats{}, 0, s.members[:0]
}

// add counts program p, of which the holder counts share.
func (s *rowSum) add(p *program, share runStats) {
	// The maps are counted once each by total, the run counters by the
	// holder's ledger.
	s.count++
	s.live.add(share)
	s.gens += p.rowGen
	s.members = append(s.members, p)
}

// total finishes a sum into the row headed by head: a map shared by two
// of its programs counts once, and the cumulative and delta columns are
// the holder's ledger's at now.
func (t *Tracker) total(s *rowSum, head Row, l *ledger, now time.Time) Row {
	var interval time.Duration
	if l.reported {
		interval = max(now.Sub(l.lastAt), 0)
	}
	row := head
	row.ProgramCount = s.count
	l.report(&row, s.live, now)
	t.fillCost(&row, interval)
	t.sumLists(s)
	row.MapIDs, row.MapMemory, row.MapCount = s.mapIDs, s.mapMemory, len(s.mapIDs)
	row.PIDs, row.Comms = s.pids, s.comms
	clear(s.members)
	s.members = s.members[:0]
	return row
}

// sumLists brings the distinct maps, PIDs and comms of s up to date.
func (t *Tracker) sumLists(s *rowSum) {
	changed := !s.listsOK || s.listsCount != s.count || s.listsGens != s.gens || t.holdersScanned
	// At 20000 members these passes take about a millisecond with warm
	// caches (BenchmarkSumLists), more on a busy node: they let loads of
	// new programs in as the rows' loop does (see pace.go), which change
	// no member.
	pause := func() {}
	if t.pace != nil {
		pause = t.pace.yieldLoads
	}
	if changed {
		s.scratchM, s.scratchP = s.scratchM[:0], s.scratchP[:0]
		var lastPIDs []uint32
		for i, p := range s.members {
			s.scratchM = append(s.scratchM, p.row.MapIDs...)
			// Programs in ID order mostly come in runs of the same
			// holders.
			if i == 0 || !slices.Equal(p.row.PIDs, lastPIDs) {
				s.scratchP = append(s.scratchP, p.row.PIDs...)
				lastPIDs = p.row.PIDs
			}
			if i%pauseEvery == pauseEvery-1 {
				pause()
			}
		}
		maps := distinctIDs(s.scratchM, &t.idBits, pause)
		pids := distinctIDs(s.scratchP, &t.idBits, pause)
		if !slices.Equal(maps, s.mapIDs) || s.mapIDs == nil {
			// nil when none, as the JSON of a row without maps omits them.
			s.mapIDs = nil
			if len(maps) > 0 {
				s.mapIDs = frozen(maps)
			}
		}
		if !slices.Equal(pids, s.pids) || s.pids == nil {
			s.pids = frozen(pids)
		}
		s.comms = t.sharedComms(s.comms, s.pids)
		s.listsOK, s.listsCount, s.listsGens = true, s.count, s.gens
	}
	if changed || t.memlockChanged {
		s.mapMemory = 0
		for i, mid := range s.mapIDs {
			if m, ok := t.maps[mid]; ok {
				s.mapMemory += m.info.Memlock
			}
			if i%pauseEvery == pauseEvery-1 {
				pause()
			}
		}
	}
}

// sharedComms returns the distinct command names of pids, in PID order:
// prev when it lists them already, else a new slice (never nil: JSON
// consumers get [] as for pids).
func (t *Tracker) sharedComms(prev []string, pids []uint32) []string {
	out := t.commScratch[:0]
	for _, pid := range pids {
		if proc, ok := t.processes[pid]; ok && !slices.Contains(out, proc.Comm) {
			out = append(out, proc.Comm)
		}
	}
	t.commScratch = out
	if prev != nil && slices.Equal(prev, out) {
		return prev
	}
	return frozen(out)
}
