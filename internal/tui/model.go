// Package tui is the interactive full-screen view of "tracker top": sortable, filterable gadget and program rows with their CPU history.
//
// It is built on charmbracelet/bubbletea (the Elm-style model/update/view
// loop) and lipgloss (styles), not tview: a bubbletea model is a plain
// value whose View is a string, so every frame is testable as text
// without a terminal (golden frames, key presses through
// charmbracelet/x/exp/teatest), the libraries are widely used and kept,
// and they add no C or terminfo dependency. The model knows nothing of
// the kernel or NATS: its caller sends a Frame per interval (see
// FrameFromSnapshot), and the view keeps each row's history in a fixed
// budget (History).
package tui

import (
	"slices"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"

	"github.com/bpfstats/tracker/internal/state"
)

// Options configure a Model.
type Options struct {
	// History is the number of intervals kept per row; 0 means
	// DefaultHistory.
	History int
	// MaxRows caps the rows whose history is kept; 0 means
	// DefaultMaxSeries.
	MaxRows int
	// Programs starts in the program view (one row per program) instead
	// of the gadget view.
	Programs bool
	// Fleet shows the NODE column: the rows come from many nodes.
	Fleet bool
	// Renderer styles the view; nil means lipgloss's default (the
	// terminal of stdout). Tests pass one without colors.
	Renderer *lipgloss.Renderer
}

// screen is what the view shows.
type screen int

const (
	screenTable screen = iota
	screenDetail
)

// Model is the bubbletea model of the live view. Send it Frames.
type Model struct {
	opts    Options
	styles  styles
	history *History

	// frame is the frame shown; latest the newest received (they differ
	// while paused); shownTick is the history interval of frame.
	frame, latest *Frame
	shownTick     uint64
	paused        bool
	// skipped counts frames received while paused.
	skipped int

	width, height int
	screen        screen
	programs      bool
	help          bool

	// filter is the text filter (lower case); editing while it is typed.
	filter  string
	editing bool

	// sortCol is the title of the sort column; descending its order.
	sortCol    string
	descending bool

	// selected is the key of the selected row in the table, offset the
	// first row shown; detail* are the same in a drill-down, of whose
	// subject row detailKey is the key.
	selected, detailSelected string
	offset, detailOffset     int
	detailKey                string
}

// New returns the model of an empty view; it shows rows from the first
// Frame on.
func New(opts Options) *Model {
	return &Model{
		opts:       opts,
		styles:     newStyles(opts.Renderer),
		history:    NewHistory(opts.History, opts.MaxRows),
		width:      80,
		height:     24,
		programs:   opts.Programs,
		sortCol:    "CPU%",
		descending: true,
	}
}

// History returns the rows' history, for tests.
func (m *Model) History() *History { return m.history }

// Init starts nothing: frames come from the caller.
func (m *Model) Init() tea.Cmd { return nil }

// Update applies one message: a Frame, a key or a resize.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	var cmd tea.Cmd
	switch msg := msg.(type) {
	case Frame:
		m.receive(&msg)
	case tea.WindowSizeMsg:
		m.width, m.height = max(msg.Width, 20), max(msg.Height, 8)
	case tea.KeyMsg:
		cmd = m.key(msg)
	}
	m.clamp()
	return m, cmd
}

// clamp keeps the selection on a shown row (the first when it left) and
// the selected row on the screen.
func (m *Model) clamp() {
	if m.frame == nil {
		return
	}
	keys := m.visibleKeys()
	sel, off := &m.selected, &m.offset
	if m.screen == screenDetail {
		sel, off = &m.detailSelected, &m.detailOffset
	}
	if len(keys) == 0 {
		*off = 0
		return
	}
	i := indexOf(keys, *sel)
	if i < 0 {
		i, *sel = 0, keys[0]
	}
	rows := m.layout().rows
	*off = min(max(*off, i-rows+1), i, max(len(keys)-rows, 0))
}

