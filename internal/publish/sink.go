package publish

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bpfstats/tracker/internal/state"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

var (
	_ Sink      = (*NATSSink)(nil)
	_ EventSink = (*NATSSink)(nil)
)

// NATSOptions configures a NATSSink.
type NATSOptions struct {
	// Conn says how to reach the servers; Conn.Name defaults to
	// "bpfstats-tracker <node>".
	Conn ConnOptions
	// Node names this machine (e.g. the hostname); it is made into one
	// subject token with NodeToken, and published as a label on _node.
	Node string
	// SubjectPrefix defaults to DefaultSubjectPrefix.
	SubjectPrefix string
	// Version is the tracker version, reported on _node.
	Version string
	// Kernel is the uname release reported on _node (loader.KernelRelease).
	Kernel string
	// Interval is the tracker's sweep interval, carried in every message
	// so that consumers can tell a silent node from a slow one.
	Interval time.Duration

	// KV also puts every interval message into the JetStream key-value
	// bucket KVBucket (key <node>.<gadget token>, <node>._unowned,
	// <node>._node, with ".p<N>" appended for part N > 1) so that a
	// consumer starting later sees the whole fleet at once. The server
	// must have JetStream enabled.
	KV bool
	// KVBucket defaults to DefaultKVBucket.
	KVBucket string
	// KVTTL is how long a key lives without being rewritten; default three
	// intervals (30s without an interval).
	KVTTL time.Duration
	// KVTimeout bounds the key-value writes of one interval (default 2s).
	KVTimeout time.Duration
}

// NATSSink publishes snapshots and events to NATS. It implements Sink and
// EventSink. Every message fits the server's max_payload: program rows are
// split into parts. While the connection is down, interval publishes are
// skipped (and counted) rather than buffered: the next interval after
// reconnecting publishes the then current state. Events are buffered, up
// to the connection's reconnect buffer. A connection nats.go closes for
// good (after a server error) is replaced by a new one.
type NATSSink struct {
	opts   NATSOptions
	node   string
	prefix string
	// instance is the Header.Instance of this sink's messages.
	instance string
	log      zerolog.Logger

	// conn is the current connection; see conn.go for its replacement.
	conn atomic.Pointer[sinkConn]
	// connMu guards replacing conn, closing, redialing,
	// retiredReconnects and the start of redial goroutines.
	connMu    sync.Mutex
	closing   bool
	redialing bool
	// done is closed by Close, ending a redial.
	done   chan struct{}
	redial sync.WaitGroup
	// retiredReconnects are the reconnects of replaced connections plus
	// the replacements.
	retiredReconnects uint64

	published  atomic.Uint64
	skipped    atomic.Uint64
	pubErrors  atomic.Uint64
	asyncError atomic.Uint64

	mu sync.Mutex
	// seq numbers the published intervals.
	seq uint64
	// wasSkipping is true while intervals are being skipped, to log once.
	wasSkipping bool
	kv          jetstream.KeyValue
	// kvConn is the connection kv was opened on.
	kvConn    *sinkConn
	kvFailing bool
	// kvKeys are the keys written in the previous interval.
	kvKeys map[string]struct{}
	// encBuf holds the encoded messages of the interval being published,
	// rowBuf the encoded program rows of one message.
	encBuf, rowBuf bytes.Buffer

	closeOnce sync.Once
}

// NewNATSSink validates opts and connects. An unreachable server is not an
// error (see ConnectNATS); rejected credentials, bad URLs and TLS errors
// are.
func NewNATSSink(opts NATSOptions) (*NATSSink, error) {
	if opts.SubjectPrefix == "" {
		opts.SubjectPrefix = DefaultSubjectPrefix
	}
	if err := ValidateSubjectPrefix(opts.SubjectPrefix); err != nil {
		return nil, err
	}
	if opts.Node == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node name: %w", err)
		}
		opts.Node = host
	}
	if opts.KVBucket == "" {
		opts.KVBucket = DefaultKVBucket
	}
	if opts.KVTTL <= 0 {
		opts.KVTTL = 30 * time.Second
		if opts.Interval > 0 {
			opts.KVTTL = max(3*opts.Interval, time.Second)
		}
	}
	if opts.KVTimeout <= 0 {
		opts.KVTimeout = 2 * time.Second
	}
	opts.Conn.setDefaults()
	node := NodeToken(opts.Node)
	if opts.Conn.Name == "" {
		opts.Conn.Name = "bpfstats-tracker " + node
	}
	s := &NATSSink{
		opts:     opts,
		node:     node,
		prefix:   opts.SubjectPrefix,
		instance: newInstanceID(),
		log:      opts.Conn.Logger,
		done:     make(chan struct{}),
		kvKeys:   make(map[string]struct{}),
	}
	c, err := s.dial()
	if err != nil {
		return nil, err
	}
	s.connMu.Lock()
	s.install(c)
	s.connMu.Unlock()
	return s, nil
}

