package tui

import (
	"strconv"
	"time"

	"github.com/bpfstats/tracker/internal/state"
)

// Frame is one interval of what the view shows: the gadget and program
// rows of one node (the local kernel) or of a fleet (NATS). The model
// takes it as a message; send each interval's Frame with tea.Program.Send.
type Frame struct {
	// Time is when the rows were read (the sweep's time, or the consumer's
	// clock for a fleet).
	Time time.Time
	// Nodes are the node names the rows come from.
	Nodes []string
	// Source says where the rows come from: "local/perf" (the kernel,
	// through the perf event source) or "nats://host:port".
	Source string
	// Interval is the time between two frames.
	Interval time.Duration
	// CPUs is the number of CPUs CPU%N is normalized by (0 when the
	// rows come from nodes with different counts or it is unknown).
	CPUs int
	// Gadgets has one row per gadget.
	Gadgets []state.Row
	// Unowned sums the programs without a gadget; nil hides the row.
	Unowned *state.Row
	// Programs has one row per program, owned or not.
	Programs []state.Row
	// Status is one line of the source's own health (lost events,
	// dropped messages), shown in the header; empty when all is well.
	Status string
}

// FrameFromSnapshot is the Frame of one local sweep. Its program rows
// are copies: the model sorts and keeps them.
func FrameFromSnapshot(s *state.Snapshot, interval time.Duration, cpus int) Frame {
	unowned := s.Unowned
	programs := make([]state.Row, len(s.Programs))
	for i, r := range s.Programs {
		programs[i] = *r
	}
	f := Frame{
		Time: s.Time, Nodes: []string{s.Node}, Source: "local/" + s.Source,
		Interval: interval, CPUs: cpus,
		Gadgets: s.Gadgets, Programs: programs,
	}
	if unowned.ProgramCount > 0 {
		f.Unowned = &unowned
	}
	c := s.Counters
	// A resync at start is routine; lost events are what make one.
	if c.EventsLost > 0 {
		f.Status = "lost events " + strconv.FormatUint(c.EventsLost, 10) + ", resyncs " + strconv.FormatUint(c.Resyncs, 10)
	}
	return f
}

// The kinds of rows; a row key starts with its node and kind.
const (
	kindGadget  = "g"
	kindProgram = "p"
	kindUnowned = "u"
)

// gadgetKey names a gadget row in the history; the unowned row has an
// empty gadget ID and its own kind.
func gadgetKey(r *state.Row) string {
	if r.GadgetID == "" {
		return r.NodeName + "\x00" + kindUnowned
	}
	return r.NodeName + "\x00" + kindGadget + "\x00" + r.GadgetID
}

// programKey names a program row in the history.
func programKey(r *state.Row) string {
	return r.NodeName + "\x00" + kindProgram + "\x00" + strconv.FormatUint(uint64(r.ProgID), 10)
}

// rowKey is the history key of r in the gadget view (gadgets) or the
// program view.
func rowKey(r *state.Row, programs bool) string {
	if programs {
		return programKey(r)
	}
	return gadgetKey(r)
}

// record adds f's rows to h as its newest interval.
func record(h *History, f *Frame) {
	h.Begin()
	for i := range f.Gadgets {
		h.Record(gadgetKey(&f.Gadgets[i]), sampleOf(&f.Gadgets[i]))
	}
	if f.Unowned != nil {
		h.Record(gadgetKey(f.Unowned), sampleOf(f.Unowned))
	}
	for i := range f.Programs {
		h.Record(programKey(&f.Programs[i]), sampleOf(&f.Programs[i]))
	}
}

func sampleOf(r *state.Row) Sample {
	return Sample{CPU: float32(r.CPUPercent), Runs: float32(r.RunsPerSecond)}
}
