package fleet

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// Row is a gadget or program row of the fleet view: the tracker's row
// and the seq of the node's newest accepted message, so that a reader can
// tell how current each node is.
type Row struct {
	state.Row
	Seq uint64 `json:"seq"`
}

// GadgetRows returns one row per gadget of the nodes matching glob, sorted
// by node, gadget name and ID. A node that sends summaries shows its
// latest summary's gadgets.
func (f *Fleet) GadgetRows(glob string) []Row {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := f.matching(glob)
	// Sized once: a fleet's rows are many and large, and growing the
	// slice would copy them over and over.
	size := 0
	for _, name := range names {
		if n := f.nodes[name]; n.summary != nil {
			size += len(n.summary.gadgets)
		} else {
			size += len(n.gadgets)
		}
	}
	rows := make([]Row, 0, size)
	for _, name := range names {
		n := f.nodes[name]
		if n.summary != nil {
			rows = summaryRows(rows, name, n)
			continue
		}
		start := len(rows)
		for _, s := range n.gadgets {
			if s.shown != nil {
				r := gadgetRow(name, s.shown)
				// The cost columns a message's totals imply, over the
				// node's interval and CPUs.
				r.Cost = state.CostOf(&r, n.interval, n.cpus(), 0)
				rows = append(rows, Row{Row: r, Seq: n.seq})
			}
		}
		slices.SortFunc(rows[start:], func(a, b Row) int {
			return cmp.Or(cmp.Compare(a.GadgetName, b.GadgetName), cmp.Compare(a.GadgetID, b.GadgetID))
		})
	}
	return rows
}

func gadgetRow(node string, g *programSet) state.Row {
	owner := g.owner
	r := state.Row{
		NodeName:    node,
		GadgetID:    g.identity.ID,
		GadgetName:  g.identity.Name,
		GadgetImage: g.identity.Image,
		Totals:      state.Totals(g.totals),
		Loader:      &owner,
		PIDs:        []uint32{},
		Comms:       []string{},
	}
	// A row's comms are the distinct names of its pids, not one per pid:
	// take the union of both lists, as the tracker does, each up to
	// MaxListEntries.
	for _, part := range g.parts {
		for _, p := range part {
			for _, pid := range p.PIDs {
				if len(r.PIDs) < MaxListEntries && !slices.Contains(r.PIDs, pid) {
					r.PIDs = append(r.PIDs, pid)
				}
			}
			for _, c := range p.Comms {
				if len(r.Comms) < MaxListEntries && !slices.Contains(r.Comms, c) {
					r.Comms = append(r.Comms, c)
				}
			}
		}
	}
	slices.Sort(r.PIDs)
	return r
}

// ProgramRows returns one row per program of the nodes matching glob,
// unowned ones included, sorted by node and program ID.
func (f *Fleet) ProgramRows(glob string) []Row {
	f.mu.Lock()
	defer f.mu.Unlock()
	rows := []Row{}
	for _, name := range f.matching(glob) {
		n := f.nodes[name]
		start := len(rows)
		for _, s := range n.slots() {
			for _, part := range s.shown.parts {
				for _, p := range part {
					p.NodeName = name
					rows = append(rows, Row{Row: p, Seq: n.seq})
				}
			}
		}
		slices.SortFunc(rows[start:], func(a, b Row) int { return cmp.Compare(a.ProgID, b.ProgID) })
	}
	return rows
}

// ImageRow is the rollup of the gadgets of one image across the fleet.
type ImageRow struct {
	// GadgetImage is empty for the unowned programs.
	GadgetImage string `json:"gadgetImage"`
	// Nodes counts the nodes running the image; NodeNames lists them.
	Nodes     int      `json:"nodes"`
	NodeNames []string `json:"nodeNames"`
	Gadgets   int      `json:"gadgets"`
	// Totals sum the gadgets' message totals. ProgramCount is at least 1
	// (a gadget has programs; unowned programs make a row only when there
	// are some), so the JSON always carries programCount.
	state.Totals
}

// ImageRows sums the gadgets of the nodes matching glob per image, sorted
// by image. With unowned, the unowned programs of every node are one more
// row with an empty image.
func (f *Fleet) ImageRows(glob string, unowned bool) []ImageRow {
	f.mu.Lock()
	defer f.mu.Unlock()
	var sums []rollupSum
	if glob == "" && !unowned && f.liveRollups() {
		sums = f.liveRollup(byImage, true)
	} else {
		sums = f.rollup(&f.images, glob, unowned, true, func(id publish.GadgetIdentity) string { return id.Image })
	}
	rows := make([]ImageRow, len(sums))
	for i, r := range sums {
		rows[i] = ImageRow{GadgetImage: r.key, Nodes: r.nodes, NodeNames: r.names, Gadgets: r.gadgets, Totals: r.totals}
	}
	return rows
}

// imageSet names the rollup of image under one view (node glob and
// whether unowned programs are shown), so that two views never mix counts.
func imageSet(glob string, unowned bool, image string) string {
	return fmt.Sprintf("%s\x00%t\x00%s", glob, unowned, image)
}

// slots returns the node's gadgets and its unowned programs that have a
// shown interval.
func (n *node) slots() []*slot {
	out := make([]*slot, 0, len(n.gadgets)+1)
	for _, s := range n.gadgets {
		if s.shown != nil {
			out = append(out, s)
		}
	}
	if n.unowned != nil && n.unowned.shown != nil {
		out = append(out, n.unowned)
	}
	return out
}

// cpus is the node's online CPU count, from its latest _node or
// _summary; 0 when unknown (a tracker older than the field).
func (n *node) cpus() int {
	if n.info == nil {
		return 0
	}
	return n.info.CPUs
}
