package fleet

import (
	"fmt"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// message is one decoded interval message: header and exactly one of
// gadget, unowned, info and summary.
type message struct {
	header  *publish.Header
	gadget  *publish.GadgetMessage
	unowned *publish.UnownedMessage
	info    *publish.NodeMessage
	summary *publish.SummaryMessage
}

// liteRow is what a gadget row needs of a program row when program rows
// are not shown: its processes. The other fields are skipped, not
// decoded.
type liteRow struct {
	PIDs  []uint32 `json:"pids"`
	Comms []string `json:"comms"`
}

// liteGadget is a GadgetMessage decoded without its program rows.
type liteGadget struct {
	publish.Header
	Gadget   publish.GadgetIdentity `json:"gadget"`
	Owner    state.ProcessRef       `json:"owner"`
	Totals   publish.MessageTotals  `json:"totals"`
	Programs []liteRow              `json:"programs"`
}

// liteUnowned is an UnownedMessage decoded without its program rows.
type liteUnowned struct {
	publish.Header
	Totals   publish.MessageTotals `json:"totals"`
	Programs []struct{}            `json:"programs"`
}

// decode decodes data, once, as the kind of message its subject token
// names and checks its schema and type. Without f.kinds.rows, program rows
// are decoded only as far as gadget rows need them.
func (f *Fleet) decode(token string, data []byte) (message, error) {
	var m message
	var v any
	var want string
	var lite *liteGadget
	var liteU *liteUnowned
	switch token {
	case publish.TokenSummary:
		m.summary = new(publish.SummaryMessage)
		m.header, v, want = &m.summary.Header, m.summary, publish.TypeSummary
	case publish.TokenNode:
		m.info = new(publish.NodeMessage)
		m.header, v, want = &m.info.Header, m.info, publish.TypeNode
	case publish.TokenUnowned:
		if f.kinds.rows {
			m.unowned = new(publish.UnownedMessage)
			m.header, v, want = &m.unowned.Header, m.unowned, publish.TypeUnowned
		} else {
			liteU = new(liteUnowned)
			m.header, v, want = &liteU.Header, liteU, publish.TypeUnowned
		}
	default:
		if f.kinds.rows {
			m.gadget = new(publish.GadgetMessage)
			m.header, v, want = &m.gadget.Header, m.gadget, publish.TypeGadget
		} else {
			lite = new(liteGadget)
			m.header, v, want = &lite.Header, lite, publish.TypeGadget
		}
	}
	if err := unmarshal(data, v); err != nil {
		return message{}, err
	}
	h := m.header
	switch {
	case h.Schema != publish.SchemaVersion:
		return message{}, fmt.Errorf("schema %.100q, want %q", h.Schema, publish.SchemaVersion)
	case h.Type != want:
		return message{}, fmt.Errorf("type %.100q on a %s subject", h.Type, want)
	case len(h.Instance) > MaxLabelBytes:
		return message{}, fmt.Errorf("instance over %d bytes", MaxLabelBytes)
	}
	if lite != nil {
		m.gadget = lite.message()
		m.header = &m.gadget.Header
	}
	if liteU != nil {
		m.unowned = &publish.UnownedMessage{Header: liteU.Header, Totals: liteU.Totals}
		m.header = &m.unowned.Header
	}
	return m, nil
}

// message makes the gadget message of l, its program rows holding only
// their processes.
func (l *liteGadget) message() *publish.GadgetMessage {
	g := &publish.GadgetMessage{Header: l.Header, Gadget: l.Gadget, Owner: l.Owner, Totals: l.Totals}
	if l.Programs != nil {
		g.Programs = make([]state.Row, len(l.Programs))
		for i, p := range l.Programs {
			g.Programs[i] = state.Row{PIDs: p.PIDs, Comms: p.Comms}
		}
	}
	return g
}
