package publish

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/bpfstats/tracker/internal/state"
)

// Column is one column of the bpfstats table.
type Column struct {
	// Name is the column's field name, as in the seed's --help list.
	Name string
	// Help is the meaning of the column.
	Help string
	// Default columns are shown without --fields.
	Default bool
	// Right aligns numbers.
	Right bool
	value func(r *state.Row) string
}

// Columns returns every column in table order: the fleet view's nodeName,
// the seed's columns, then the additions.
func Columns() []Column {
	return []Column{
		{Name: "nodeName", Help: "Name of the node the row comes from", value: func(r *state.Row) string { return r.NodeName }},
		{Name: "gadgetID", Help: "Unique ID assigned to each Gadget instance", Default: true, value: func(r *state.Row) string { return r.GadgetID }},
		{Name: "gadgetName", Help: "Name of the Gadget instance", Default: true, value: func(r *state.Row) string { return r.GadgetName }},
		{Name: "gadgetImage", Help: "Name of the Gadget image (like trace_open, trace_exec, etc.)", Default: true, value: func(r *state.Row) string { return r.GadgetImage }},
		{Name: "progID", Help: "eBPF program ID assigned by the Linux kernel", Default: true, Right: true, value: func(r *state.Row) string { return strconv.FormatUint(uint64(r.ProgID), 10) }},
		{Name: "progName", Help: "Name of the eBPF program", Default: true, value: func(r *state.Row) string { return r.ProgName }},
		{Name: "progType", Help: "Type of the eBPF program", value: func(r *state.Row) string { return r.ProgType }},
		{Name: "runtime", Help: "Time that the eBPF program or Gadget has run in nanoseconds", Default: true, Right: true, value: func(r *state.Row) string { return strconv.FormatUint(r.Runtime, 10) }},
		{Name: "runcount", Help: "Number of times the eBPF program or Gadget has run", Default: true, Right: true, value: func(r *state.Row) string { return strconv.FormatUint(r.Runcount, 10) }},
		{Name: "mapMemory", Help: "Memory used by maps in bytes", Default: true, Right: true, value: func(r *state.Row) string { return strconv.FormatUint(r.MapMemory, 10) }},
		{Name: "mapCount", Help: "Number of maps used by the eBPF program or Gadget", Default: true, Right: true, value: func(r *state.Row) string { return strconv.Itoa(r.MapCount) }},
		{Name: "pids", Help: "List of PIDs using the eBPF program", value: func(r *state.Row) string { return joinUints(r.PIDs) }},
		{Name: "comms", Help: "List of processes using the eBPF program", value: func(r *state.Row) string { return strings.Join(r.Comms, ",") }},
		{Name: "cpuPercent", Help: "Run time since the previous interval, in percent of one CPU", Right: true, value: func(r *state.Row) string { return strconv.FormatFloat(r.CPUPercent, 'f', 2, 64) }},
		{Name: "runtimeDelta", Help: "Run time in nanoseconds since the previous interval", Right: true, value: func(r *state.Row) string { return strconv.FormatUint(r.RuntimeDelta, 10) }},
		{Name: "runcountDelta", Help: "Runs since the previous interval", Right: true, value: func(r *state.Row) string { return strconv.FormatUint(r.RuncountDelta, 10) }},
		{Name: "tag", Help: "eBPF program tag (hash of its instructions)", value: func(r *state.Row) string { return r.Tag }},
		{Name: "nsPerRun", Help: "Average run time of one run in nanoseconds, since the program loaded (the Gadget started)", Right: true, value: func(r *state.Row) string { return strconv.FormatFloat(r.NsPerRun, 'f', 1, 64) }},
		{Name: "nsPerRunDelta", Help: "Average run time of one run in nanoseconds, since the previous interval", Right: true, value: func(r *state.Row) string { return strconv.FormatFloat(r.NsPerRunDelta, 'f', 1, 64) }},
		{Name: "runsPerSecond", Help: "Runs per second since the previous interval", Right: true, value: func(r *state.Row) string { return strconv.FormatFloat(r.RunsPerSecond, 'f', 1, 64) }},
		{Name: "cpuPercentNorm", Help: "Run time since the previous interval, in percent of all online CPUs (normalized: cpuPercent is per core, bpftop's CPU%, and can exceed 100)", Right: true, value: func(r *state.Row) string { return strconv.FormatFloat(r.CPUPercentNorm, 'f', 2, 64) }},
		{Name: "statsCostPercent", Help: "Estimated cost of the kernel's run-time stats accounting for the row since the previous interval, in percent of one CPU (runs x per-run cost measured at start)", Right: true, value: func(r *state.Row) string { return strconv.FormatFloat(r.StatsCostPercent, 'f', 3, 64) }},
		{Name: "cgroup", Help: "cgroup v2 path of the loader (of the owner for a gadget)", value: func(r *state.Row) string { return r.Cgroup }},
		{Name: "unit", Help: "systemd unit of the loader, from its cgroup (user@UID.service/UNIT inside a user manager)", value: func(r *state.Row) string { return r.Unit }},
		{Name: "slice", Help: "systemd slice holding the unit", value: func(r *state.Row) string { return r.Slice }},
		{Name: "containerID", Help: "Container ID of the loader, from its cgroup (containerd, CRI-O, Docker, Podman)", value: func(r *state.Row) string { return r.ContainerID }},
		{Name: "podUID", Help: "Kubernetes pod UID of the loader, from its cgroup", value: func(r *state.Row) string { return r.PodUID }},
		{Name: "podQoS", Help: "Kubernetes QoS class of the pod (Guaranteed, Burstable, BestEffort)", value: func(r *state.Row) string { return r.PodQoS }},
		{Name: "podName", Help: "Kubernetes pod name, from the container runtime (--cri-socket); empty without it", value: func(r *state.Row) string { return r.PodName }},
		{Name: "podNamespace", Help: "Kubernetes pod namespace, from the container runtime (--cri-socket)", value: func(r *state.Row) string { return r.PodNamespace }},
		{Name: "attach", Help: "Where the program is attached, one entry per BPF link: raw_tp:TP, tracing:fentry/FUNC (fexit, fmod_ret, lsm, tp_btf), cgroup:PATH:TYPE, xdp:DEV, tcx:DEV:ingress, netkit:DEV:primary, netns:INODE:TYPE, kprobe:FUNC+OFF, uprobe:PATH+0xOFF, tracepoint:NAME, iter:TARGET, netfilter:PF:HOOK:PRIO, sockmap:map=ID:TYPE; \"no link\" when no BPF link attaches it (not attached, or attached the legacy way: perf_event ioctl, tc/XDP netlink, socket filter, sockmap, prog array, struct_ops map)", value: func(r *state.Row) string { return strings.Join(r.Attach, ",") }},
	}
}

