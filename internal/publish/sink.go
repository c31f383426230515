package publish

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bpfstats/tracker/internal/state"
	"github.com/nats-io/nats.go"
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
	// CPUs is the node's number of online CPUs, reported on _node and
	// _summary; default runtime.NumCPU(), as state.Options.CPUs.
	CPUs int
	// Interval is the tracker's sweep interval, carried in every message
	// so that consumers can tell a silent node from a slow one.
	Interval time.Duration

	// CompactRows sends a gadget's (and _unowned's) full program rows
	// only when the gadget is new, a row's slow fields (name, tag, type,
	// maps, loader, holders, labels) or the program set changed, after a
	// reconnect, and once every FullEvery intervals; the other intervals'
	// messages have compact rows (see CompactRow). Off, every message has
	// full rows, as bpfstats/v1 always had.
	CompactRows bool
	// FullEvery is how many intervals apart a gadget's full rows go out at
	// least (CompactRows) and an unchanged key-value entry is rewritten
	// (KV); default DefaultFullEvery.
	FullEvery int
	// SummaryOnly publishes only _node and _summary, not the gadget and
	// _unowned messages: for nodes only fleet consumers follow (the
	// simulator's largest fleets).
	SummaryOnly bool
	// MaxMessageBytes is the size a message's program rows (a summary's
	// gadgets) are split at: each part is at most the smaller of this and
	// the server's max_payload, but for a row too large for it alone,
	// which gets a part of its own of up to max_payload. Smaller parts
	// keep the tracker's and nats.go's buffers small (each grows to the
	// largest message), most of all against the embedded server's 8 MiB
	// max_payload. Default DefaultMaxMessageBytes.
	MaxMessageBytes int

	// KV also keeps the latest full message of every gadget and
	// _unowned, and the latest summary, in the JetStream key-value bucket
	// KVBucket (key <node>.<gadget token>, <node>._unowned,
	// <node>._summary, with ".p<N>" appended for part N > 1) so that a
	// consumer starting later sees the whole fleet at once. A gadget's
	// entry is written when its full message changed (see CompactRows),
	// the summary every interval, asynchronously. The server must have
	// JetStream enabled.
	KV bool
	// KVBucket defaults to DefaultKVBucket.
	KVBucket string
	// KVTTL is how long a key lives without being rewritten; default
	// FullEvery plus three intervals (of 10s without an interval).
	KVTTL time.Duration
	// KVTimeout bounds opening the bucket and each write's
	// acknowledgement (default 2s).
	KVTimeout time.Duration
	// KVMaxPending bounds the key-value writes in flight (default 256); a
	// write beyond it is skipped, counted and retried the next interval.
	KVMaxPending int

	// SharedConn, when set, is used instead of connecting with Conn: many
	// sinks (the simulator's nodes) share it. The sink neither replaces
	// nor closes it.
	SharedConn *nats.Conn
	// Buffers, when set, are the encoding buffers, shared by sinks that
	// publish from one goroutine; default the sink's own.
	Buffers *EncodeBuffers
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
	kvWrites   atomic.Uint64
	kvSkipped  atomic.Uint64
	kvErrors   atomic.Uint64
	// kvFailedMu guards kvFailed, the keys whose asynchronous write
	// failed since the last interval.
	kvFailedMu sync.Mutex
	kvFailed   map[string]struct{}
	// kvWarned is when a failed write was last logged.
	kvWarned atomic.Int64

	mu sync.Mutex
	// seq numbers the published intervals.
	seq uint64
	// wasSkipping is true while intervals are being skipped, to log once.
	wasSkipping bool
	// lastConn and lastReconnects are the connection of the previous
	// interval and its reconnects: a change resends everything.
	lastConn       *sinkConn
	lastReconnects uint64
	// kv writes to the bucket, nil until it is open.
	kv        *kvWriter
	kvFailing bool
	// tokens are the gadgets (and _unowned, _summary) being tracked.
	tokens map[string]*tokenState
	bufs   *EncodeBuffers
	// codes are the programs' kept row encodings (see rowcache.go).
	codes rowCodes

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
	if opts.CPUs <= 0 {
		opts.CPUs = runtime.NumCPU()
	}
	if opts.FullEvery <= 0 {
		opts.FullEvery = DefaultFullEvery
	}
	if opts.KVTTL <= 0 {
		iv := opts.Interval
		if iv <= 0 {
			iv = 10 * time.Second
		}
		opts.KVTTL = max(time.Duration(opts.FullEvery+3)*iv, time.Second)
	}
	if opts.KVTimeout <= 0 {
		opts.KVTimeout = 2 * time.Second
	}
	if opts.KVMaxPending <= 0 {
		opts.KVMaxPending = 256
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
		tokens:   make(map[string]*tokenState),
		kvFailed: make(map[string]struct{}),
		bufs:     opts.Buffers,
	}
	if s.bufs == nil {
		s.bufs = &EncodeBuffers{}
	}
	var c *sinkConn
	if opts.SharedConn != nil {
		c = &sinkConn{nc: opts.SharedConn, closed: make(chan struct{}), shared: true}
	} else {
		var err error
		if c, err = s.dial(); err != nil {
			return nil, err
		}
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
// (TokenUnowned, TokenEvents, TokenNode, TokenSummary); any other token
// is taken for a gadget ID, see GadgetSubject.
func (s *NATSSink) Subject(token string) string {
	switch token {
	case TokenUnowned, TokenEvents, TokenNode, TokenSummary:
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
		KVWrites:         s.kvWrites.Load(),
		KVSkipped:        s.kvSkipped.Load(),
		KVErrors:         s.kvErrors.Load(),
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
	// tok is the subject's last token; the message is part of parts.
	tok         string
	part, parts int
	// kv marks a message to write to the key-value bucket.
	kv   bool
	data []byte
}

// Publish sends the snapshot's gadget, _unowned, _node and _summary
// messages, in that order, gadget, _unowned and _summary messages in as
// many parts as the server's max_payload requires. While disconnected it
// returns nil without publishing. Errors are counted in PublishErrors and
// returned; one message failing does not keep the others from being
// sent. Key-value writes are sent asynchronously: their failures are
// counted (PublisherStats.KVErrors) and logged, not returned.
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
	resync := s.connChanged(c)
	if s.opts.KV {
		opened, err := s.openKV(c)
		if err != nil {
			errs = append(errs, err)
		}
		resync = resync || opened
		s.takeFailedKeys()
	}
	s.bufs.mu.Lock()
	defer s.bufs.mu.Unlock()
	publish := func(m *outMsg) {
		if err := c.nc.Publish(m.subject, m.data); err != nil {
			s.pubErrors.Add(1)
			errs = append(errs, fmt.Errorf("publishing %s: %w", m.subject, err))
			return
		}
		s.published.Add(1)
	}
	// Without key-value writes, which take every message after, each is
	// published as it is encoded (nats.Conn.Publish copies it).
	emit := publish
	if s.kv != nil {
		emit = nil
	}
	// The server may have changed with a reconnect: read its limit now.
	msgs, err := s.encodeInterval(snap, c.nc.MaxPayload(), resync, emit)
	if err != nil {
		errs = append(errs, err)
	}
	for i := range msgs {
		publish(&msgs[i])
	}
	if s.kv != nil {
		s.writeKV(msgs)
	}
	if s.tracking() {
		s.forgetGone()
	}
	return errors.Join(errs...)
}

// connChanged tells whether c is not the connection of the previous
// interval or reconnected since: consumers may have missed messages, so
// everything is sent in full again.
func (s *NATSSink) connChanged(c *sinkConn) bool {
	rc := c.nc.Stats().Reconnects
	changed := c != s.lastConn || rc != s.lastReconnects
	s.lastConn, s.lastReconnects = c, rc
	return changed
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
		if c.shared {
			return
		}
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
