package fleet

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// GadgetRows returns one row per gadget of the nodes matching glob, sorted
// by node, gadget name and ID.
func (f *Fleet) GadgetRows(glob string) []state.Row {
	f.mu.Lock()
	defer f.mu.Unlock()
	rows := []state.Row{}
	for _, name := range f.matching(glob) {
		n := f.nodes[name]
		start := len(rows)
		for _, s := range n.gadgets {
			if s.shown != nil {
				rows = append(rows, gadgetRow(name, s.shown))
			}
		}
		slices.SortFunc(rows[start:], func(a, b state.Row) int {
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
func (f *Fleet) ProgramRows(glob string) []state.Row {
	f.mu.Lock()
	defer f.mu.Unlock()
	rows := []state.Row{}
	for _, name := range f.matching(glob) {
		n := f.nodes[name]
		start := len(rows)
		for _, s := range n.slots() {
			for _, part := range s.shown.parts {
				for _, p := range part {
					p.NodeName = name
					rows = append(rows, p)
				}
			}
		}
		slices.SortFunc(rows[start:], func(a, b state.Row) int { return cmp.Compare(a.ProgID, b.ProgID) })
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
	byImage := make(map[string]*ImageRow)
	f.images.Begin()
	add := func(image, node, member string, t publish.MessageTotals, gadgets int) {
		f.images.Observe(imageSet(glob, unowned, image), node+"\x00"+member, state.Totals(t))
		r, ok := byImage[image]
		if !ok {
			r = &ImageRow{GadgetImage: image, NodeNames: []string{}}
			byImage[image] = r
		}
		if !slices.Contains(r.NodeNames, node) {
			r.NodeNames = append(r.NodeNames, node)
		}
		r.Gadgets += gadgets
		// Gadgets of one image on one node may share maps; they are
		// summed as before, each gadget's own maps counted once.
		r.Add(state.Totals(t))
	}
	for _, name := range f.matching(glob) {
		n := f.nodes[name]
		for _, s := range n.gadgets {
			if g := s.shown; g != nil {
				add(g.identity.Image, name, g.identity.ID, g.totals, 1)
			}
		}
		if u := n.unowned; unowned && u != nil && u.shown != nil && u.shown.rows > 0 {
			add("", name, "", u.shown.totals, 0)
		}
	}
	f.images.End()
	rows := make([]ImageRow, 0, len(byImage))
	for _, r := range byImage {
		// Gadgets (or nodes) of the image that went away keep counting:
		// the rollup's cumulative counters never go down.
		gone := f.images.Retired(imageSet(glob, unowned, r.GadgetImage))
		r.Runtime += gone.Runtime
		r.Runcount += gone.Runcount
		r.RecursionMisses += gone.RecursionMisses
		slices.Sort(r.NodeNames)
		r.Nodes = len(r.NodeNames)
		rows = append(rows, *r)
	}
	slices.SortFunc(rows, func(a, b ImageRow) int { return cmp.Compare(a.GadgetImage, b.GadgetImage) })
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
