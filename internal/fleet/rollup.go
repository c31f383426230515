package fleet

import (
	"cmp"
	"slices"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// rollupSum is one row of a rollup: the gadgets sharing a key (an image,
// a gadget name) across the nodes.
type rollupSum struct {
	key string
	// set names the row's counters in the CounterSets.
	set     string
	nodes   int
	names   []string
	gadgets int
	totals  state.Totals
	// lastNode is the node added last: nodes come in order, so a node is
	// counted once without a set.
	lastNode string
}

// rollup sums the gadgets of the nodes matching glob per key, sorted by
// key; with unowned, the unowned programs of every node are one more row
// with an empty key. counters keep each row's cumulative counters from
// going down when gadgets or nodes go away; withNames lists the nodes of
// each row. The caller holds f.mu.
func (f *Fleet) rollup(counters *state.CounterSets, glob string, unowned, withNames bool, key func(publish.GadgetIdentity) string) []rollupSum {
	byKey := make(map[string]*rollupSum)
	counters.Begin()
	add := func(k, node, member string, t publish.MessageTotals, gadgets int) {
		r, ok := byKey[k]
		if !ok {
			r = &rollupSum{key: k, set: imageSet(glob, unowned, k)}
			if withNames {
				r.names = []string{}
			}
			byKey[k] = r
		}
		counters.Observe(r.set, node+"\x00"+member, state.Totals(t))
		if r.nodes == 0 || r.lastNode != node {
			r.nodes++
			r.lastNode = node
			if withNames {
				r.names = append(r.names, node)
			}
		}
		r.gadgets += gadgets
		// Gadgets of one key on one node may share maps; they are summed
		// as before, each gadget's own maps counted once.
		r.totals.Add(state.Totals(t))
	}
	for _, name := range f.matching(glob) {
		f.nodes[name].gadgetTotals(func(id publish.GadgetIdentity, t publish.MessageTotals, gadget bool) {
			switch {
			case gadget:
				add(key(id), name, id.ID, t, 1)
			case unowned:
				add("", name, "", t, 0)
			}
		})
	}
	counters.End()
	return sortedRollup(byKey, func(r *rollupSum) state.Totals { return counters.Retired(r.set) })
}

// sortedRollup returns the rows of byKey in key order, each with the
// cumulative counters gone gives for it added: gadgets (or nodes) of the
// key that went away keep counting, so that a rollup's cumulative
// counters never go down.
func sortedRollup(byKey map[string]*rollupSum, gone func(*rollupSum) state.Totals) []rollupSum {
	rows := make([]rollupSum, 0, len(byKey))
	for _, r := range byKey {
		g := gone(r)
		r.totals.Runtime += g.Runtime
		r.totals.Runcount += g.Runcount
		r.totals.RecursionMisses += g.RecursionMisses
		rows = append(rows, *r)
	}
	slices.SortFunc(rows, func(a, b rollupSum) int { return cmp.Compare(a.key, b.key) })
	return rows
}
