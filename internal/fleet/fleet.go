// Package fleet reads the trackers' NATS messages into the latest state of every node: the "tracker top" view.
//
// It consumes what internal/publish sends: it reads NATS and publishes
// nothing. It trusts subjects, not bodies: a message's node and kind come
// from its subject, its order from the publisher's (instance, seq), its
// expiry from the consumer's own clock; see the limits in limits.go.
package fleet

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// ExpiryIntervals is how many of its intervals a node may stay silent
// before the fleet view drops it.
const ExpiryIntervals = 3

// Fleet is the latest state of every node publishing under a subject
// prefix, built from their interval messages. It is safe for concurrent
// use.
type Fleet struct {
	now             func() time.Time
	prefix          string
	defaultInterval time.Duration

	mu    sync.Mutex
	nodes map[string]*node
	// expired remembers where the nodes dropped for silence were, so that
	// a replayed message cannot bring one back: up to MaxNodes, the
	// oldest forgotten first (in expiredOrder).
	expired      map[string]position
	expiredOrder []string
	// programs counts the program rows held by all nodes.
	programs int
	stats    Stats
	// groups are the same as images (below) for the placement rollups, by Options.By (by.go).
	groups map[string]*state.CounterSets
	// images and names keep the per-image and per-gadget-name rollups'
	// counters from going down when a gadget instance or a node goes away
	// (ImageRows, Rollup).
	images, names state.CounterSets
	// retired keeps what gone gadgets counted in the live rollups of a
	// fleet that takes only summaries (live.go).
	retired map[retiredKey]cumulative
	// kinds are the messages the fleet takes.
	kinds kinds
	// consumer reports the subscriptions' pending and dropped messages,
	// and the summaries skipped for a newer one, when set (Run).
	consumer func() (pending int, dropped, skipped uint64)
}

// kinds are the messages a fleet takes: all of them for New, the ones it
// shows for Run.
type kinds struct {
	// detail takes gadget, _unowned and _node messages; summaries takes
	// _summary messages.
	detail, summaries bool
	// rows decodes program rows whole; without it only their processes
	// are kept (for the gadget rows).
	rows bool
	// nodeGlob, when set, skips the nodes whose token does not match it
	// before decoding.
	nodeGlob string
}

// position is where a publisher was: its instance and seq, and its past
// instances.
type position struct {
	instance string
	seq      uint64
	retired  []string
}

type node struct {
	// lastSeen is when a message of the node was last accepted, by the
	// consumer's clock.
	lastSeen time.Time
	// interval is the node's publishing interval, within MinInterval and
	// MaxInterval.
	interval time.Duration
	// newest is the latest message time of the node, by its own clock:
	// how far behind the view is (Consumer).
	newest time.Time
	// position is the publisher's newest instance and seq.
	position
	info *publish.NodeMessage
	// gadgets are keyed by the subject's gadget token.
	gadgets map[string]*slot
	unowned *slot
	// summary is the node's latest _summary, when it sends them.
	summary *summary
	// roll is the node's part of the live rollups (live.go).
	roll *nodeRollup
}

// New returns an empty fleet of the trackers publishing under prefix
// (publish.DefaultSubjectPrefix when empty). defaultInterval is assumed
// for nodes whose messages carry neither interval nor elapsed time; now
// is time.Now when nil.
func New(prefix string, defaultInterval time.Duration, now func() time.Time) *Fleet {
	if now == nil {
		now = time.Now
	}
	if prefix == "" {
		prefix = publish.DefaultSubjectPrefix
	}
	if defaultInterval <= 0 {
		defaultInterval = 2 * time.Second
	}
	return &Fleet{
		now: now, prefix: prefix, defaultInterval: boundInterval(defaultInterval),
		nodes: make(map[string]*node), expired: make(map[string]position), retired: make(map[retiredKey]cumulative),
		kinds: kinds{detail: true, summaries: true, rows: true},
	}
}

// Stats returns the fleet's counters.
func (f *Fleet) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats
	s.Nodes = len(f.nodes)
	return s
}

// Ingest applies one message received now on subject
// <prefix>.<node>.<token> (or <prefix>.partitioned.<p>.<node>._summary,
// where a partitioned cluster maps summaries; see PartitionedToken).
// Event messages are ignored, and so are the kinds and nodes the fleet
// does not take (see Run); a message the fleet refuses is counted in
// Stats and returned as an error.
func (f *Fleet) Ingest(subject string, data []byte) error {
	rest, ok := strings.CutPrefix(subject, f.prefix+".")
	if !ok {
		f.countReject(&f.stats.RejectedSubject)
		return fmt.Errorf("subject %.300q not under %s", subject, f.prefix)
	}
	return f.ingestAt(rest, data, f.now())
}

