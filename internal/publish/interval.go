package publish

import (
	"errors"
	"fmt"

	"github.com/bpfstats/tracker/internal/state"
)

// encodeInterval encodes one snapshot: the messages (parts) of every
// gadget, then _unowned, _node and _summary, each at most limit bytes. A
// message or row that cannot fit is left out, counted in PublishErrors and
// reported in the error; the other messages are still returned. resync
// sends every gadget's full rows. The caller holds s.mu and s.bufs.mu.
//
// When emit is not nil it takes each message as soon as it is encoded
// (its data valid only during the call) and the returned list is empty:
// the buffer then holds one message at a time rather than the whole
// interval (megabytes at thousands of programs).
func (s *NATSSink) encodeInterval(snap *state.Snapshot, limit int64, resync bool, emit func(*outMsg)) ([]outMsg, error) {
	h := Header{
		Schema:   SchemaVersion,
		Node:     s.node,
		Seq:      s.seq,
		Time:     snap.Time,
		Elapsed:  snap.Elapsed,
		Interval: s.opts.Interval,
		Instance: s.instance,
	}
	// A summary needs no program rows: not copying them is most of what
	// a summary-only node saves.
	var byGadget map[string][]int32
	var unowned []int32
	unownedCount := snap.Unowned.ProgramCount
	if !s.opts.SummaryOnly {
		byGadget, unowned = s.programsByGadget(snap)
		unownedCount = len(unowned)
		s.codes.align(snap)
		defer s.codes.keep(snap, s.seq)
	}
	// As of the interval's start, whenever the node message goes out.
	pub := s.Stats()
	e := s.newIntervalEncoder(len(snap.Gadgets)+3, limit)
	e.emit = emit
	gadgets := make([]GadgetSummary, 0, len(snap.Gadgets))
	var errs []error
	for _, g := range snap.Gadgets {
		rows := messageRows{snap, byGadget[g.GadgetID]}
		msg := gadgetMessage(h, snap, g, len(rows.idx))
		msg.Type = TypeGadget
		gadgets = append(gadgets, GadgetSummary{Gadget: msg.Gadget, OwnerPID: msg.Owner.PID, Totals: msg.Totals})
		if s.opts.SummaryOnly {
			continue
		}
		if err := s.addProgramMessage(e, gadgetToken(g.GadgetID), &msg.Header, &msg, &msg.Rows,
			msg.Gadget, msg.Owner, rows, resync); err != nil {
			errs = append(errs, err)
		}
	}
	msg := UnownedMessage{Header: h, Totals: gadgetTotals(snap.Unowned, unownedCount), Programs: []state.Row{}}
	msg.Type = TypeUnowned
	if !s.opts.SummaryOnly {
		if err := s.addProgramMessage(e, TokenUnowned, &msg.Header, &msg, &msg.Rows,
			GadgetIdentity{}, state.ProcessRef{}, messageRows{snap, unowned}, resync); err != nil {
			errs = append(errs, err)
		}
	}
	h.Type = TypeNode
	node := s.nodeMessage(h, snap, unownedCount, pub)
	if err := e.add(TokenNode, node); err != nil {
		errs = append(errs, err)
	}
	if err := s.addSummary(e, node, gadgets, msg.Totals); err != nil {
		errs = append(errs, err)
	}
	if e.dropped > 0 {
		s.pubErrors.Add(e.dropped)
		errs = append(errs, fmt.Errorf("%d program rows or messages left out: larger than the server's max_payload of %d bytes", e.dropped, e.limit))
	}
	return e.msgs, errors.Join(errs...)
}

// programsByGadget splits the snapshot's program rows into those of each
// gadget and the unowned ones, as indexes into snap.Programs: the rows
// are named after this node and cleaned as they are encoded, without a
// copy of them all.
func (s *NATSSink) programsByGadget(snap *state.Snapshot) (map[string][]int32, []int32) {
	byGadget := make(map[string][]int32, len(snap.Gadgets))
	for _, g := range snap.Gadgets {
		byGadget[g.GadgetID] = make([]int32, 0, g.ProgramCount)
	}
	unowned := make([]int32, 0, snap.Unowned.ProgramCount)
	for i := range snap.Programs {
		if id := snap.Programs[i].GadgetID; id != "" {
			byGadget[id] = append(byGadget[id], int32(i))
		} else {
			unowned = append(unowned, int32(i))
		}
	}
	return byGadget, unowned
}

// gadgetMessage is the message of gadget row g, with clean labels and no
// program rows yet; programs is the number of its program rows.
func gadgetMessage(h Header, snap *state.Snapshot, g state.Row, programs int) GadgetMessage {
	info, ok := snap.GadgetInfo[g.GadgetID]
	if !ok {
		info = state.Gadget{ID: g.GadgetID, Name: g.GadgetName, Image: g.GadgetImage}
		if g.Loader != nil {
			info.Owner = *g.Loader
		}
	}
	id := cleanGadget(state.Gadget{ID: g.GadgetID, Name: g.GadgetName, Image: g.GadgetImage})
	return GadgetMessage{
		Header:   h,
		Gadget:   GadgetIdentity{ID: id.ID, Name: id.Name, Image: id.Image},
		Owner:    cleanProcessRef(info.Owner),
		Totals:   gadgetTotals(g, programs),
		Programs: []state.Row{},
	}
}

// nodeMessage is the _node message closing the interval, with the
// publisher counters pub as of its start.
func (s *NATSSink) nodeMessage(h Header, snap *state.Snapshot, unowned int, pub PublisherStats) NodeMessage {
	c := snap.Counters
	return NodeMessage{
		Header:   h,
		NodeName: CleanLabel(s.opts.Node),
		Version:  CleanLabel(s.opts.Version),
		Kernel:   CleanLabel(s.opts.Kernel),
		CPUs:     s.opts.CPUs,
		Source:   CleanLabel(snap.Source),
		Counts: NodeCounts{
			Programs:      len(snap.Programs),
			Gadgets:       len(snap.Gadgets),
			Unowned:       unowned,
			EventsLoad:    c.EventsLoad,
			EventsRelease: c.EventsRelease,
			EventsLost:    c.EventsLost,

			RepairsAdded:         c.RepairsAdded,
			RepairsRemoved:       c.RepairsRemoved,
			LoadsGone:            c.LoadsGone,
			AttributionsRejected: c.AttributionsRejected,
			EventsDropped:        c.EventsDropped,
			SnapshotsDropped:     c.SnapshotsDropped,
			RegistrationsRemoved: c.RegistrationsRemoved,
		},
		Resyncs:       c.Resyncs,
		Sweeps:        c.Sweeps,
		SweepDuration: snap.SweepDuration,
		Publisher:     pub,
	}
}

// gadgetTotals takes the totals from the gadget row, which the inventory
// computed over distinct maps, and the program count from the rows when
// the gadget row lacks it.
func gadgetTotals(g state.Row, programs int) MessageTotals {
	t := MessageTotals(g.Totals)
	if t.ProgramCount == 0 {
		t.ProgramCount = programs
	}
	return t
}
