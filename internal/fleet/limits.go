package fleet

import (
	"time"
	"unicode/utf8"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// What the fleet view accepts from a message and keeps of it. Any process
// that may publish under the prefix reaches the view, so nothing a body
// says can grow it without bound, freeze it or outlive its node.
const (
	// MaxClockSkew is how far past the consumer's clock a message's time
	// may be; a message from further in the future is rejected.
	MaxClockSkew = 5 * time.Second
	// MinInterval and MaxInterval bound a message's interval; a message
	// with an interval outside them is rejected. Without an interval, the
	// elapsed time clamped to them stands in.
	MinInterval = 10 * time.Millisecond
	MaxInterval = time.Hour
	// MaxNodes caps the nodes shown; messages of more nodes are dropped.
	MaxNodes = 20000
	// MaxGadgetsPerNode caps the gadgets kept for one node.
	MaxGadgetsPerNode = 1000
	// MaxProgramsPerSet caps the program rows of one gadget, or of one
	// node's unowned programs, over all parts.
	MaxProgramsPerSet = 65536
	// MaxPrograms caps the program rows kept for the whole fleet.
	MaxPrograms = 1 << 20
	// MaxParts caps the parts of one gadget's or _unowned's interval.
	MaxParts = 1024
	// MaxLabelBytes caps every string of a message (gadget ID, name and
	// image, program name and type, tag, comm, exe, version, kernel):
	// longer ones are cut at a rune boundary.
	MaxLabelBytes = 128
	// MaxListEntries caps the pids, comms and map IDs of one row.
	MaxListEntries = 128
	// MaxTokenBytes caps the node and gadget tokens of a subject or key;
	// longer ones are rejected (a tracker hashes long tokens).
	MaxTokenBytes = 256
	// retiredInstances is how many of a node's past instances are
	// remembered, so that a replayed message of one is stale.
	retiredInstances = 4
)

// Stats count what the fleet view took, refused and cut since it started.
// An interval message is counted in Accepted, or in one of the Rejected,
// Stale or DroppedNodes counters; events are not counted.
type Stats struct {
	// Nodes is the number of nodes shown now.
	Nodes int `json:"nodes"`
	// Accepted counts the interval messages that passed the checks and
	// the ordering (a gadget beyond MaxGadgetsPerNode is then also counted
	// in DroppedGadgets).
	Accepted uint64 `json:"accepted"`
	// RejectedSubject counts messages on subjects (or keys) not of the
	// form <prefix>.<node>.<token>, or with tokens over MaxTokenBytes.
	RejectedSubject uint64 `json:"rejectedSubject"`
	// RejectedDecode counts bodies that are not JSON, of another schema,
	// of a type other than their subject's, or with an instance over
	// MaxLabelBytes.
	RejectedDecode uint64 `json:"rejectedDecode"`
	// RejectedTime counts messages timed beyond now + MaxClockSkew.
	RejectedTime uint64 `json:"rejectedTime"`
	// RejectedInterval counts messages with an interval outside
	// [MinInterval, MaxInterval].
	RejectedInterval uint64 `json:"rejectedInterval"`
	// RejectedPart counts messages whose part is not within 1..parts or
	// whose parts exceed MaxParts.
	RejectedPart uint64 `json:"rejectedPart"`
	// Stale counts messages of a past interval (a lower seq of the node's
	// instance) or of a past instance of the node.
	Stale uint64 `json:"stale"`
	// DroppedNodes counts messages of new nodes beyond MaxNodes;
	// DroppedGadgets those of new gadgets beyond MaxGadgetsPerNode.
	DroppedNodes   uint64 `json:"droppedNodes"`
	DroppedGadgets uint64 `json:"droppedGadgets"`
	// DroppedPrograms counts program rows beyond MaxProgramsPerSet or
	// MaxPrograms.
	DroppedPrograms uint64 `json:"droppedPrograms"`
	// CappedLabels counts strings cut to MaxLabelBytes; CappedLists the
	// lists cut to MaxListEntries.
	CappedLabels uint64 `json:"cappedLabels"`
	CappedLists  uint64 `json:"cappedLists"`
	// IncompleteIntervals counts gadget or _unowned intervals that closed
	// with parts missing; they are shown with the rows that arrived.
	IncompleteIntervals uint64 `json:"incompleteIntervals"`
	// ExpiredNodes counts nodes dropped for silence.
	ExpiredNodes uint64 `json:"expiredNodes"`
}

// Rejected sums the Rejected counters.
func (s Stats) Rejected() uint64 {
	return s.RejectedSubject + s.RejectedDecode + s.RejectedTime + s.RejectedInterval + s.RejectedPart
}

// Dropped sums the Dropped counters.
func (s Stats) Dropped() uint64 {
	return s.DroppedNodes + s.DroppedGadgets + s.DroppedPrograms
}

// capLabel cuts *s to MaxLabelBytes at a rune boundary and counts it.
func (st *Stats) capLabel(s *string) {
	if len(*s) <= MaxLabelBytes {
		return
	}
	i := MaxLabelBytes
	for i > 0 && !utf8.RuneStart((*s)[i]) {
		i--
	}
	// A copy, so that the decoded message's buffer is not kept alive.
	*s = string([]byte((*s)[:i]))
	st.CappedLabels++
}

// capList cuts a list to MaxListEntries and counts it.
func capList[T any](st *Stats, v []T) []T {
	if len(v) <= MaxListEntries {
		return v
	}
	st.CappedLists++
	return v[:MaxListEntries:MaxListEntries]
}

func (st *Stats) capProcess(p *state.ProcessRef) {
	st.capLabel(&p.Comm)
	st.capLabel(&p.Exe)
}

func (st *Stats) capIdentity(g *publish.GadgetIdentity) {
	st.capLabel(&g.ID)
	st.capLabel(&g.Name)
	st.capLabel(&g.Image)
}

// capRow caps every string and list of a program row. The node name is
// the subject's, never the body's.
func (st *Stats) capRow(r *state.Row) {
	r.NodeName = ""
	for _, s := range []*string{&r.GadgetID, &r.GadgetName, &r.GadgetImage, &r.ProgName, &r.ProgType, &r.Tag} {
		st.capLabel(s)
	}
	r.PIDs = capList(st, r.PIDs)
	r.Comms = capList(st, r.Comms)
	r.MapIDs = capList(st, r.MapIDs)
	for i := range r.Comms {
		st.capLabel(&r.Comms[i])
	}
	if r.Loader != nil {
		st.capProcess(r.Loader)
	}
}

func (st *Stats) capNode(m *publish.NodeMessage) {
	st.capLabel(&m.Version)
	st.capLabel(&m.Kernel)
	st.capLabel(&m.Source)
	if m.CPUs < 0 || m.CPUs > MaxCPUs {
		// Not a machine: unknown, as from an older tracker.
		m.CPUs = 0
	}
}

// MaxCPUs is the largest CPU count a node message may claim.
const MaxCPUs = 1 << 16

// boundInterval clamps d into [MinInterval, MaxInterval].
func boundInterval(d time.Duration) time.Duration {
	return min(max(d, MinInterval), MaxInterval)
}