// ingestAt applies the message of key <node>.<token>[.p<N>] (a subject
// without its prefix, or a key-value key) as received at seen. The body is
// decoded once, before the lock, and only when the fleet takes its kind.
func (f *Fleet) ingestAt(key string, data []byte, seen time.Time) error {
	nodeName, token, err := splitKey(key)
	if err != nil {
		f.countReject(&f.stats.RejectedSubject)
		return err
	}
	if !f.takes(nodeName, token) {
		return nil
	}
	m, err := f.decode(token, data)
	if err != nil {
		f.countReject(&f.stats.RejectedDecode)
		return fmt.Errorf("decoding message of %.300q: %w", key, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkHeader(m.header); err != nil {
		return fmt.Errorf("message of %.300q: %w", key, err)
	}
	n, err := f.nodeFor(nodeName, m.header)
	if err != nil {
		return err
	}
	if n == nil || !f.order(n, m.header) {
		f.stats.Stale++
		return fmt.Errorf("message of %.300q: stale (instance %.130q seq %d)", key, m.header.Instance, m.header.Seq)
	}
	f.stats.Accepted++
	if seen.After(n.lastSeen) {
		n.lastSeen = seen
	}
	if m.header.Time.After(n.newest) {
		n.newest = m.header.Time
	}
	n.setInterval(m.header)
	return f.apply(n, token, m)
}

// countReject adds one to a counter of f.stats.
func (f *Fleet) countReject(counter *uint64) {
	f.mu.Lock()
	*counter++
	f.mu.Unlock()
}

// takes reports whether the fleet takes messages of token from node: the
// kinds it was made for, of the nodes it shows. Events never.
func (f *Fleet) takes(node, token string) bool {
	switch token {
	case publish.TokenEvents:
		return false
	case publish.TokenSummary:
		if !f.kinds.summaries {
			return false
		}
	default:
		if !f.kinds.detail {
			return false
		}
	}
	if f.kinds.nodeGlob == "" {
		return true
	}
	ok, _ := path.Match(f.kinds.nodeGlob, node)
	return ok
}

// splitKey splits <node>.<token>[.p<N>], or partitioned.<p>.<node>._summary,
// and checks the tokens.
func splitKey(key string) (nodeName, token string, err error) {
	toks := strings.Split(key, ".")
	if len(toks) == 4 && toks[0] == PartitionedToken {
		if p, err := strconv.Atoi(toks[1]); err != nil || p < 0 || toks[3] != publish.TokenSummary {
			return "", "", fmt.Errorf("subject %.300q: want %s.<partition>.<node>.%s", key, PartitionedToken, publish.TokenSummary)
		}
		toks = toks[2:]
	}
	if len(toks) == 3 {
		if n, err := strconv.Atoi(strings.TrimPrefix(toks[2], "p")); err != nil || n < 1 || !strings.HasPrefix(toks[2], "p") {
			return "", "", fmt.Errorf("subject %.300q: want <prefix>.<node>.<token>", key)
		}
		toks = toks[:2]
	}
	if len(toks) != 2 || toks[0] == "" || toks[1] == "" {
		return "", "", fmt.Errorf("subject %.300q: want <prefix>.<node>.<token>", key)
	}
	if len(toks[0]) > MaxTokenBytes || len(toks[1]) > MaxTokenBytes {
		return "", "", fmt.Errorf("subject %.300q: token over %d bytes", key, MaxTokenBytes)
	}
	return toks[0], toks[1], nil
}

// checkHeader rejects, and counts, a message from the future, with an
// absurd interval or with impossible parts.
func (f *Fleet) checkHeader(h *publish.Header) error {
	if limit := f.now().Add(MaxClockSkew); h.Time.After(limit) {
		f.stats.RejectedTime++
		return fmt.Errorf("time %s is beyond now + %v", h.Time.Format(time.RFC3339), MaxClockSkew)
	}
	if h.Interval != 0 && (h.Interval < MinInterval || h.Interval > MaxInterval) {
		f.stats.RejectedInterval++
		return fmt.Errorf("interval %d ns outside [%v, %v]", int64(h.Interval), MinInterval, MaxInterval)
	}
	if h.Parts == 0 && h.Part <= 1 {
		// A publisher without parts.
		h.Part, h.Parts = 1, 1
	}
	if h.Parts < 1 || h.Parts > MaxParts || h.Part < 1 || h.Part > h.Parts {
		f.stats.RejectedPart++
		return fmt.Errorf("part %d of %d (at most %d parts)", h.Part, h.Parts, MaxParts)
	}
	return nil
}

// nodeFor returns the node named name, made for h when new unless the
// fleet has MaxNodes already. It returns nil for a message older than the
// position of a node that expired.
func (f *Fleet) nodeFor(name string, h *publish.Header) (*node, error) {
	if n, ok := f.nodes[name]; ok {
		return n, nil
	}
	if len(f.nodes) >= MaxNodes {
		f.stats.DroppedNodes++
		return nil, fmt.Errorf("node %.300q dropped: the view has %d nodes already", name, MaxNodes)
	}
	n := &node{position: position{instance: h.Instance, seq: h.Seq}, gadgets: make(map[string]*slot)}
	if pos, ok := f.expired[name]; ok {
		n.position = pos
		if !f.order(n, h) {
			return nil, nil
		}
		delete(f.expired, name)
	}
	f.nodes[name] = n
	return n, nil
}

// rememberExpired keeps the position of an expired node, forgetting the
// oldest beyond MaxNodes.
func (f *Fleet) rememberExpired(name string, pos position) {
	f.expired[name] = pos
	f.expiredOrder = append(f.expiredOrder, name)
	for len(f.expired) > MaxNodes {
		delete(f.expired, f.expiredOrder[0])
		f.expiredOrder = f.expiredOrder[1:]
	}
	if len(f.expiredOrder) > 2*MaxNodes {
		// Names that came back are still listed: keep those remembered.
		kept := f.expiredOrder[:0]
		for _, name := range f.expiredOrder {
			if _, ok := f.expired[name]; ok {
				kept = append(kept, name)
			}
		}
		f.expiredOrder = slices.Clip(kept)
	}
}

// order reports whether h is current for n: of its instance and not of an
// older interval, or of a new instance, whose state replaces the old
// one's. Times are never compared: publishers' clocks are not trusted.
func (f *Fleet) order(n *node, h *publish.Header) bool {
	switch {
	case h.Instance == n.instance:
		if h.Seq < n.seq {
			return false
		}
		n.seq = h.Seq
		return true
	case slices.Contains(n.retired, h.Instance):
		return false
	}
	// The tracker restarted: its old state is gone.
	n.retired = append(n.retired, n.instance)
	if len(n.retired) > retiredInstances {
		n.retired = slices.Delete(n.retired, 0, 1)
	}
	n.instance, n.seq = h.Instance, h.Seq
	for token, s := range n.gadgets {
		f.dropSlot(s)
		delete(n.gadgets, token)
	}
	if n.unowned != nil {
		f.dropSlot(n.unowned)
		n.unowned = nil
	}
	n.info = nil
	n.summary = nil
	return true
}

// setInterval takes the node's interval from h: its interval, else its
// elapsed time, bounded.
func (n *node) setInterval(h *publish.Header) {
	switch {
	case h.Interval > 0:
		n.interval = h.Interval
	case h.Elapsed > 0:
		n.interval = boundInterval(h.Elapsed)
	}
}

// apply takes an accepted message into the node's state.
func (f *Fleet) apply(n *node, token string, m message) error {
	h := m.header
	switch {
	case m.gadget != nil:
		s, ok := n.gadgets[token]
		if !ok {
			if len(n.gadgets) >= MaxGadgetsPerNode {
				f.stats.DroppedGadgets++
				return errors.New("gadget dropped: the node has too many")
			}
			s = new(slot)
			n.gadgets[token] = s
		}
		g := m.gadget
		f.stats.capIdentity(&g.Gadget)
		f.stats.capProcess(&g.Owner)
		f.addPart(s, h, g.Gadget, g.Owner, g.Totals, g.Programs)
	case m.unowned != nil:
		if n.unowned == nil {
			n.unowned = new(slot)
		}
		f.addPart(n.unowned, h, publish.GadgetIdentity{}, state.ProcessRef{}, m.unowned.Totals, m.unowned.Programs)
	case m.info != nil:
		f.stats.capNode(m.info)
		n.info = m.info
		f.closeInterval(n, h.Seq)
	case m.summary != nil:
		f.applySummary(n, m.summary)
	}
	return nil
}

// closeInterval ends interval seq on the node message, which the tracker
// publishes after the interval's other messages: gadgets not published in
// it have ended, and parts still missing are lost.
func (f *Fleet) closeInterval(n *node, seq uint64) {
	for token, s := range n.gadgets {
		if !f.closeSlot(s, seq) {
			delete(n.gadgets, token)
		}
	}
	if n.unowned != nil && !f.closeSlot(n.unowned, seq) {
		n.unowned = nil
	}
}

// Expire drops the nodes silent, by the consumer's clock, for more than
// ExpiryIntervals of their bounded intervals, and returns their names.
func (f *Fleet) Expire() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	var gone []string
	for name, n := range f.nodes {
		iv := n.interval
		if iv <= 0 {
			iv = f.defaultInterval
		}
		if now.Sub(n.lastSeen) > ExpiryIntervals*iv {
			for _, s := range n.gadgets {
				f.dropSlot(s)
			}
			if n.unowned != nil {
				f.dropSlot(n.unowned)
			}
			f.dropRollup(n)
			delete(f.nodes, name)
			f.rememberExpired(name, n.position)
			f.stats.ExpiredNodes++
			gone = append(gone, name)
		}
	}
	slices.Sort(gone)
	return gone
}

// matching returns the nodes whose name matches glob (all for ""), sorted.
// The caller holds f.mu.
func (f *Fleet) matching(glob string) []string {
	var names []string
	for name := range f.nodes {
		if glob != "" {
			if ok, _ := path.Match(glob, name); !ok {
				continue
			}
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}