// receive records f's rows in the history and shows f unless paused.
func (m *Model) receive(f *Frame) {
	record(m.history, f)
	m.latest = f
	if m.paused {
		m.skipped++
		return
	}
	m.frame, m.shownTick = f, m.history.Tick()
}

// setPaused freezes or resumes the view; resuming shows the newest frame.
func (m *Model) setPaused(p bool) {
	m.paused = p
	if !p && m.latest != nil {
		m.frame, m.shownTick, m.skipped = m.latest, m.history.Tick(), 0
	}
}

// columns are the columns of the current table: the gadget or program
// view's, or a drill-down's programs.
func (m *Model) columns() []column {
	if m.programs || m.screen == screenDetail {
		return programColumns(m.opts.Fleet)
	}
	return gadgetColumns(m.opts.Fleet)
}

// tableRows are the rows of the table view, filtered and sorted.
func (m *Model) tableRows() []state.Row {
	if m.frame == nil {
		return nil
	}
	var rows []state.Row
	if m.programs {
		rows = m.frame.Programs
	} else {
		rows = m.frame.Gadgets
		if m.frame.Unowned != nil {
			rows = append(slices.Clip(rows), *m.frame.Unowned)
		}
	}
	// A gadget matches when one of its programs does too.
	withMatch := map[string]bool{}
	if !m.programs && m.filter != "" {
		for i := range m.frame.Programs {
			if p := &m.frame.Programs[i]; matches(p, m.filter) {
				withMatch[gadgetKey(p)] = true
			}
		}
	}
	out := make([]state.Row, 0, len(rows))
	for i := range rows {
		if matches(&rows[i], m.filter) || withMatch[rowKey(&rows[i], m.programs)] {
			out = append(out, rows[i])
		}
	}
	m.sortRows(out, m.columns())
	return out
}

// detailSubject is the row drilled into, and whether it is still there.
func (m *Model) detailSubject() (state.Row, bool) {
	if m.frame == nil {
		return state.Row{}, false
	}
	rows := m.frame.Programs
	if !m.programs {
		rows = m.frame.Gadgets
		if m.frame.Unowned != nil {
			rows = append(slices.Clip(rows), *m.frame.Unowned)
		}
	}
	for i := range rows {
		if rowKey(&rows[i], m.programs) == m.detailKey {
			return rows[i], true
		}
	}
	return state.Row{}, false
}

// detailRows are the programs of the row drilled into: a gadget's
// programs (the unowned row's: those without a gadget), or the program.
func (m *Model) detailRows(subject *state.Row) []state.Row {
	if m.programs {
		return []state.Row{*subject}
	}
	var out []state.Row
	for _, p := range m.frame.Programs {
		if p.NodeName == subject.NodeName && p.GadgetID == subject.GadgetID {
			out = append(out, p)
		}
	}
	m.sortRows(out, programColumns(m.opts.Fleet))
	return out
}

// sortRows sorts rows by the sort column (when cols has it), then by the
// row key so that equal rows keep their place.
func (m *Model) sortRows(rows []state.Row, cols []column) {
	var by func(a, b *state.Row) int
	for _, c := range cols {
		if c.title == m.sortCol {
			by = c.compare
		}
	}
	slices.SortStableFunc(rows, func(a, b state.Row) int {
		if by != nil {
			c := by(&a, &b)
			if m.descending {
				c = -c
			}
			if c != 0 {
				return c
			}
		}
		if c := compareNames(&a, &b); c != 0 {
			return c
		}
		return 0
	})
}

func compareNames(a, b *state.Row) int {
	for _, c := range [][2]string{{a.NodeName, b.NodeName}, {gadgetName(a), gadgetName(b)}, {a.GadgetID, b.GadgetID}} {
		if c[0] != c[1] {
			if c[0] < c[1] {
				return -1
			}
			return 1
		}
	}
	switch {
	case a.ProgID < b.ProgID:
		return -1
	case a.ProgID > b.ProgID:
		return 1
	}
	return 0
}
