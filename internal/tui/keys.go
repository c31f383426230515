package tui

import (
	"strings"
	"unicode"

	tea "github.com/charmbracelet/bubbletea"
)

// helpText lists the keys, one per line, for the help screen and the
// README.
const helpText = `q, ctrl+c      quit
?              this help (any key closes it)
up/down, j/k   select a row; pgup/pgdown, home/end
enter          drill into the selected gadget: its programs, maps, loader,
               placement (in the program view: the program)
esc, left      back from a drill-down; clear the filter
a              toggle the gadget view and the program view (--all)
/              filter rows by text (name, ID, image, type, node, comm);
               enter keeps it, esc clears it
s, S           sort by the next, previous column
c x e m        sort by CPU%, RUNS/S, NS/RUN, MAPMEM
n i g o        sort by name, program ID, gadget, node
r              reverse the sort order (a sort key pressed twice too)
p, space       pause: the screen stays, the history keeps recording`

// key applies one key press and returns tea.Quit to end the program.
func (m *Model) key(k tea.KeyMsg) tea.Cmd {
	if k.Type == tea.KeyCtrlC {
		return tea.Quit
	}
	if m.editing {
		m.editFilter(k)
		return nil
	}
	if m.help {
		m.help = false
		if k.String() == "q" {
			return tea.Quit
		}
		return nil
	}
	switch k.String() {
	case "q":
		return tea.Quit
	case "?":
		m.help = true
	case "/":
		m.editing = true
	case "p", " ":
		m.setPaused(!m.paused)
	case "a":
		m.programs, m.screen = !m.programs, screenTable
		m.selected, m.offset = "", 0
	case "enter":
		m.drill()
	case "esc", "left", "backspace", "h":
		m.back()
	default:
		if !m.navigate(k.String()) {
			m.sortKey(k.String())
		}
	}
	return nil
}

// editFilter applies a key while the filter is typed.
func (m *Model) editFilter(k tea.KeyMsg) {
	switch k.Type {
	case tea.KeyEnter:
		m.editing = false
	case tea.KeyEsc:
		m.editing, m.filter = false, ""
	case tea.KeyBackspace:
		if r := []rune(m.filter); len(r) > 0 {
			m.filter = string(r[:len(r)-1])
		}
	case tea.KeyCtrlU:
		m.filter = ""
	case tea.KeyRunes, tea.KeySpace:
		for _, r := range k.Runes {
			if unicode.IsPrint(r) && len(m.filter) < 64 {
				m.filter += strings.ToLower(string(r))
			}
		}
	}
	m.offset = 0
}

// drill opens the drill-down of the selected row.
func (m *Model) drill() {
	if m.screen != screenTable || m.selected == "" {
		return
	}
	m.screen, m.detailKey = screenDetail, m.selected
	m.detailSelected, m.detailOffset = "", 0
}

// back leaves a drill-down, or clears the filter.
func (m *Model) back() {
	if m.screen == screenDetail {
		m.screen = screenTable
		return
	}
	m.filter = ""
}

// navigate moves the selection; false when k is no navigation key.
func (m *Model) navigate(k string) bool {
	page := max(m.layout().rows, 1)
	delta := map[string]int{
		"up": -1, "k": -1, "down": 1, "j": 1,
		"pgup": -page, "pgdown": page, "home": -1 << 30, "end": 1 << 30,
	}
	d, ok := delta[k]
	if !ok {
		return false
	}
	keys := m.visibleKeys()
	if len(keys) == 0 {
		return true
	}
	sel := m.selectedPtr()
	i := max(indexOf(keys, *sel), 0)
	if *sel == "" || indexOf(keys, *sel) < 0 {
		i = 0
		d = 0
	}
	*sel = keys[min(max(i+d, 0), len(keys)-1)]
	return true
}

// sortKey changes the sort column: s and S cycle through the shown
// sortable columns, r reverses, a column's hotkey sorts by it (a second
// press reverses).
func (m *Model) sortKey(k string) {
	cols, _ := fitColumns(m.columns(), m.width)
	var sortable []column
	for _, c := range cols {
		if c.compare != nil {
			sortable = append(sortable, c)
		}
	}
	if len(sortable) == 0 {
		return
	}
	at := 0
	for i, c := range sortable {
		if c.title == m.sortCol {
			at = i
		}
	}
	switch k {
	case "s":
		m.setSort(sortable[(at+1)%len(sortable)])
	case "S":
		m.setSort(sortable[(at+len(sortable)-1)%len(sortable)])
	case "r":
		m.descending = !m.descending
	default:
		for _, c := range m.columns() {
			if c.key != 0 && string(c.key) == k {
				if c.title == m.sortCol {
					m.descending = !m.descending
				} else {
					m.setSort(c)
				}
			}
		}
	}
}

func (m *Model) setSort(c column) {
	m.sortCol, m.descending = c.title, c.descending
}

// selectedPtr is the selection of the current screen.
func (m *Model) selectedPtr() *string {
	if m.screen == screenDetail {
		return &m.detailSelected
	}
	return &m.selected
}

// visibleKeys are the keys of the current screen's rows, in order.
func (m *Model) visibleKeys() []string {
	if m.screen == screenDetail {
		subject, ok := m.detailSubject()
		if !ok {
			return nil
		}
		rows := m.detailRows(&subject)
		keys := make([]string, len(rows))
		for i := range rows {
			keys[i] = programKey(&rows[i])
		}
		return keys
	}
	rows := m.tableRows()
	keys := make([]string, len(rows))
	for i := range rows {
		keys[i] = rowKey(&rows[i], m.programs)
	}
	return keys
}

func indexOf(keys []string, key string) int {
	for i, k := range keys {
		if k == key {
			return i
		}
	}
	return -1
}
