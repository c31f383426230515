package publish

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bpfstats/tracker/internal/state"
	"github.com/nats-io/nats.go"
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
	// subject token with NodeToken.
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
	// bucket KVBucket (key <node>.<gadgetID>, <node>._unowned,
	// <node>._node) so that a consumer starting later sees the whole fleet
	// at once. The server must have JetStream enabled.
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
// EventSink. While the connection is down, interval publishes are skipped
// (and counted) rather than buffered: the next interval after reconnecting
// publishes the then current state. Events are buffered, up to the
// connection's reconnect buffer.
type NATSSink struct {
	nc     *nats.Conn
	opts   NATSOptions
	node   string
	prefix string
	log    zerolog.Logger
	closed chan struct{}

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
	kvFailing   bool
	// kvKeys are the gadget keys written in the previous interval.
	kvKeys map[string]struct{}
	// encBuf holds the encoded messages of the interval being published.
	encBuf bytes.Buffer

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
		opts:   opts,
		node:   node,
		prefix: opts.SubjectPrefix,
		log:    opts.Conn.Logger,
		closed: make(chan struct{}),
		kvKeys: make(map[string]struct{}),
	}
	var closeOnce sync.Once
	nc, err := connect(opts.Conn, connHooks{
		asyncError: func() { s.asyncError.Add(1) },
		closed:     func() { closeOnce.Do(func() { close(s.closed) }) },
	})
	if err != nil {
		return nil, err
	}
	s.nc = nc
	return s, nil
}

// Node returns the node's subject token.
func (s *NATSSink) Node() string { return s.node }

// Subject returns <prefix>.<node>.<token>, where token is a gadget ID or
// one of the reserved tokens.
func (s *NATSSink) Subject(token string) string {
	switch token {
	case TokenUnowned, TokenEvents, TokenNode:
	default:
		token = gadgetToken(token)
	}
	return s.prefix + "." + s.node + "." + token
}

// Connected tells whether the connection is up now.
func (s *NATSSink) Connected() bool { return s.nc.IsConnected() }

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
	if s.nc != nil {
		st.Reconnects = s.nc.Stats().Reconnects
	}
	return st
}

type outMsg struct {
	subject string
	// key is the message's key-value key.
	key  string
	data []byte
}