// newInstanceID is a random Header.Instance: 16 hex digits.
func newInstanceID() string {
	var b [8]byte
	// crypto/rand.Read does not fail.
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Instance returns the Header.Instance of this sink's messages.
func (s *NATSSink) Instance() string { return s.instance }

// Node returns the node's subject token.
func (s *NATSSink) Node() string { return s.node }

// Subject returns <prefix>.<node>.<token> for one of the reserved tokens
// (TokenUnowned, TokenEvents, TokenNode); any other token is taken for a
// gadget ID, see GadgetSubject.
func (s *NATSSink) Subject(token string) string {
	switch token {
	case TokenUnowned, TokenEvents, TokenNode:
		return s.tokenSubject(token)
	}
	return s.GadgetSubject(token)
}

// GadgetSubject returns the subject of the gadget with ID id: the ID is
// the last token when it is plain, else its hash (see NodeToken); an ID
// that looks like a reserved token gets a 'g' in front.
func (s *NATSSink) GadgetSubject(id string) string {
	return s.tokenSubject(gadgetToken(id))
}

// tokenSubject returns <prefix>.<node>.<tok>.
func (s *NATSSink) tokenSubject(tok string) string {
	return s.prefix + "." + s.node + "." + tok
}

// Connected tells whether the connection is up now.
func (s *NATSSink) Connected() bool { return s.conn.Load().nc.IsConnected() }

// PublishErrors counts failed publishes, failed key-value writes and
// asynchronous errors the server reported (e.g. permission violations).
func (s *NATSSink) PublishErrors() uint64 {
	return s.pubErrors.Load() + s.asyncError.Load()
}

// Stats returns the sink's counters.
func (s *NATSSink) Stats() PublisherStats {
	st := PublisherStats{
		Published:        s.published.Load(),
		SkippedIntervals: s.skipped.Load(),
		PublishErrors:    s.PublishErrors(),
	}
	s.connMu.Lock()
	st.Reconnects = s.retiredReconnects
	if c := s.conn.Load(); c != nil {
		st.Reconnects += c.nc.Stats().Reconnects
	}
	s.connMu.Unlock()
	return st
}

type outMsg struct {
	subject string
	// key is the message's key-value key.
	key  string
	data []byte
}

// Publish sends the snapshot's gadget, _unowned and _node messages, in that
// order, gadget and _unowned messages in as many parts as the server's
// max_payload requires. While disconnected it returns nil without
// publishing. Errors are counted in PublishErrors and returned; one
// message failing does not keep the others from being sent.
func (s *NATSSink) Publish(snap *state.Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.conn.Load()
	if !c.nc.IsConnected() {
		s.skipped.Add(1)
		if !s.wasSkipping {
			s.wasSkipping = true
			s.log.Warn().Str("status", c.nc.Status().String()).
				Msg("NATS not connected, skipping interval publishes until reconnected")
		}
		return nil
	}
	if s.wasSkipping {
		s.wasSkipping = false
		s.log.Info().Uint64("skipped", s.skipped.Load()).Msg("NATS connected, publishing intervals again")
	}
	s.seq++
	var errs []error
	// The server may have changed with a reconnect: read its limit now.
	msgs, err := s.intervalMessages(snap, c.nc.MaxPayload())
	if err != nil {
		errs = append(errs, err)
	}
	for _, m := range msgs {
		if err := c.nc.Publish(m.subject, m.data); err != nil {
			s.pubErrors.Add(1)
			errs = append(errs, fmt.Errorf("publishing %s: %w", m.subject, err))
			continue
		}
		s.published.Add(1)
	}
	if s.opts.KV {
		if err := s.putKV(c, msgs); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// PublishEvent sends ev on <prefix>.<node>._events at once. While
// reconnecting, events are buffered up to the reconnect buffer's size.
func (s *NATSSink) PublishEvent(ev *state.Event) error {
	data, err := json.Marshal(EventMessage{Schema: SchemaVersion, Type: TypeEvent, Node: s.node, Event: cleanEvent(ev)})
	if err != nil {
		s.pubErrors.Add(1)
		return fmt.Errorf("encoding event: %w", err)
	}
	subject := s.Subject(TokenEvents)
	if err := s.conn.Load().nc.Publish(subject, data); err != nil {
		s.pubErrors.Add(1)
		return fmt.Errorf("publishing %s: %w", subject, err)
	}
	s.published.Add(1)
	return nil
}

// intervalMessages encodes one snapshot: the messages (parts) of every
// gadget, then _unowned, then _node, each at most limit bytes. A message
// or row that cannot fit is left out, counted in PublishErrors and
// reported in the error; the other messages are still returned. The
// caller holds s.mu.
func (s *NATSSink) intervalMessages(snap *state.Snapshot, limit int64) ([]outMsg, error) {
	h := Header{
		Schema:   SchemaVersion,
		Node:     s.node,
		Seq:      s.seq,
		Time:     snap.Time,
		Elapsed:  snap.Elapsed,
		Interval: s.opts.Interval,
		Instance: s.instance,
	}
	byGadget, unowned := s.programsByGadget(snap)
	e := s.newIntervalEncoder(len(snap.Gadgets)+2, limit)
	var errs []error
	for _, g := range snap.Gadgets {
		msg := gadgetMessage(h, snap, g, len(byGadget[g.GadgetID]))
		msg.Type = TypeGadget
		if err := e.addRows(gadgetToken(g.GadgetID), &msg.Header, &msg, byGadget[g.GadgetID]); err != nil {
			errs = append(errs, err)
		}
	}
	msg := UnownedMessage{Header: h, Totals: gadgetTotals(snap.Unowned, len(unowned)), Programs: []state.Row{}}
	msg.Type = TypeUnowned
	if err := e.addRows(TokenUnowned, &msg.Header, &msg, unowned); err != nil {
		errs = append(errs, err)
	}
	h.Type = TypeNode
	if err := e.add(TokenNode, s.nodeMessage(h, snap, len(unowned))); err != nil {
		errs = append(errs, err)
	}
	if e.dropped > 0 {
		s.pubErrors.Add(e.dropped)
		errs = append(errs, fmt.Errorf("%d program rows or messages left out: larger than the server's max_payload of %d bytes", e.dropped, e.limit))
	}
	return e.msgs, errors.Join(errs...)
}

// programsByGadget splits the snapshot's program rows, named after this
// node and with clean labels, into those of each gadget and the unowned
// ones.
func (s *NATSSink) programsByGadget(snap *state.Snapshot) (map[string][]state.Row, []state.Row) {
	byGadget := make(map[string][]state.Row, len(snap.Gadgets))
	for _, g := range snap.Gadgets {
		byGadget[g.GadgetID] = make([]state.Row, 0, g.ProgramCount)
	}
	unowned := make([]state.Row, 0, snap.Unowned.ProgramCount)
	for _, r := range snap.Programs {
		r.NodeName = s.node
		if r.GadgetID == "" {
			cleanRow(&r)
			unowned = append(unowned, r)
			continue
		}
		id := r.GadgetID
		cleanRow(&r)
		byGadget[id] = append(byGadget[id], r)
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

// nodeMessage is the _node message closing the interval.
func (s *NATSSink) nodeMessage(h Header, snap *state.Snapshot, unowned int) NodeMessage {
	c := snap.Counters
	return NodeMessage{
		Header:   h,
		NodeName: CleanLabel(s.opts.Node),
		Version:  CleanLabel(s.opts.Version),
		Kernel:   CleanLabel(s.opts.Kernel),
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
		},
		Resyncs:       c.Resyncs,
		Sweeps:        c.Sweeps,
		SweepDuration: snap.SweepDuration,
		Publisher:     s.Stats(),
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

// Close stops replacing closed connections, drains the connection,
// waiting at most the drain timeout, then closes it. It is idempotent.
func (s *NATSSink) Close() error {
	s.closeOnce.Do(func() {
		s.connMu.Lock()
		s.closing = true
		close(s.done)
		s.connMu.Unlock()
		s.redial.Wait()
		c := s.conn.Load()
		if !c.nc.IsConnected() {
			c.nc.Close()
			return
		}
		if err := c.nc.Drain(); err != nil {
			c.nc.Close()
			return
		}
		select {
		case <-c.closed:
		case <-time.After(s.opts.Conn.DrainTimeout + 500*time.Millisecond):
			c.nc.Close()
		}
	})
	return nil
}
