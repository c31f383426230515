package tui

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// column is one column of the row table.
type column struct {
	title string
	// width is the column's width; the flex column takes what is left,
	// at least width.
	width int
	flex  bool
	right bool
	// prio orders the columns to drop when the screen is narrow: the
	// highest goes first, 0 never.
	prio int
	// key is the sort hotkey, 0 for none.
	key rune
	// cell is the column's text for a row; nil for the sparkline column,
	// which the view draws from the history.
	cell func(r *state.Row) string
	// compare orders two rows ascending; nil when the column does not sort.
	compare func(a, b *state.Row) int
	// descending is the column's first sort order (numbers: largest first).
	descending bool
}

// historyTitle is the title of the sparkline column.
const historyTitle = "CPU% HISTORY"

func numeric(title string, width, prio int, key rune, v func(r *state.Row) float64, format func(float64) string) column {
	return column{
		title: title, width: width, right: true, prio: prio, key: key, descending: true,
		cell:    func(r *state.Row) string { return format(v(r)) },
		compare: func(a, b *state.Row) int { return cmp.Compare(v(a), v(b)) },
	}
}

func text(title string, width, prio int, key rune, flex bool, v func(r *state.Row) string) column {
	return column{
		title: title, width: width, prio: prio, key: key, flex: flex,
		cell:    func(r *state.Row) string { return publish.TableCell(v(r)) },
		compare: func(a, b *state.Row) int { return cmp.Compare(v(a), v(b)) },
	}
}

// costColumns are the numeric columns of both views.
func costColumns() []column {
	return []column{
		numeric("CPU%", 6, 0, 'c', func(r *state.Row) float64 { return r.CPUPercent }, percent),
		numeric("CPU%N", 6, 4, 0, func(r *state.Row) float64 { return r.CPUPercentNorm }, percent),
		numeric("RUNS/S", 8, 1, 'x', func(r *state.Row) float64 { return r.RunsPerSecond }, rate),
		numeric("NS/RUN", 7, 2, 'e', func(r *state.Row) float64 { return r.NsPerRunDelta }, rate),
		numeric("AVG NS", 7, 7, 0, func(r *state.Row) float64 { return r.NsPerRun }, rate),
		numeric("STATS%", 6, 8, 0, func(r *state.Row) float64 { return r.StatsCostPercent }, percent),
		numeric("MAPMEM", 7, 3, 'm', func(r *state.Row) float64 { return float64(r.MapMemory) }, bytesCell),
	}
}

// gadgetColumns are the columns of the gadget view.
func gadgetColumns(fleet bool) []column {
	cols := []column{}
	if fleet {
		cols = append(cols, text("NODE", 12, 5, 'o', false, func(r *state.Row) string { return r.NodeName }))
	}
	cols = append(cols, text("GADGET", 12, 0, 'n', true, gadgetName))
	cols = append(cols, numeric("PROGS", 5, 6, 0, func(r *state.Row) float64 { return float64(r.ProgramCount) }, count))
	cols = append(cols, costColumns()...)
	cols = append(cols, text("LOADER", 16, 9, 0, false, loaderCell))
	return append(cols, column{title: historyTitle, width: 16, prio: 1})
}

// programColumns are the columns of the program view and of a gadget's
// programs.
func programColumns(fleet bool) []column {
	cols := []column{}
	if fleet {
		cols = append(cols, text("NODE", 12, 5, 'o', false, func(r *state.Row) string { return r.NodeName }))
	}
	id := numeric("ID", 6, 0, 'i', func(r *state.Row) float64 { return float64(r.ProgID) }, count)
	id.descending = false
	cols = append(cols, id)
	cols = append(cols, text("PROGRAM", 12, 0, 'n', true, func(r *state.Row) string { return r.ProgName }))
	cols = append(cols, text("TYPE", 13, 6, 0, false, func(r *state.Row) string { return r.ProgType }))
	cols = append(cols, text("GADGET", 12, 5, 'g', false, gadgetName))
	cols = append(cols, costColumns()...)
	return append(cols, column{title: historyTitle, width: 16, prio: 1})
}

// unownedName is the gadget name shown for programs without a gadget.
const unownedName = "(unowned)"

func gadgetName(r *state.Row) string {
	if r.GadgetID == "" {
		return unownedName
	}
	return r.GadgetName
}

func loaderCell(r *state.Row) string {
	if r.Loader == nil || r.Loader.PID == 0 {
		return ""
	}
	return r.Loader.Comm + "/" + strconv.FormatUint(uint64(r.Loader.PID), 10)
}

func percent(v float64) string {
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func count(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }

// rate prints a rate or duration in at most 6 characters: 999.9, 12.3k,
// 4.56M, 7.89G.
func rate(v float64) string {
	switch {
	case v < 1000:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case v < 1e6:
		return strconv.FormatFloat(v/1e3, 'f', 1, 64) + "k"
	case v < 1e9:
		return strconv.FormatFloat(v/1e6, 'f', 2, 64) + "M"
	}
	return strconv.FormatFloat(v/1e9, 'f', 2, 64) + "G"
}

// bytesCell prints a size in binary units: 512B, 4.0K, 1.2M.
func bytesCell(v float64) string {
	units := []string{"B", "K", "M", "G", "T"}
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0fB", v)
	}
	return fmt.Sprintf("%.1f%s", v, units[i])
}

// matches reports whether r holds filter (lower case) in any of its names.
func matches(r *state.Row, filter string) bool {
	if filter == "" {
		return true
	}
	fields := []string{r.NodeName, gadgetName(r), r.GadgetID, r.GadgetImage, r.ProgName, r.ProgType, loaderCell(r)}
	if r.ProgID != 0 {
		fields = append(fields, strconv.FormatUint(uint64(r.ProgID), 10))
	}
	fields = append(fields, r.Comms...)
	for _, f := range fields {
		if strings.Contains(strings.ToLower(f), filter) {
			return true
		}
	}
	return false
}

// fitColumns drops columns by priority until they fit width (a space
// between two), then widens the flex column; the widths returned are per
// kept column.
func fitColumns(cols []column, width int) ([]column, []int) {
	kept := append([]column(nil), cols...)
	for len(kept) > 1 && tableWidth(kept) > width {
		drop := -1
		for i, c := range kept {
			if c.prio > 0 && (drop < 0 || c.prio > kept[drop].prio) {
				drop = i
			}
		}
		if drop < 0 {
			break
		}
		kept = append(kept[:drop], kept[drop+1:]...)
	}
	widths := make([]int, len(kept))
	spare := max(width-tableWidth(kept), 0)
	for i, c := range kept {
		widths[i] = c.width
		if c.flex {
			widths[i] += min(spare, 40)
			spare -= min(spare, 40)
		}
	}
	// What the flex column does not take goes to the history.
	for i, c := range kept {
		if c.cell == nil {
			widths[i] += spare
		}
	}
	return kept, widths
}

func tableWidth(cols []column) int {
	w := len(cols) - 1
	for _, c := range cols {
		w += c.width
	}
	return w
}
