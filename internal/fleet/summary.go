package fleet

import (
	"cmp"
	"slices"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// summary is what the view keeps of a node's latest _summary: each
// gadget's identity, owner and totals, and the unowned totals. The node's
// health goes to node.info like a _node message's.
type summary struct {
	seq     uint64
	gadgets []publish.GadgetSummary
	unowned publish.MessageTotals
}

// applySummary takes an accepted summary as the node's complete interval:
// it replaces the previous one, and closes the interval of the node's
// gadget messages if it also sends those.
func (f *Fleet) applySummary(n *node, m *publish.SummaryMessage) {
	f.stats.capNode(&m.NodeMessage)
	info := m.NodeMessage
	n.info = &info
	gadgets := m.Gadgets
	if len(gadgets) > MaxGadgetsPerNode {
		f.stats.DroppedGadgets += uint64(len(gadgets) - MaxGadgetsPerNode)
		gadgets = slices.Clip(gadgets[:MaxGadgetsPerNode])
	}
	for i := range gadgets {
		f.stats.capIdentity(&gadgets[i].Gadget)
	}
	n.summary = &summary{seq: m.Seq, gadgets: gadgets, unowned: m.Unowned}
	if f.liveRollups() {
		f.updateRollup(n, gadgets, m.Unowned)
	}
	if len(n.gadgets) > 0 || n.unowned != nil {
		f.closeInterval(n, m.Seq)
	}
}

// summaryRows appends the gadget rows of a node's summary, sorted by
// gadget name and ID.
func summaryRows(rows []Row, name string, n *node) []Row {
	start := len(rows)
	cpus := n.cpus()
	for _, g := range n.summary.gadgets {
		r := state.Row{
			NodeName:    name,
			GadgetID:    g.Gadget.ID,
			GadgetName:  g.Gadget.Name,
			GadgetImage: g.Gadget.Image,
			Totals:      state.Totals(g.Totals),
			Loader:      &state.ProcessRef{PID: g.OwnerPID},
			PIDs:        ownerPIDs(g.OwnerPID),
			Comms:       []string{},
		}
		// The cost columns the totals imply, over the node's interval
		// and CPUs, as for a gadget message's row.
		r.Cost = state.CostOf(&r, n.interval, cpus, 0)
		rows = append(rows, Row{Seq: n.seq, Row: r})
	}
	slices.SortFunc(rows[start:], func(a, b Row) int {
		return cmp.Or(cmp.Compare(a.GadgetName, b.GadgetName), cmp.Compare(a.GadgetID, b.GadgetID))
	})
	return rows
}

// ownerPIDs is the pid list of a summary's gadget row: its owner, if any.
func ownerPIDs(pid uint32) []uint32 {
	if pid == 0 {
		return []uint32{}
	}
	return []uint32{pid}
}

// gadgetTotals calls fn with the identity and totals of every gadget the
// node shows, from its summary when it has one, and then with its
// unowned totals (the identity empty) when it has unowned programs.
func (n *node) gadgetTotals(fn func(id publish.GadgetIdentity, t publish.MessageTotals, gadget bool)) {
	if s := n.summary; s != nil {
		for _, g := range s.gadgets {
			fn(g.Gadget, g.Totals, true)
		}
		if s.unowned.ProgramCount > 0 {
			fn(publish.GadgetIdentity{}, s.unowned, false)
		}
		return
	}
	for _, s := range n.gadgets {
		if g := s.shown; g != nil {
			fn(g.identity, g.totals, true)
		}
	}
	if u := n.unowned; u != nil && u.shown != nil && u.shown.rows > 0 {
		fn(publish.GadgetIdentity{}, u.shown.totals, false)
	}
}