// Publish sends the snapshot's gadget, _unowned and _node messages, in that
// order. While disconnected it returns nil without publishing. Errors are
// counted in PublishErrors and returned.
func (s *NATSSink) Publish(snap *state.Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.nc.IsConnected() {
		s.skipped.Add(1)
		if !s.wasSkipping {
			s.wasSkipping = true
			s.log.Warn().Str("status", s.nc.Status().String()).
				Msg("NATS not connected, skipping interval publishes until reconnected")
		}
		return nil
	}
	if s.wasSkipping {
		s.wasSkipping = false
		s.log.Info().Uint64("skipped", s.skipped.Load()).Msg("NATS connected, publishing intervals again")
	}
	s.seq++
	msgs, err := s.intervalMessages(snap)
	if err != nil {
		s.pubErrors.Add(1)
		return err
	}
	var errs []error
	for _, m := range msgs {
		if err := s.nc.Publish(m.subject, m.data); err != nil {
			s.pubErrors.Add(1)
			errs = append(errs, fmt.Errorf("publishing %s: %w", m.subject, err))
			continue
		}
		s.published.Add(1)
	}
	if s.opts.KV {
		if err := s.putKV(msgs); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// PublishEvent sends ev on <prefix>.<node>._events at once. While
// reconnecting, events are buffered up to the reconnect buffer's size.
func (s *NATSSink) PublishEvent(ev *state.Event) error {
	data, err := json.Marshal(EventMessage{Schema: SchemaVersion, Type: TypeEvent, Node: s.node, Event: *ev})
	if err != nil {
		s.pubErrors.Add(1)
		return fmt.Errorf("encoding event: %w", err)
	}
	subject := s.Subject(TokenEvents)
	if err := s.nc.Publish(subject, data); err != nil {
		s.pubErrors.Add(1)
		return fmt.Errorf("publishing %s: %w", subject, err)
	}
	s.published.Add(1)
	return nil
}

// intervalMessages encodes one snapshot: a message per gadget, then
// _unowned, then _node. The caller holds s.mu.
func (s *NATSSink) intervalMessages(snap *state.Snapshot) ([]outMsg, error) {
	h := Header{
		Schema:   SchemaVersion,
		Node:     s.node,
		Seq:      s.seq,
		Time:     snap.Time,
		Elapsed:  snap.Elapsed,
		Interval: s.opts.Interval,
	}
	byGadget, unowned := s.programsByGadget(snap)
	e := s.newIntervalEncoder(len(snap.Gadgets) + 2)
	h.Type = TypeGadget
	for _, g := range snap.Gadgets {
		if err := e.add(g.GadgetID, gadgetMessage(h, snap, g, byGadget[g.GadgetID])); err != nil {
			return nil, err
		}
	}
	h.Type = TypeUnowned
	msg := UnownedMessage{Header: h, Totals: gadgetTotals(snap.Unowned, unowned), Programs: unowned}
	if err := e.add(TokenUnowned, msg); err != nil {
		return nil, err
	}
	h.Type = TypeNode
	if err := e.add(TokenNode, s.nodeMessage(h, snap, len(unowned))); err != nil {
		return nil, err
	}
	return e.msgs, nil
}

// programsByGadget splits the snapshot's program rows, named after this
// node, into those of each gadget and the unowned ones; neither is nil.
func (s *NATSSink) programsByGadget(snap *state.Snapshot) (map[string][]state.Row, []state.Row) {
	byGadget := make(map[string][]state.Row, len(snap.Gadgets))
	for _, g := range snap.Gadgets {
		byGadget[g.GadgetID] = make([]state.Row, 0, g.ProgramCount)
	}
	unowned := make([]state.Row, 0, snap.Unowned.ProgramCount)
	for _, r := range snap.Programs {
		r.NodeName = s.node
		if r.GadgetID == "" {
			unowned = append(unowned, r)
			continue
		}
		byGadget[r.GadgetID] = append(byGadget[r.GadgetID], r)
	}
	return byGadget, unowned
}

// gadgetMessage is the message of gadget row g with its program rows.
func gadgetMessage(h Header, snap *state.Snapshot, g state.Row, progs []state.Row) GadgetMessage {
	info, ok := snap.GadgetInfo[g.GadgetID]
	if !ok {
		info = state.Gadget{ID: g.GadgetID, Name: g.GadgetName, Image: g.GadgetImage}
		if g.Loader != nil {
			info.Owner = *g.Loader
		}
	}
	if progs == nil {
		progs = []state.Row{}
	}
	return GadgetMessage{
		Header:   h,
		Gadget:   GadgetIdentity{ID: g.GadgetID, Name: g.GadgetName, Image: g.GadgetImage},
		Owner:    info.Owner,
		Totals:   gadgetTotals(g, progs),
		Programs: progs,
	}
}

// nodeMessage is the _node message closing the interval.
func (s *NATSSink) nodeMessage(h Header, snap *state.Snapshot, unowned int) NodeMessage {
	c := snap.Counters
	return NodeMessage{
		Header:  h,
		Version: s.opts.Version,
		Kernel:  s.opts.Kernel,
		Source:  snap.Source,
		Counts: NodeCounts{
			Programs:      len(snap.Programs),
			Gadgets:       len(snap.Gadgets),
			Unowned:       unowned,
			EventsLoad:    c.EventsLoad,
			EventsRelease: c.EventsRelease,
			EventsLost:    c.EventsLost,
		},
		Resyncs:       c.Resyncs,
		Sweeps:        c.Sweeps,
		SweepDuration: snap.SweepDuration,
		Publisher:     s.Stats(),
	}
}

// intervalEncoder encodes the messages of one interval into the sink's
// buffer: at thousands of programs the _unowned message alone is
// megabytes, and growing a fresh buffer each interval dominated the
// publish. nats.Conn.Publish and the key-value put copy the bytes.
type intervalEncoder struct {
	s    *NATSSink
	enc  *json.Encoder
	msgs []outMsg
}

// newIntervalEncoder empties the sink's buffer. The caller holds s.mu.
func (s *NATSSink) newIntervalEncoder(n int) *intervalEncoder {
	s.encBuf.Reset()
	return &intervalEncoder{s: s, enc: json.NewEncoder(&s.encBuf), msgs: make([]outMsg, 0, n)}
}

// add encodes v as the message for token (a gadget ID or a reserved token).
func (e *intervalEncoder) add(token string, v any) error {
	buf := &e.s.encBuf
	start := buf.Len()
	if err := e.enc.Encode(v); err != nil {
		return fmt.Errorf("encoding %s message: %w", token, err)
	}
	// Encode ends with a newline that Marshal does not write.
	end := buf.Len() - 1
	e.msgs = append(e.msgs, outMsg{subject: e.s.Subject(token), key: kvKey(e.s.node, token), data: buf.Bytes()[start:end:end]})
	return nil
}

// gadgetTotals takes the totals from the gadget row, which the inventory
// computed over distinct maps, and the program count from the rows when
// the gadget row lacks it.
func gadgetTotals(g state.Row, progs []state.Row) MessageTotals {
	t := MessageTotals(g.Totals)
	if t.ProgramCount == 0 {
		t.ProgramCount = len(progs)
	}
	return t
}

// Close drains the connection, waiting at most the drain timeout, then
// closes it. It is idempotent.
func (s *NATSSink) Close() error {
	s.closeOnce.Do(func() {
		if !s.nc.IsConnected() {
			s.nc.Close()
			return
		}
		if err := s.nc.Drain(); err != nil {
			s.nc.Close()
			return
		}
		select {
		case <-s.closed:
		case <-time.After(s.opts.Conn.DrainTimeout + 500*time.Millisecond):
			s.nc.Close()
		}
	})
	return nil
}
