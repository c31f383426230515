package tui

import (
	"slices"
	"strings"
	"testing"

	tea "github.com/charmbracelet/bubbletea"
)

func TestGoldenFrame80x24(t *testing.T) {
	m := runKeys(t, 80, 24, Options{})
	view := checkFrame(t, m, 80, 24)
	// Narrow: the loader and the rarer cost columns are dropped, the
	// name, CPU% and history stay.
	for _, want := range []string{"GADGET", "CPU%↓", historyTitle, "execsnoop"} {
		if !strings.Contains(view, want) {
			t.Errorf("80x24 frame lacks %q", want)
		}
	}
	if strings.Contains(view, "LOADER") {
		t.Errorf("80x24 frame kept the LOADER column")
	}
}

func TestGoldenFrame120x40(t *testing.T) {
	m := runKeys(t, 120, 40, Options{})
	view := checkFrame(t, m, 120, 40)
	for _, want := range []string{"LOADER", "ig/4242", "CPU%N", "NS/RUN", "CPU% = % of one core, CPU%N = % of all 4 CPUs"} {
		if !strings.Contains(view, want) {
			t.Errorf("120x40 frame lacks %q", want)
		}
	}
}

func TestSortKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		keys []tea.Msg
		want []string
	}{
		{"default CPU% descending", nil, []string{"execsnoop", "tcptop", "(unowned)", "idlewatch"}},
		{"n sorts by name", typed("n"), []string{"(unowned)", "execsnoop", "idlewatch", "tcptop"}},
		{"n twice reverses", typed("nn"), []string{"tcptop", "idlewatch", "execsnoop", "(unowned)"}},
		{"x sorts by runs/s", typed("x"), []string{"tcptop", "execsnoop", "(unowned)", "idlewatch"}},
		{"r reverses", typed("r"), []string{"idlewatch", "(unowned)", "tcptop", "execsnoop"}},
		{"S goes back to the name", typed("SS"), []string{"(unowned)", "execsnoop", "idlewatch", "tcptop"}},
		{"m sorts by map memory", typed("m"), []string{"execsnoop", "tcptop", "(unowned)", "idlewatch"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := runKeys(t, 80, 24, Options{}, tc.keys...)
			if got := rowNames(m.View()); !slices.Equal(got, tc.want) {
				t.Fatalf("rows %v, want %v (sort %s, descending %v)", got, tc.want, m.sortCol, m.descending)
			}
		})
	}
}

func TestSortCycles(t *testing.T) {
	m := runKeys(t, 80, 24, Options{}, typed("s")...)
	if m.sortCol == "CPU%" {
		t.Fatalf("s did not change the sort column")
	}
	// s goes round every shown sortable column back to CPU%.
	seen := map[string]bool{}
	for range 20 {
		m.Update(runes("s"))
		seen[m.sortCol] = true
	}
	if !seen["CPU%"] || !seen["GADGET"] || !seen["RUNS/S"] {
		t.Fatalf("s cycled through %v", seen)
	}
}

func TestFilter(t *testing.T) {
	keys := append(typed("/tcp"), keyOf(tea.KeyEnter))
	m := runKeys(t, 80, 24, Options{}, keys...)
	view := m.View()
	if got := rowNames(view); !slices.Equal(got, []string{"tcptop"}) {
		t.Fatalf("filter tcp: rows %v", got)
	}
	if !strings.Contains(view, "filter /tcp") {
		t.Fatalf("the header does not show the filter:\n%s", view)
	}
	// Esc clears it.
	m.Update(keyOf(tea.KeyEsc))
	if got := rowNames(m.View()); len(got) != 4 {
		t.Fatalf("after esc: rows %v", got)
	}
	// A gadget matches by its programs' names too; q typed into the
	// filter is text, not quit.
	m = runKeys(t, 80, 24, Options{}, append(typed("/sd_dev"), keyOf(tea.KeyEnter))...)
	if got := rowNames(m.View()); !slices.Equal(got, []string{"(unowned)"}) {
		t.Fatalf("filter sd_dev (an unowned program's name): rows %v", got)
	}
	m = runKeys(t, 80, 24, Options{}, append(typed("/q"), keyOf(tea.KeyEnter))...)
	if m.filter != "q" {
		t.Fatalf("q typed into the filter: filter %q", m.filter)
	}
}

