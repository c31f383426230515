package tui

import (
	"io"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/exp/golden"
	"github.com/charmbracelet/x/exp/teatest"
	"github.com/muesli/termenv"

	"github.com/bpfstats/tracker/internal/state"
)

// intervals is how many frames the tests send: enough for sparklines.
const intervals = 40

// gadget and program build the rows of the fixed snapshot.
func gadget(id, name, image string, progs int, cpu, runs float64, mem uint64, loader state.ProcessRef, maps ...uint32) state.Row {
	return state.Row{
		NodeName: "node-a", GadgetID: id, GadgetName: name, GadgetImage: image,
		Totals: state.Totals{
			Runtime: uint64(cpu * 1e7), Runcount: uint64(runs * 10), RuntimeDelta: uint64(cpu * 1e7),
			RuncountDelta: uint64(runs), CPUPercent: cpu, MapMemory: mem, MapCount: len(maps), ProgramCount: progs,
		},
		Cost: state.Cost{
			NsPerRun: cpu * 1e6 / max(runs, 1), NsPerRunDelta: cpu * 1e7 / max(runs, 1),
			RunsPerSecond: runs, CPUPercentNorm: cpu / 4, StatsCostPercent: runs * 20 / 1e7,
		},
		Loader: &loader, PIDs: []uint32{loader.PID}, Comms: []string{loader.Comm}, MapIDs: maps,
		Placement: state.Placement{Cgroup: "/system.slice/" + name + ".service", Unit: name + ".service", Slice: "system.slice"},
	}
}

func program(g *state.Row, id uint32, name, typ string, cpu, runs float64, maps ...uint32) state.Row {
	r := state.Row{
		NodeName: "node-a", ProgID: id, ProgName: name, ProgType: typ, Tag: "0123456789abcdef",
		Totals: state.Totals{CPUPercent: cpu, Runcount: uint64(runs * 10), RuncountDelta: uint64(runs), MapCount: len(maps), MapMemory: 4096 * uint64(len(maps))},
		Cost:   state.Cost{RunsPerSecond: runs, CPUPercentNorm: cpu / 4, NsPerRunDelta: cpu * 1e7 / max(runs, 1), NsPerRun: 100},
		MapIDs: maps,
	}
	if g != nil {
		r.GadgetID, r.GadgetName, r.GadgetImage = g.GadgetID, g.GadgetName, g.GadgetImage
		r.Loader, r.PIDs, r.Comms, r.Placement = g.Loader, g.PIDs, g.Comms, g.Placement
	}
	return r
}

// testFrame is interval i of a fixed node: three gadgets whose load
// varies with i, and unowned programs.
func testFrame(i int) Frame {
	wave := float64(i % 8)
	snoop := gadget("a1b2c3d4e5f", "execsnoop", "ghcr.io/ig/execsnoop:v1", 2, 2.5+wave/4, 1200+100*wave, 3<<20,
		state.ProcessRef{PID: 4242, Comm: "ig", Exe: "/usr/bin/ig"}, 11, 12, 13)
	tcp := gadget("f00dfeedbee", "tcptop", "ghcr.io/ig/tcptop:v1", 1, 0.75, 90000, 64<<10,
		state.ProcessRef{PID: 777, Comm: "tcptop", Exe: "/usr/local/bin/tcptop"}, 21)
	idle := gadget("0000000idle", "idlewatch", "idlewatch:dev", 1, 0, 0, 4096,
		state.ProcessRef{PID: 99, Comm: "idlewatch", Exe: "/opt/idlewatch"}, 31)
	unowned := gadget("", "", "", 1, 0.05, 3, 8192, state.ProcessRef{}, 41)
	unowned.Loader, unowned.PIDs, unowned.Comms = nil, nil, nil
	unowned.Placement = state.Placement{}
	return Frame{
		Time:     time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second),
		Nodes:    []string{"node-a"},
		Source:   "local/perf",
		Interval: time.Second,
		CPUs:     4,
		Gadgets:  []state.Row{snoop, idle, tcp},
		Unowned:  &unowned,
		Programs: []state.Row{
			program(&snoop, 101, "exec_enter", "tracepoint", 2+wave/4, 1200+100*wave, 11, 12),
			program(&snoop, 102, "exec_exit", "tracepoint", 0.5, 1200, 12, 13),
			program(&tcp, 201, "tcp_sendmsg", "kprobe", 0.75, 90000, 21),
			program(&idle, 301, "idle_probe", "socket_filter", 0, 0, 31),
			program(nil, 7, "sd_devices", "cgroup_device", 0.05, 3, 41),
		},
	}
}

// runKeys starts the view at width x height, sends the fixed frames, then
// msgs (keys, more frames), and returns the model once the program quit.
func runKeys(t *testing.T, width, height int, opts Options, msgs ...tea.Msg) *Model {
	t.Helper()
	r := lipgloss.NewRenderer(io.Discard)
	r.SetColorProfile(termenv.Ascii)
	opts.Renderer = r
	tm := teatest.NewTestModel(t, New(opts), teatest.WithInitialTermSize(width, height))
	for i := range intervals {
		tm.Send(testFrame(i))
	}
	for _, msg := range msgs {
		tm.Send(msg)
	}
	if err := tm.Quit(); err != nil {
		t.Fatal(err)
	}
	return tm.FinalModel(t, teatest.WithFinalTimeout(10*time.Second)).(*Model)
}

func runes(s string) tea.KeyMsg { return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)} }

func keyOf(t tea.KeyType) tea.KeyMsg { return tea.KeyMsg{Type: t} }

// typed is one key message per rune of s.
func typed(s string) []tea.Msg {
	var out []tea.Msg
	for _, r := range s {
		out = append(out, runes(string(r)))
	}
	return out
}

// checkFrame checks the frame's size and compares it with its golden file
// (go test -run NAME -update rewrites it).
func checkFrame(t *testing.T, m *Model, width, height int) string {
	t.Helper()
	view := m.View()
	lines := strings.Split(view, "\n")
	if len(lines) != height {
		t.Errorf("frame has %d lines, want %d", len(lines), height)
	}
	for i, l := range lines {
		if w := lipgloss.Width(l); w > width {
			t.Errorf("line %d is %d cells wide, more than %d: %q", i+1, w, width, l)
		}
	}
	golden.RequireEqual(t, []byte(view+"\n"))
	return view
}

// rowNames are the first cells of the table rows, in order.
func rowNames(view string) []string {
	lines := strings.Split(view, "\n")
	var names []string
	for _, l := range lines[headerLines+1:] {
		f := strings.Fields(l)
		if len(f) == 0 {
			break
		}
		names = append(names, f[0])
	}
	return names
}
