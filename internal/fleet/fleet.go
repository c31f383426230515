// Package fleet reads the trackers' NATS messages into the latest state of every node: the "tracker top" view.
//
// It consumes what internal/publish sends: it reads NATS and publishes
// nothing.
package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/bpfstats/tracker/internal/publish"
)

// ExpiryIntervals is how many of its intervals a node may stay silent
// before the fleet view drops it.
const ExpiryIntervals = 3

// Fleet is the latest state of every node publishing under a subject
// prefix, built from their interval messages. It is safe for concurrent
// use.
type Fleet struct {
	now             func() time.Time
	defaultInterval time.Duration

	mu    sync.Mutex
	nodes map[string]*node
	// invalid counts the messages Ingest rejected.
	invalid uint64
}

type node struct {
	// lastSeen is when a message of the node last arrived.
	lastSeen time.Time
	// interval is the node's publishing interval.
	interval time.Duration
	// latest is the newest snapshot time seen; older messages are stale.
	latest  time.Time
	info    *publish.NodeMessage
	gadgets map[string]*publish.GadgetMessage
	unowned *publish.UnownedMessage
}

// New returns an empty fleet. defaultInterval is assumed for nodes whose
// messages carry neither interval nor elapsed time; now is time.Now when
// nil.
func New(defaultInterval time.Duration, now func() time.Time) *Fleet {
	if now == nil {
		now = time.Now
	}
	if defaultInterval <= 0 {
		defaultInterval = 2 * time.Second
	}
	return &Fleet{now: now, defaultInterval: defaultInterval, nodes: make(map[string]*node)}
}

// Ingest applies one message as received now. Event messages only mark
// their node alive. Messages of another schema are an error.
func (f *Fleet) Ingest(data []byte) error {
	return f.ingestAt(data, f.now())
}

func (f *Fleet) ingestAt(data []byte, seen time.Time) error {
	m, err := decode(data)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		f.invalid++
		return fmt.Errorf("decoding fleet message: %w", err)
	}
	n, ok := f.nodes[m.node]
	if !ok {
		n = &node{gadgets: make(map[string]*publish.GadgetMessage)}
		f.nodes[m.node] = n
	}
	if seen.After(n.lastSeen) {
		n.lastSeen = seen
	}
	if m.header != nil {
		n.apply(m)
	}
	return nil
}

// message is one decoded message of a node. Interval messages set header
// and exactly one of gadget, unowned and info; an event sets none.
type message struct {
	node    string
	header  *publish.Header
	gadget  *publish.GadgetMessage
	unowned *publish.UnownedMessage
	info    *publish.NodeMessage
}

// decode checks a message's schema and node and decodes it by its type.
func decode(data []byte) (message, error) {
	var probe struct {
		Schema string `json:"schema"`
		Type   string `json:"type"`
		Node   string `json:"node"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return message{}, err
	}
	if probe.Schema != publish.SchemaVersion {
		return message{}, fmt.Errorf("schema %q, want %q", probe.Schema, publish.SchemaVersion)
	}
	if probe.Node == "" {
		return message{}, errors.New("no node")
	}
	m := message{node: probe.Node}
	var v any
	switch probe.Type {
	case publish.TypeGadget:
		m.gadget = new(publish.GadgetMessage)
		m.header, v = &m.gadget.Header, m.gadget
	case publish.TypeUnowned:
		m.unowned = new(publish.UnownedMessage)
		m.header, v = &m.unowned.Header, m.unowned
	case publish.TypeNode:
		m.info = new(publish.NodeMessage)
		m.header, v = &m.info.Header, m.info
	case publish.TypeEvent:
		return m, nil
	default:
		return message{}, fmt.Errorf("unknown message type %q", probe.Type)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return message{}, err
	}
	return m, nil
}

// apply takes an interval message into the node's state unless it is
// older than what the node shows.
func (n *node) apply(m message) {
	h := m.header
	if h.Interval > 0 {
		n.interval = h.Interval
	} else if h.Elapsed > 0 {
		n.interval = h.Elapsed
	}
	if h.Time.Before(n.latest) {
		// Older than what is shown (a key-value entry read after a live
		// message, or a late message): drop it.
		return
	}
	n.latest = h.Time
	switch {
	case m.gadget != nil:
		n.gadgets[m.gadget.Gadget.ID] = m.gadget
	case m.unowned != nil:
		n.unowned = m.unowned
	case m.info != nil:
		// The node message closes an interval: gadgets not published in
		// it have ended.
		n.info = m.info
		for id, g := range n.gadgets {
			if g.Seq != m.info.Seq {
				delete(n.gadgets, id)
			}
		}
		if n.unowned != nil && n.unowned.Seq != m.info.Seq {
			n.unowned = nil
		}
	}
}

// Expire drops the nodes silent for more than ExpiryIntervals of their
// intervals and returns their names.
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
			delete(f.nodes, name)
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
