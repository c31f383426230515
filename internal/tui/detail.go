package tui

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// detailLines is the height of a drill-down's facts, above its programs.
const detailLines = 5

// detailView is the drill-down: the subject's identity, loader,
// placement, cost and maps, then its programs and the selected one's
// chart.
func (m *Model) detailView() []string {
	subject, ok := m.detailSubject()
	if !ok {
		return []string{"gone: the row left in a later interval (esc goes back)"}
	}
	lines := m.facts(&subject)
	rows := m.detailRows(&subject)
	lines = append(lines, m.styles.title.Render(fmt.Sprintf("PROGRAMS %d", len(rows))))
	l := m.layout()
	lines = append(lines, m.table(rows, programColumns(m.opts.Fleet), true, m.detailSelected, m.detailOffset, l.rows)...)
	if l.chart > 0 {
		for i := range rows {
			if programKey(&rows[i]) == m.detailSelected {
				lines = append(lines, m.chartView(&rows[i], programKey(&rows[i]), l.chart)...)
			}
		}
	}
	return lines
}

// facts are the detailLines lines about r.
func (m *Model) facts(r *state.Row) []string {
	var id string
	if r.ProgID != 0 {
		id = fmt.Sprintf("PROGRAM   %d %s  type %s  tag %s  gadget %s",
			r.ProgID, cell(r.ProgName), cell(r.ProgType), cell(r.Tag), cell(gadgetName(r)))
	} else {
		id = fmt.Sprintf("GADGET    %s  id %s  image %s", cell(gadgetName(r)), cell(r.GadgetID), cell(r.GadgetImage))
	}
	if r.NodeName != "" {
		id += "  node " + cell(r.NodeName)
	}
	loader := "LOADER    -"
	if r.Loader != nil && r.Loader.PID != 0 {
		loader = fmt.Sprintf("LOADER    pid %d  comm %s  exe %s", r.Loader.PID, cell(r.Loader.Comm), cell(r.Loader.Exe))
	}
	if len(r.Comms) > 0 {
		loader += "  held by " + cell(strings.Join(r.Comms, ","))
	}
	cost := fmt.Sprintf("COST      CPU%% %s  CPU%%N %s  runs/s %s  ns/run %s (avg %s)  stats %s%%",
		percent(r.CPUPercent), percent(r.CPUPercentNorm), rate(r.RunsPerSecond),
		rate(r.NsPerRunDelta), rate(r.NsPerRun), percent(r.StatsCostPercent))
	if r.RecursionMisses > 0 {
		cost += fmt.Sprintf("  recursion misses %d", r.RecursionMisses)
	}
	maps := fmt.Sprintf("MAPS      %d, %s:", r.MapCount, bytesCell(float64(r.MapMemory)))
	for _, id := range r.MapIDs {
		maps += " " + strconv.FormatUint(uint64(id), 10)
	}
	return []string{id, loader, placementLine(&r.Placement), cost, maps}
}

// placementLine is where the row's loader (a gadget's owner) runs.
func placementLine(p *state.Placement) string {
	var parts []string
	add := func(name, v string) {
		if v != "" {
			parts = append(parts, name+" "+cell(v))
		}
	}
	add("unit", p.Unit)
	add("slice", p.Slice)
	add("container", p.ContainerID)
	add("pod", p.PodUID)
	add("qos", p.PodQoS)
	add("cgroup", p.Cgroup)
	if len(parts) == 0 {
		return "PLACEMENT -"
	}
	return "PLACEMENT " + strings.Join(parts, "  ")
}

func cell(v string) string {
	if v == "" {
		return "-"
	}
	return publish.TableCell(v)
}
