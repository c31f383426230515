package fleet

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// The rollups of Options.By besides "image": where the gadgets run.
const (
	ByUnit      = "unit"
	ByContainer = "container"
	ByPod       = "pod"
)

// ValidBy tells whether by is a rollup Options.By takes: "" (none),
// "image", ByUnit, ByContainer or ByPod.
func ValidBy(by string) bool {
	switch by {
	case "", "image", ByUnit, ByContainer, ByPod:
		return true
	}
	return false
}

// isPlacementBy tells whether by rolls up by placement (GroupRows).
func isPlacementBy(by string) bool {
	return by == ByUnit || by == ByContainer || by == ByPod
}

// GroupRow is the rollup of the gadgets of one systemd unit, container or
// pod across the fleet.
type GroupRow struct {
	// By is what the rows group by: ByUnit, ByContainer or ByPod.
	By string `json:"by"`
	// Key is the unit ("foo.service"), the container ID, or the pod as
	// "namespace/name" (its UID when the node has no CRI socket to name
	// it); "" for the gadgets that have none.
	Key string `json:"key"`
	// Unowned marks the row of the programs without a gadget (with All).
	Unowned bool `json:"unowned,omitempty"`
	// Nodes counts the nodes of the group's gadgets; NodeNames lists them.
	Nodes     int      `json:"nodes"`
	NodeNames []string `json:"nodeNames"`
	Gadgets   int      `json:"gadgets"`
	// Totals sum the gadgets' message totals; the cumulative counters
	// never go down (state.CounterSets), as with the image rollup.
	state.Totals
}

// groupKey names one GroupRow.
type groupKey struct {
	key     string
	unowned bool
}

// GroupRows sums the gadgets of the nodes matching glob per unit,
// container or pod (by), sorted by key. A gadget is where its programs'
// loaders ran: the placement of its lowest program ID that has one. With
// unowned, the unowned programs of every node are one more row.
func (f *Fleet) GroupRows(by, glob string, unowned bool) ([]GroupRow, error) {
	if !isPlacementBy(by) {
		return nil, fmt.Errorf("invalid rollup %q: want %q, %q or %q", by, ByUnit, ByContainer, ByPod)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	counters := f.groupCounters(by)
	set := func(k groupKey) string { return fmt.Sprintf("%s\x00%t\x00%t\x00%s", glob, unowned, k.unowned, k.key) }
	rows := make(map[groupKey]*GroupRow)
	counters.Begin()
	add := func(k groupKey, node, member string, t publish.MessageTotals, gadgets int) {
		counters.Observe(set(k), node+"\x00"+member, state.Totals(t))
		r, ok := rows[k]
		if !ok {
			r = &GroupRow{By: by, Key: k.key, Unowned: k.unowned, NodeNames: []string{}}
			rows[k] = r
		}
		if !slices.Contains(r.NodeNames, node) {
			r.NodeNames = append(r.NodeNames, node)
		}
		r.Gadgets += gadgets
		r.Add(state.Totals(t))
	}
	for _, name := range f.matching(glob) {
		n := f.nodes[name]
		for _, s := range n.gadgets {
			if g := s.shown; g != nil {
				add(groupKey{key: placementKey(by, g)}, name, g.identity.ID, g.totals, 1)
			}
		}
		if u := n.unowned; unowned && u != nil && u.shown != nil && u.shown.rows > 0 {
			add(groupKey{unowned: true}, name, "", u.shown.totals, 0)
		}
	}
	counters.End()
	out := make([]GroupRow, 0, len(rows))
	for k, r := range rows {
		// Gadgets (or nodes) of the group that went away keep counting.
		gone := counters.Retired(set(k))
		r.Runtime += gone.Runtime
		r.Runcount += gone.Runcount
		r.RecursionMisses += gone.RecursionMisses
		slices.Sort(r.NodeNames)
		r.Nodes = len(r.NodeNames)
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b GroupRow) int {
		return cmp.Or(cmpBool(a.Unowned, b.Unowned), cmp.Compare(a.Key, b.Key))
	})
	return out, nil
}

