package state

import (
	"encoding/hex"
	"slices"
	"sort"
	"time"
)

// snapshot builds the rows of the current inventory.
func (t *Tracker) snapshot(now time.Time) *Snapshot {
	snap := &Snapshot{
		Node:       t.opts.Node,
		Time:       now,
		Source:     t.opts.Source,
		Programs:   make([]Row, 0, len(t.programs)),
		GadgetInfo: make(map[string]Gadget, len(t.gadgets)),
	}
	arenas := t.sortReadIDs()
	byGadget := make(map[*gadget]*rowSum, len(t.gadgets))
	unowned := newRowSum(Row{NodeName: t.opts.Node})
	// Programs listed by a snapshot or an event but never read (gone
	// before the first sweep, or the read failed) have no row.
	for _, id := range t.ids {
		p := t.programs[id]
		row := t.programRow(p, &arenas)
		sum := unowned
		if p.gadget != nil {
			sum = t.gadgetSum(byGadget, p.gadget)
		}
		sum.add(&row, liveShare(p))
		p.share.reported = statsOf(p)
		snap.Programs = append(snap.Programs, row)
	}

	snap.Gadgets = make([]Row, 0, len(byGadget))
	for g, sum := range byGadget {
		snap.Gadgets = append(snap.Gadgets, t.total(sum, &g.ledger, now))
		snap.GadgetInfo[g.info.ID] = g.info
	}
	snap.Unowned = t.total(unowned, &t.unowned, now)
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

// rowArenas hold the map IDs and PIDs of a snapshot's program rows: rows
// are built in ID order and their slices cut from these two shared arrays,
// so that a snapshot of thousands of programs costs a few allocations.
type rowArenas struct {
	maps, pids []uint32
}

// cut appends v to arena and returns the appended part, capped so that
// appending to it cannot overwrite the next row's.
func cut(arena *[]uint32, v []uint32) []uint32 {
	start := len(*arena)
	*arena = append(*arena, v...)
	return (*arena)[start:len(*arena):len(*arena)]
}

// sortReadIDs sets t.ids to the IDs of the programs read at least once, in
// ID order, and returns arenas sized for their rows.
func (t *Tracker) sortReadIDs() rowArenas {
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
	return rowArenas{maps: make([]uint32, 0, nMaps), pids: make([]uint32, 0, nPIDs)}
}

// programRow is the row of program p, its gadget's columns included.
func (t *Tracker) programRow(p *program, a *rowArenas) Row {
	if p.tagHex == "" || p.tagOf != p.tag {
		p.tagHex, p.tagOf = hex.EncodeToString(p.tag[:]), p.tag
	}
	row := Row{
		NodeName: t.opts.Node,
		ProgID:   p.id,
		ProgName: p.name,
		ProgType: progTypeName(p.progType),
		Totals: Totals{
			Runtime:         p.info.RunTime,
			Runcount:        p.info.RunCount,
			RuntimeDelta:    p.runtimeD,
			RuncountDelta:   p.runcntD,
			CPUPercent:      p.cpu,
			RecursionMisses: p.info.RecursionMisses,
		},
		Loader: p.loader,
		MapIDs: cut(&a.maps, p.info.MapIDs),
		Tag:    p.tagHex,
		PIDs:   cut(&a.pids, p.pids),
		// Where the loader ran; where the owner runs when no load event
		// named the loader.
		Placement: p.where,
	}
	for _, mid := range row.MapIDs {
		row.MapMemory += t.maps[mid].info.Memlock
	}
	row.MapCount = len(row.MapIDs)
	row.Comms = t.comms(row.PIDs)
	t.fillCost(&row, p.interval)
	if g := p.gadget; g != nil {
		row.GadgetID, row.GadgetName, row.GadgetImage = g.info.ID, g.info.Name, g.info.Image
	}
	return row
}

// gadgetSum returns the sum of g's rows in byGadget, adding an empty one
// headed by g's identity when g has none yet.
func (t *Tracker) gadgetSum(byGadget map[*gadget]*rowSum, g *gadget) *rowSum {
	if sum, ok := byGadget[g]; ok {
		return sum
	}
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
	sum := newRowSum(head)
	byGadget[g] = sum
	return sum
}

// rowSum accumulates program rows into one gadget-level row.
type rowSum struct {
	row Row
	// live sums what the holder counts of its live programs.
	live runStats
	maps map[uint32]struct{}
	pids map[uint32]struct{}
}

func newRowSum(head Row) *rowSum {
	return &rowSum{row: head, maps: make(map[uint32]struct{}), pids: make(map[uint32]struct{})}
}

// add counts program row r, of which the holder counts share.
func (s *rowSum) add(r *Row, share runStats) {
	// The maps are counted once each by total, the run counters by the
	// holder's ledger.
	s.row.ProgramCount++
	s.live.add(share)
	for _, mid := range r.MapIDs {
		s.maps[mid] = struct{}{}
	}
	for _, pid := range r.PIDs {
		s.pids[pid] = struct{}{}
	}
}

// total finishes a sum: a map shared by two of its programs counts once,
// and the cumulative and delta columns are the holder's ledger's at now.
func (t *Tracker) total(s *rowSum, l *ledger, now time.Time) Row {
	var interval time.Duration
	if l.reported {
		interval = max(now.Sub(l.lastAt), 0)
	}
	l.report(&s.row, s.live, now)
	t.fillCost(&s.row, interval)
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