func joinUints(v []uint32) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatUint(uint64(x), 10)
	}
	return strings.Join(s, ",")
}

// SelectColumns returns the default columns plus the named extra ones, in
// table order. Names match case-insensitively.
func SelectColumns(extra []string) ([]Column, error) {
	all := Columns()
	want := make(map[string]bool)
	for _, name := range extra {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		i := slices.IndexFunc(all, func(c Column) bool { return strings.EqualFold(c.Name, name) })
		if i < 0 {
			return nil, fmt.Errorf("unknown field %q (see --help for the list)", name)
		}
		want[all[i].Name] = true
	}
	var cols []Column
	for _, c := range all {
		if c.Default || want[c.Name] {
			cols = append(cols, c)
		}
	}
	return cols, nil
}

// WriteTable writes rows as a table with upper-case headers, numbers
// aligned right as in the seed's output. Every cell goes through
// TableCell: names a program owner or a NATS publisher chose cannot put
// terminal escapes on the screen or widen the table past MaxCellRunes.
func WriteTable(w io.Writer, cols []Column, rows []*state.Row) error {
	cells := make([][]string, len(rows)+1)
	width := make([]int, len(cols))
	cells[0] = make([]string, len(cols))
	for j, c := range cols {
		cells[0][j] = strings.ToUpper(c.Name)
		width[j] = len(cells[0][j])
	}
	for i := range rows {
		cells[i+1] = make([]string, len(cols))
		for j, c := range cols {
			v := TableCell(c.value(rows[i]))
			cells[i+1][j] = v
			width[j] = max(width[j], utf8.RuneCountInString(v))
		}
	}
	var b strings.Builder
	for _, line := range cells {
		for j, v := range line {
			pad := strings.Repeat(" ", width[j]-utf8.RuneCountInString(v))
			switch {
			case cols[j].Right:
				b.WriteString(pad + v)
			case j == len(cols)-1:
				b.WriteString(v)
			default:
				b.WriteString(v + pad)
			}
			if j < len(cols)-1 {
				b.WriteString(" ")
			}
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ColumnHelp returns the column list as --help prints it: each name, then
// its meaning indented on the next line, like the seed.
func ColumnHelp() string {
	var b strings.Builder
	for _, c := range Columns() {
		fmt.Fprintf(&b, "  %s\n        %s", c.Name, c.Help)
		if !c.Default {
			b.WriteString(" (with --fields)")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// MaxCellRunes is the widest a table cell gets: longer values are cut to
// MaxCellRunes-1 runes and an ellipsis. JSON output keeps whole values.
const MaxCellRunes = 64

// TableCell makes v safe to print in a table cell: control characters,
// other non-printable runes (bidi overrides, zero-width marks) and invalid
// UTF-8 become visible escapes (\x1b, \u202e, \xff), a backslash becomes
// \\ so that an escape is never ambiguous, and the result is cut to
// MaxCellRunes runes, the last one "…".
func TableCell(v string) string {
	clean := true
	for _, r := range v {
		if r == utf8.RuneError || r == '\\' || !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean && utf8.RuneCountInString(v) <= MaxCellRunes {
		return v
	}
	var b strings.Builder
	// cut is b's length when it last held at most MaxCellRunes-1 runes:
	// where an over-long cell ends before its ellipsis.
	cut, runes := 0, 0
	for i := 0; i < len(v); {
		unit, size := cellUnit(v[i:])
		i += size
		runes += utf8.RuneCountInString(unit)
		if runes > MaxCellRunes {
			return b.String()[:cut] + "…"
		}
		b.WriteString(unit)
		if runes <= MaxCellRunes-1 {
			cut = b.Len()
		}
	}
	return b.String()
}

// cellUnit returns the first rune of v as TableCell prints it and the
// number of bytes it took.
func cellUnit(v string) (string, int) {
	r, size := utf8.DecodeRuneInString(v)
	switch {
	case r == utf8.RuneError && size <= 1:
		return fmt.Sprintf("\\x%02x", v[0]), 1
	case r == '\\':
		return "\\\\", size
	case unicode.IsPrint(r):
		return v[:size], size
	case r < 0x80:
		return fmt.Sprintf("\\x%02x", r), size
	case r <= 0xffff:
		return fmt.Sprintf("\\u%04x", r), size
	}
	return fmt.Sprintf("\\U%08x", r), size
}