func TestDrillDown(t *testing.T) {
	m := runKeys(t, 80, 24, Options{}, keyOf(tea.KeyEnter))
	view := checkFrame(t, m, 80, 24)
	for _, want := range []string{
		"GADGET    execsnoop  id a1b2c3d4e5f  image ghcr.io/ig/execsnoop:v1",
		"LOADER    pid 4242  comm ig  exe /usr/bin/ig",
		"PLACEMENT unit execsnoop.service  slice system.slice",
		"MAPS      3, 3.0M: 11 12 13",
		"PROGRAMS 2", "exec_enter", "exec_exit",
	} {
		if !strings.Contains(view, want) {
			t.Errorf("drill-down lacks %q", want)
		}
	}
	if strings.Contains(view, "tcp_sendmsg") {
		t.Errorf("drill-down into execsnoop shows another gadget's program")
	}
	m.Update(keyOf(tea.KeyEsc))
	if m.screen != screenTable || !strings.Contains(m.View(), "tcptop") {
		t.Fatalf("esc did not go back to the table")
	}
}

func TestDrillDownSecondRow(t *testing.T) {
	m := runKeys(t, 80, 24, Options{}, runes("j"), keyOf(tea.KeyEnter), keyOf(tea.KeyDown))
	view := m.View()
	if !strings.Contains(view, "GADGET    tcptop") || !strings.Contains(view, "tcp_sendmsg") {
		t.Fatalf("down then enter did not drill into tcptop:\n%s", view)
	}
}

func TestProgramView(t *testing.T) {
	m := runKeys(t, 80, 24, Options{}, typed("ai")...)
	if got, want := rowNames(m.View()), []string{"7", "101", "102", "201", "301"}; !slices.Equal(got, want) {
		t.Fatalf("program view sorted by ID: %v, want %v", got, want)
	}
	m.Update(runes("a"))
	if got := rowNames(m.View()); len(got) != 4 || got[0] == "7" {
		t.Fatalf("a did not go back to gadgets: %v", got)
	}
	m = runKeys(t, 80, 24, Options{Programs: true}, keyOf(tea.KeyEnter))
	if view := m.View(); !strings.Contains(view, "PROGRAM   101 exec_enter  type tracepoint") {
		t.Fatalf("enter in the program view did not show the program:\n%s", view)
	}
}

func TestPause(t *testing.T) {
	more := []tea.Msg{runes("p"), testFrame(intervals), testFrame(intervals + 1)}
	m := runKeys(t, 80, 24, Options{}, more...)
	view := m.View()
	if !strings.Contains(view, "PAUSED (+2)") || !strings.Contains(view, "12:00:39") {
		t.Fatalf("paused view does not hold interval 39:\n%s", view)
	}
	// The history kept recording.
	if m.History().Tick() != intervals+2 {
		t.Fatalf("history at interval %d, want %d", m.History().Tick(), intervals+2)
	}
	m.Update(runes(" "))
	if view := m.View(); strings.Contains(view, "PAUSED") || !strings.Contains(view, "12:00:41") {
		t.Fatalf("space did not resume at the newest interval:\n%s", view)
	}
}

func TestHelp(t *testing.T) {
	m := runKeys(t, 80, 24, Options{}, runes("?"))
	view := checkFrame(t, m, 80, 24)
	if !strings.Contains(view, "drill into the selected gadget") {
		t.Fatalf("? shows no help:\n%s", view)
	}
	m.Update(runes("x"))
	if m.help || !strings.Contains(m.View(), "execsnoop") {
		t.Fatalf("a key did not close the help")
	}
	if _, cmd := m.Update(runes("q")); cmd == nil {
		t.Fatalf("q did not quit")
	}
}

func TestResize(t *testing.T) {
	for _, size := range [][2]int{{60, 15}, {200, 60}, {20, 8}, {80, 24}} {
		m := runKeys(t, 80, 24, Options{}, tea.WindowSizeMsg{Width: size[0], Height: size[1]})
		lines := strings.Split(m.View(), "\n")
		if len(lines) != size[1] {
			t.Errorf("%v: %d lines", size, len(lines))
		}
		for i, l := range lines {
			if w := len([]rune(l)); w > size[0] {
				t.Errorf("%v: line %d is %d wide: %q", size, i+1, w, l)
			}
		}
	}
}

func TestHostileNames(t *testing.T) {
	f := testFrame(0)
	f.Gadgets[0].GadgetName = "evil\x1b[2J\u202ename"
	m := runKeys(t, 80, 24, Options{}, f)
	if view := m.View(); strings.Contains(view, "\x1b") || strings.Contains(view, "\u202e") {
		t.Fatalf("a gadget name's escapes reached the screen: %q", view)
	}
}
