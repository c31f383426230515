package fleet

import (
	"cmp"
	"slices"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// The rollups of a fleet that takes only summaries (top's summary mode,
// the aggregator) are kept as the summaries arrive, not observed gadget
// by gadget at every print: each node keeps its gadgets' totals summed per
// image and per gadget name, and what a gadget counted before it went
// away, or before its counters went down, moves to the fleet's retired
// sums at once. A print then adds a few sums per node (BenchmarkPrintByImage:
// 10,000 nodes of 20 gadgets in milliseconds instead of a quarter second
// of holding the lock that every message waits for). The counters keep the
// rule of state.CounterSets: a key's cumulative counters never go down.

// rollupBy names what a rollup sums by.
type rollupBy uint8

const (
	byImage rollupBy = iota
	byName
	byUnowned
)

// retiredKey is one rollup row's retired sums.
type retiredKey struct {
	by  rollupBy
	key string
}

// cumulative are the counters of state.Totals that never go down.
type cumulative struct {
	runtime, runcount, recursionMisses uint64
}

func cumulativeOf(t publish.MessageTotals) cumulative {
	return cumulative{t.Runtime, t.Runcount, t.RecursionMisses}
}

// lost is what a member whose counters went from c to t stops counting:
// each counter's drop.
func (c cumulative) lost(t cumulative) cumulative {
	return cumulative{
		c.runtime - min(c.runtime, t.runtime),
		c.runcount - min(c.runcount, t.runcount),
		c.recursionMisses - min(c.recursionMisses, t.recursionMisses),
	}
}

func (c *cumulative) add(o cumulative) {
	c.runtime += o.runtime
	c.runcount += o.runcount
	c.recursionMisses += o.recursionMisses
}

func (c cumulative) zero() bool { return c == cumulative{} }

// liveMember is a gadget of a node's latest summary, as the rollups
// counted it.
type liveMember struct {
	id, image, name string
	last            cumulative
	// continued marks, during an update, a member the new summary has.
	continued bool
}

// keySum is a node's gadgets of one key summed.
type keySum struct {
	key     string
	gadgets int
	totals  state.Totals
}

// nodeRollup is a node's part of the live rollups. It outlives a restart
// of the node's tracker (whose counters go on), not the node's expiry.
type nodeRollup struct {
	members       []liveMember
	images, names []keySum
	unowned       state.Totals
	hasUnowned    bool
	lastUnowned   cumulative
}

// liveRollups tells whether the fleet keeps its rollups live: it takes
// only summaries.
func (f *Fleet) liveRollups() bool { return f.kinds.summaries && !f.kinds.detail }

// retire adds c to the retired sums of key. Beyond MaxRetiredKeys keys a
// new key's are forgotten, as state.CounterSets forgets idle sets. The
// caller holds f.mu.
func (f *Fleet) retire(by rollupBy, key string, c cumulative) {
	if c.zero() {
		return
	}
	k := retiredKey{by, key}
	r, ok := f.retired[k]
	if !ok && len(f.retired) >= MaxRetiredKeys {
		return
	}
	r.add(c)
	f.retired[k] = r
}

// MaxRetiredKeys bounds the rollup rows whose gone gadgets' counts a
// fleet keeps (as state.MaxIdleCounterSets does for the other rollups).
const MaxRetiredKeys = state.MaxIdleCounterSets

// updateRollup takes the gadgets and unowned totals of a node's new
// summary into its live rollup: members gone or whose counters went down
// retire what they had counted. The caller holds f.mu.
func (f *Fleet) updateRollup(n *node, gadgets []publish.GadgetSummary, unowned publish.MessageTotals) {
	r := n.roll
	if r == nil {
		r = new(nodeRollup)
		n.roll = r
	}
	old := r.members
	next := make([]liveMember, len(gadgets))
	r.images, r.names = r.images[:0], r.names[:0]
	for i, g := range gadgets {
		m := liveMember{id: g.Gadget.ID, image: g.Gadget.Image, name: g.Gadget.Name, last: cumulativeOf(g.Totals)}
		if j := findMember(old, i, m.id); j >= 0 {
			// A gadget that stays under a key keeps its count there
			// (less any drop); one that moved to another key leaves its
			// whole count under the old one.
			o := old[j]
			f.retire(byImage, o.image, o.last.lost(keptIf(o.image == m.image, m.last)))
			f.retire(byName, o.name, o.last.lost(keptIf(o.name == m.name, m.last)))
			old[j].continued = true
		}
		next[i] = m
		r.images = addKeySum(r.images, m.image, g.Totals)
		r.names = addKeySum(r.names, m.name, g.Totals)
	}
	for _, m := range old {
		if !m.continued {
			f.retire(byImage, m.image, m.last)
			f.retire(byName, m.name, m.last)
		}
	}
	r.members = next
	u := cumulativeOf(unowned)
	f.retire(byUnowned, "", r.lastUnowned.lost(u))
	r.lastUnowned = u
	r.unowned, r.hasUnowned = state.Totals(unowned), unowned.ProgramCount > 0
}

// findMember returns the index in old of the gadget id, trying index i
// first: summaries list gadgets in a stable order. It returns -1 for a
// new gadget.
func findMember(old []liveMember, i int, id string) int {
	if i < len(old) && old[i].id == id && !old[i].continued {
		return i
	}
	for j, o := range old {
		if o.id == id && !o.continued {
			return j
		}
	}
	return -1
}

// keptIf is c when the member stays under its key, else nothing.
func keptIf(stays bool, c cumulative) cumulative {
	if stays {
		return c
	}
	return cumulative{}
}

// addKeySum adds a gadget's totals to the sum of its key in sums, kept
// sorted by key: a few comparisons per gadget, not one per key.
func addKeySum(sums []keySum, key string, t publish.MessageTotals) []keySum {
	i, found := slices.BinarySearchFunc(sums, key, func(s keySum, k string) int { return cmp.Compare(s.key, k) })
	if found {
		sums[i].gadgets++
		sums[i].totals.Add(state.Totals(t))
		return sums
	}
	return slices.Insert(sums, i, keySum{key: key, gadgets: 1, totals: state.Totals(t)})
}

// dropRollup retires everything a node that left the fleet had counted.
// The caller holds f.mu.
func (f *Fleet) dropRollup(n *node) {
	r := n.roll
	if r == nil {
		return
	}
	for _, m := range r.members {
		f.retire(byImage, m.image, m.last)
		f.retire(byName, m.name, m.last)
	}
	f.retire(byUnowned, "", r.lastUnowned)
	n.roll = nil
}

// liveRollup sums the live rollups of every node by image or by gadget
// name (by), sorted by key, or with byUnowned their unowned totals in one
// row; each row's cumulative counters include the retired ones of its
// key. withNames lists each row's nodes. The caller holds f.mu.
func (f *Fleet) liveRollup(by rollupBy, withNames bool) []rollupSum {
	byKey := make(map[string]*rollupSum)
	for _, name := range f.matching("") {
		r := f.nodes[name].roll
		if r == nil {
			continue
		}
		sums := r.images
		switch by {
		case byName:
			sums = r.names
		case byUnowned:
			sums = nil
			if r.hasUnowned {
				one := [1]keySum{{totals: r.unowned}}
				sums = one[:]
			}
		}
		for _, s := range sums {
			row, ok := byKey[s.key]
			if !ok {
				row = &rollupSum{key: s.key}
				if withNames {
					row.names = []string{}
				}
				byKey[s.key] = row
			}
			// Each node is listed once per key: its sums are.
			row.nodes++
			if withNames {
				row.names = append(row.names, name)
			}
			row.gadgets += s.gadgets
			row.totals.Add(s.totals)
		}
	}
	return sortedRollup(byKey, func(r *rollupSum) state.Totals {
		c := f.retired[retiredKey{by, r.key}]
		return state.Totals{Runtime: c.runtime, Runcount: c.runcount, RecursionMisses: c.recursionMisses}
	})
}
