package tui

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// styles are the view's lipgloss styles, from one renderer.
type styles struct {
	title, columns, selected, paused, dim lipgloss.Style
}

func newStyles(r *lipgloss.Renderer) styles {
	if r == nil {
		r = lipgloss.DefaultRenderer()
	}
	return styles{
		title:    r.NewStyle().Bold(true),
		columns:  r.NewStyle().Reverse(true),
		selected: r.NewStyle().Reverse(true).Bold(true),
		paused:   r.NewStyle().Bold(true).Foreground(lipgloss.Color("3")),
		dim:      r.NewStyle().Faint(true),
	}
}

// screenLayout is how the screen's height is shared: header and footer
// take headerLines+1, the chart of the selected row chart lines (its
// title included), the table the rest.
type screenLayout struct {
	rows, chart int
}

const headerLines = 2

func (m *Model) layout() screenLayout {
	chart := 0
	switch {
	case m.height >= 30:
		chart = 9
	case m.height >= 16:
		chart = 5
	}
	fixed := headerLines + 1 + 1 // header, column titles, footer
	if m.screen == screenDetail {
		fixed += detailLines + 1
	}
	return screenLayout{rows: max(m.height-fixed-chart, 1), chart: chart}
}

// View draws the screen: exactly height lines, none wider than width.
func (m *Model) View() string {
	lines := m.header()
	switch {
	case m.help:
		lines = append(lines, strings.Split(helpText, "\n")...)
	case m.frame == nil:
		lines = append(lines, "waiting for the first interval…")
	case m.screen == screenDetail:
		lines = append(lines, m.detailView()...)
	default:
		lines = append(lines, m.tableView()...)
	}
	body := m.height - 1
	for len(lines) < body {
		lines = append(lines, "")
	}
	lines = append(lines[:body], m.footer())
	for i, l := range lines {
		lines[i] = fit(l, m.width)
	}
	return strings.Join(lines, "\n")
}

// header is the node(s), source, time and counts, then what CPU% means,
// the sort and the filter.
func (m *Model) header() []string {
	if m.frame == nil {
		return []string{m.styles.title.Render("bpfstats top"), ""}
	}
	f := m.frame
	first := fmt.Sprintf("bpfstats top  %s  %s  %s every %v  gadgets %d  programs %d",
		nodesCell(f.Nodes), publish.TableCell(f.Source), f.Time.Format("15:04:05"), f.Interval,
		len(f.Gadgets), len(f.Programs))
	if m.paused {
		first = m.styles.paused.Render(fmt.Sprintf("PAUSED (+%d)", m.skipped)) + "  " + first
	}
	cpus := "all CPUs"
	if f.CPUs > 0 {
		cpus = "all " + strconv.Itoa(f.CPUs) + " CPUs"
	}
	order := "↑"
	if m.descending {
		order = "↓"
	}
	second := fmt.Sprintf("CPU%% = %% of one core, CPU%%N = %% of %s  sort %s%s", cpus, m.sortCol, order)
	if m.filter != "" || m.editing {
		second += "  filter /" + m.filter
	}
	if f.Status != "" {
		second += "  " + publish.TableCell(f.Status)
	}
	return []string{m.styles.title.Render(first), second}
}

func nodesCell(nodes []string) string {
	switch len(nodes) {
	case 0:
		return "no nodes"
	case 1:
		return "node " + publish.TableCell(nodes[0])
	}
	return fmt.Sprintf("%d nodes %s…", len(nodes), publish.TableCell(nodes[0]))
}

func (m *Model) footer() string {
	if m.editing {
		return "filter: " + m.filter + "█   enter keep  esc clear"
	}
	keys := "q quit  ? help  / filter  s sort  a "
	if m.programs {
		keys += "gadgets"
	} else {
		keys += "programs"
	}
	if m.screen == screenDetail {
		return "esc back  " + keys + "  p pause"
	}
	return keys + "  enter drill  p pause"
}

// tableView is the column titles, the rows around the selected one, and
// the selected row's chart.
func (m *Model) tableView() []string {
	rows := m.tableRows()
	l := m.layout()
	lines := m.table(rows, m.columns(), m.programs, m.selected, m.offset, l.rows)
	if l.chart > 0 {
		for i := range rows {
			if rowKey(&rows[i], m.programs) == m.selected {
				lines = append(lines, m.chartView(&rows[i], rowKey(&rows[i], m.programs), l.chart)...)
			}
		}
	}
	return lines
}

// table draws the column titles and n rows from offset; rows are keyed
// as programs or gadgets.
func (m *Model) table(rows []state.Row, all []column, programs bool, selected string, offset, n int) []string {
	cols, widths := fitColumns(all, m.width)
	cells := make([]string, len(cols))
	for i, c := range cols {
		title := c.title
		if title == m.sortCol {
			title += map[bool]string{true: "↓", false: "↑"}[m.descending]
		}
		cells[i] = pad(title, widths[i], c.right)
	}
	lines := []string{m.styles.columns.Render(pad(strings.Join(cells, " "), m.width, false))}
	// The sparklines share one scale, the highest CPU% shown, so that rows
	// compare: a steady 0.05% is a low line, not a full one.
	end := min(len(rows), offset+n)
	history := make([][]float64, end-offset)
	top := 0.0
	for i := offset; i < end; i++ {
		history[i-offset] = cpuValues(m.history.Samples(rowKey(&rows[i], programs), m.shownTick))
		top = max(top, maxOf(history[i-offset]))
	}
	for i := offset; i < end; i++ {
		key := rowKey(&rows[i], programs)
		for j, c := range cols {
			if c.cell == nil {
				cells[j] = sparkline(history[i-offset], widths[j], top)
				continue
			}
			cells[j] = pad(c.cell(&rows[i]), widths[j], c.right)
		}
		line := strings.Join(cells, " ")
		if key == selected {
			line = m.styles.selected.Render(pad(line, m.width, false))
		}
		lines = append(lines, line)
	}
	for len(lines) < n+1 {
		lines = append(lines, "")
	}
	return lines
}

// chartView is the title and the CPU% and runs/s charts of one row, side
// by side, height lines in all.
func (m *Model) chartView(r *state.Row, key string, height int) []string {
	samples := m.history.Samples(key, m.shownTick)
	cpu, runs := cpuValues(samples), runValues(samples)
	name := gadgetName(r)
	if r.ProgID != 0 {
		name = fmt.Sprintf("%s (%d)", r.ProgName, r.ProgID)
	}
	half := (m.width - 3) / 2
	title := fmt.Sprintf("%s  last %d of %d intervals", publish.TableCell(name), len(samples), m.history.Size())
	left := pad(fmt.Sprintf("CPU%% max %s", percent(maxOf(cpu))), half, false)
	lines := []string{m.styles.title.Render(title), left + " │ " + fmt.Sprintf("runs/s max %s", rate(maxOf(runs)))}
	cpuChart, runChart := chart(cpu, half, height-2), chart(runs, half, height-2)
	for i := range cpuChart {
		lines = append(lines, cpuChart[i]+" │ "+runChart[i])
	}
	return lines
}

// fit cuts s to width cells (styles kept).
func fit(s string, width int) string {
	if ansi.StringWidth(s) <= width {
		return s
	}
	return ansi.Truncate(s, width, "…")
}

// pad fits s to exactly width cells, aligned right or left.
func pad(s string, width int, right bool) string {
	s = fit(s, width)
	gap := strings.Repeat(" ", max(width-ansi.StringWidth(s), 0))
	if right {
		return gap + s
	}
	return s + gap
}