// groupCounters returns the counters of the rollup by, one CounterSets
// per rollup so that two rollups never retire each other's members. The
// caller holds f.mu.
func (f *Fleet) groupCounters(by string) *state.CounterSets {
	if f.groups == nil {
		f.groups = make(map[string]*state.CounterSets)
	}
	c, ok := f.groups[by]
	if !ok {
		c = &state.CounterSets{}
		f.groups[by] = c
	}
	return c
}

// placementKey is the key of gadget g in the rollup by: from the program
// row of lowest ID whose placement has one.
func placementKey(by string, g *programSet) string {
	var key string
	var lowest uint32
	for _, part := range g.parts {
		for i := range part {
			k := rowKey(by, &part[i].Placement)
			if k != "" && (key == "" || part[i].ProgID < lowest) {
				key, lowest = k, part[i].ProgID
			}
		}
	}
	return key
}

// rowKey is a placement's key in the rollup by.
func rowKey(by string, p *state.Placement) string {
	switch by {
	case ByUnit:
		return p.Unit
	case ByContainer:
		return p.ContainerID
	case ByPod:
		if p.PodNamespace != "" && p.PodName != "" {
			return p.PodNamespace + "/" + p.PodName
		}
		return p.PodUID
	}
	return ""
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// renderGroups writes the placement rollup of opts.By: a JSON Print, or
// the "#" line and its table.
func (f *Fleet) renderGroups(w io.Writer, opts Options, now time.Time, stats Stats, consumer Consumer) error {
	rows, err := f.GroupRows(opts.By, opts.NodeGlob, opts.All)
	if err != nil {
		return err
	}
	if opts.JSON {
		return writePrint(w, Print[GroupRow]{Time: now, Fleet: stats, Consumer: consumer, Rows: rows})
	}
	writeStatsLine(w, now, stats, consumer)
	return writeGroupTable(w, opts.By, rows)
}

// groupHeaders are the first column's header of each rollup.
var groupHeaders = map[string]string{ByUnit: "UNIT", ByContainer: "CONTAINERID", ByPod: "POD"}

// writeGroupTable writes a placement rollup aligned like the image table.
// Container IDs are cut to 12 digits, as runtimes show them.
func writeGroupTable(w io.Writer, by string, rows []GroupRow) error {
	cells := [][]string{{groupHeaders[by], "NODES", "GADGETS", "PROGRAMS", "RUNTIME", "RUNCOUNT", "MAPMEMORY", "MAPCOUNT", "CPUPERCENT"}}
	for _, r := range rows {
		key := publish.TableCell(r.Key)
		switch {
		case r.Unowned:
			key = "(unowned)"
		case key == "":
			key = "(none)"
		case by == ByContainer && len(key) > 12:
			key = key[:12]
		}
		cells = append(cells, []string{
			key, strconv.Itoa(r.Nodes), strconv.Itoa(r.Gadgets), strconv.Itoa(r.ProgramCount),
			strconv.FormatUint(r.Runtime, 10), strconv.FormatUint(r.Runcount, 10),
			strconv.FormatUint(r.MapMemory, 10), strconv.Itoa(r.MapCount),
			strconv.FormatFloat(r.CPUPercent, 'f', 2, 64),
		})
	}
	return writeAligned(w, cells)
}

// writeAligned writes cells as columns: the first left-aligned, the
// others right-aligned, and a blank line after.
func writeAligned(w io.Writer, cells [][]string) error {
	width := make([]int, len(cells[0]))
	for _, line := range cells {
		for j, v := range line {
			width[j] = max(width[j], utf8.RuneCountInString(v))
		}
	}
	var b strings.Builder
	for _, line := range cells {
		for j, v := range line {
			pad := strings.Repeat(" ", width[j]-utf8.RuneCountInString(v))
			if j == 0 {
				b.WriteString(v + pad)
			} else {
				b.WriteString(" " + pad + v)
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}
