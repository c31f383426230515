package fleet

import (
	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// slot is one gadget of a node, or its unowned programs: the newest
// complete interval, shown, and the parts of a newer one still arriving.
type slot struct {
	shown, pending *programSet
}

// programSet is one interval of a gadget or of _unowned, reassembled from
// its parts. Every part carries the whole totals and identity; the program
// rows are the union of the parts'.
type programSet struct {
	seq      uint64
	identity publish.GadgetIdentity
	owner    state.ProcessRef
	totals   publish.MessageTotals
	// parts holds each part's rows, nil until it arrived.
	parts    [][]state.Row
	received int
	// rows counts the rows held over all parts.
	rows int
}

func (p *programSet) complete() bool { return p.received == len(p.parts) }

// addPart takes one part of interval h.Seq into s. A part of a newer
// interval starts a pending set; once all its parts are in, it is shown.
func (f *Fleet) addPart(s *slot, h *publish.Header, id publish.GadgetIdentity, owner state.ProcessRef, totals publish.MessageTotals, rows []state.Row) {
	var set *programSet
	switch {
	case s.pending != nil && s.pending.seq == h.Seq && len(s.pending.parts) == h.Parts:
		set = s.pending
	case s.shown != nil && s.shown.seq == h.Seq && len(s.shown.parts) == h.Parts:
		// The shown interval again (the key-value bucket and a live
		// message): refresh its part.
		set = s.shown
	default:
		f.dropSet(s.pending)
		set = &programSet{seq: h.Seq, parts: make([][]state.Row, h.Parts)}
		s.pending = set
	}
	set.identity, set.owner, set.totals = id, owner, totals
	i := h.Part - 1
	old := set.parts[i]
	if old == nil {
		set.received++
	}
	f.programs -= len(old)
	set.rows -= len(old)
	room := max(0, min(MaxProgramsPerSet-set.rows, MaxPrograms-f.programs))
	if len(rows) > room {
		f.stats.DroppedPrograms += uint64(len(rows) - room)
		rows = rows[:room]
	}
	for j := range rows {
		f.stats.capRow(&rows[j])
	}
	if rows == nil {
		// Arrived, even without rows.
		rows = []state.Row{}
	}
	set.parts[i] = rows
	f.programs += len(rows)
	set.rows += len(rows)
	if set == s.pending && set.complete() {
		f.dropSet(s.shown)
		s.shown, s.pending = set, nil
	}
}

// closeSlot ends interval seq for s and reports whether s was in it. A
// pending set of seq that lacks parts is shown with the rows that came.
func (f *Fleet) closeSlot(s *slot, seq uint64) bool {
	if p := s.pending; p != nil {
		if p.seq == seq {
			f.stats.IncompleteIntervals++
			f.dropSet(s.shown)
			s.shown = p
		} else {
			f.dropSet(p)
		}
		s.pending = nil
	}
	if s.shown == nil || s.shown.seq != seq {
		f.dropSlot(s)
		return false
	}
	return true
}

// dropSlot releases the rows of both sets of s.
func (f *Fleet) dropSlot(s *slot) {
	f.dropSet(s.shown)
	f.dropSet(s.pending)
	s.shown, s.pending = nil, nil
}

func (f *Fleet) dropSet(p *programSet) {
	if p != nil {
		f.programs -= p.rows
		p.rows = 0
	}
}
