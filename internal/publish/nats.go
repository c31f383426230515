package publish

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/state"
)

// Defaults of the NATS side.
const (
	// SchemaVersion is the "schema" field of every message.
	SchemaVersion = "bpfstats/v1"
	// DefaultSubjectPrefix is the first subject token(s) of every message.
	DefaultSubjectPrefix = "bpfstats"
	// DefaultKVBucket is the JetStream key-value bucket holding the latest
	// message of every gadget, node and unowned set.
	DefaultKVBucket = "bpfstats"
	// DefaultListen is where the embedded server listens and where
	// consumers look for it.
	DefaultListen = "127.0.0.1:4222"
)

// Subject tokens after <prefix>.<node> that are not gadget IDs.
const (
	TokenUnowned = "_unowned"
	TokenEvents  = "_events"
	TokenNode    = "_node"
)

// Message types, the "type" field of every message.
const (
	TypeGadget  = "gadget"
	TypeUnowned = "unowned"
	TypeNode    = "node"
	TypeEvent   = "event"
)

// Header is the part common to every interval message.
type Header struct {
	// Schema is SchemaVersion.
	Schema string `json:"schema"`
	// Type is one of TypeGadget, TypeUnowned, TypeNode, TypeEvent.
	Type string `json:"type"`
	// Node is the publishing node's subject token.
	Node string `json:"node"`
	// Seq numbers the publisher's intervals, from 1; all messages of one
	// interval carry the same Seq. It restarts with the tracker.
	Seq uint64 `json:"seq,omitempty"`
	// Time is the snapshot's time.
	Time time.Time `json:"time"`
	// Elapsed is the real time since the previous snapshot in nanoseconds;
	// zero on the first.
	Elapsed time.Duration `json:"elapsed"`
	// Interval is the publisher's configured interval in nanoseconds;
	// consumers use it to notice a node that stopped publishing.
	Interval time.Duration `json:"interval,omitempty"`
}

// GadgetIdentity names a gadget in messages.
type GadgetIdentity struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Image string `json:"image"`
}

// MessageTotals are the totals of a gadget or _unowned message:
// state.Totals, whose JSON they are, except that programCount is always
// present (0 in an _unowned message without programs) where a program
// row's JSON omits it.
type MessageTotals state.Totals

// MarshalJSON encodes t as state.Totals, with programCount also when 0.
func (t MessageTotals) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		state.Totals
		// ProgramCount shadows the omitempty field of state.Totals.
		ProgramCount int `json:"programCount"`
	}{state.Totals(t), t.ProgramCount})
}

// GadgetMessage is published on <prefix>.<node>.<gadgetID> every interval.
type GadgetMessage struct {
	Header
	Gadget GadgetIdentity   `json:"gadget"`
	Owner  state.ProcessRef `json:"owner"`
	Totals MessageTotals    `json:"totals"`
	// Programs are the gadget's program rows, sorted by ProgID.
	Programs []state.Row `json:"programs"`
}

// UnownedMessage is published on <prefix>.<node>._unowned every interval,
// also when there are no unowned programs.
type UnownedMessage struct {
	Header
	Totals   MessageTotals `json:"totals"`
	Programs []state.Row   `json:"programs"`
}

// NodeCounts are a node's inventory sizes and event totals.
type NodeCounts struct {
	Programs      int    `json:"programs"`
	Gadgets       int    `json:"gadgets"`
	Unowned       int    `json:"unowned"`
	EventsLoad    uint64 `json:"eventsLoad"`
	EventsRelease uint64 `json:"eventsRelease"`
	EventsLost    uint64 `json:"eventsLost"`
}

// PublisherStats are the NATS sink's own counters.
type PublisherStats struct {
	// Published counts messages handed to the connection.
	Published uint64 `json:"published"`
	// SkippedIntervals counts intervals not published while disconnected.
	SkippedIntervals uint64 `json:"skippedIntervals"`
	// PublishErrors counts failed publishes, key-value writes and
	// asynchronous errors the server reported.
	PublishErrors uint64 `json:"publishErrors"`
	// Reconnects counts reconnections since start.
	Reconnects uint64 `json:"reconnects"`
}

// NodeMessage is published on <prefix>.<node>._node every interval, after
// the interval's gadget and unowned messages.
type NodeMessage struct {
	Header
	Version string `json:"version"`
	// Kernel is the node's uname release.
	Kernel string `json:"kernel"`
	// Source is the event source in use.
	Source  string     `json:"source"`
	Counts  NodeCounts `json:"counts"`
	Resyncs uint64     `json:"resyncs"`
	Sweeps  uint64     `json:"sweeps"`
	// SweepDuration is how long the sweep's kernel reads took, in nanoseconds.
	SweepDuration time.Duration  `json:"sweepDuration"`
	Publisher     PublisherStats `json:"publisher"`
}

// EventMessage is published on <prefix>.<node>._events for every program
// load and release, as it arrives.
type EventMessage struct {
	Schema string `json:"schema"`
	Type   string `json:"type"`
	Node   string `json:"node"`
	state.Event
}

// NodeToken makes name one valid NATS subject token: '.', '*', '>',
// whitespace and control characters become '_'. An empty name is "_".
func NodeToken(name string) string {
	if name == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		if r == '.' || r == '*' || r == '>' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return '_'
		}
		return r
	}, name)
}

// gadgetToken is NodeToken for a gadget ID, kept clear of the reserved
// tokens, which start with '_'.
func gadgetToken(id string) string {
	tok := NodeToken(id)
	if strings.HasPrefix(tok, "_") {
		tok = "g" + tok
	}
	return tok
}

// kvToken restricts a subject token to the characters JetStream allows in
// keys.
func kvToken(tok string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9',
			r == '-', r == '_', r == '=', r == '/':
			return r
		}
		return '_'
	}, tok)
}

// validatePrefix checks that prefix is one or more literal subject tokens.
func validatePrefix(prefix string) error {
	for _, tok := range strings.Split(prefix, ".") {
		if tok == "" || NodeToken(tok) != tok {
			return fmt.Errorf("invalid subject prefix %q: want dot-separated tokens without '*', '>' or whitespace", prefix)
		}
	}
	return nil
}

// ConnOptions says how to reach NATS servers. Only URLs is required.
type ConnOptions struct {
	// URLs is a comma-separated list of server URLs of one cluster
	// (nats://, tls://, ws://, wss://; a bare host:port means nats://).
	URLs string
	// Name is the connection name the server shows (e.g. in `nats server
	// report connections`).
	Name string
	// CredsFile is a user JWT plus nkey seed (.creds) file.
	CredsFile string
	// NKeySeedFile is a file holding an nkey user seed.
	NKeySeedFile string
	// User and Password authenticate with a user name and password.
	User, Password string
	// TLSCAFile verifies the server's certificate; TLSCertFile and
	// TLSKeyFile are the client certificate.
	TLSCAFile, TLSCertFile, TLSKeyFile string

	// ReconnectWait is the first reconnect delay; it doubles per failed
	// round up to MaxReconnectWait, with jitter. Defaults 250ms and 4s.
	ReconnectWait, MaxReconnectWait time.Duration
	// ReconnectBufSize bounds what is buffered while reconnecting
	// (default 1 MiB).
	ReconnectBufSize int
	// DrainTimeout bounds Drain on shutdown (default 1s).
	DrainTimeout time.Duration
	// FailFast returns an error when no server is reachable at start,
	// instead of retrying in the background. Interactive commands want it.
	FailFast bool

	Logger zerolog.Logger
}

// connHooks let the sink count what the connection reports.
type connHooks struct {
	asyncError func()
	closed     func()
}

func (o *ConnOptions) setDefaults() {
	if o.ReconnectWait <= 0 {
		o.ReconnectWait = 250 * time.Millisecond
	}
	if o.MaxReconnectWait <= 0 {
		o.MaxReconnectWait = 4 * time.Second
	}
	if o.MaxReconnectWait < o.ReconnectWait {
		o.MaxReconnectWait = o.ReconnectWait
	}
	if o.ReconnectBufSize <= 0 {
		o.ReconnectBufSize = 1 << 20
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = time.Second
	}
}

// ParseURLs validates a comma-separated list of NATS server URLs and
// returns them normalised (a bare host:port gets nats://).
func ParseURLs(list string) ([]string, error) {
	var out []string
	for _, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			return nil, fmt.Errorf("invalid NATS URL list %q: empty element", list)
		}
		s := raw
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("invalid NATS URL %q: %w", raw, err)
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return nil, fmt.Errorf("invalid NATS URL %q: scheme %q is not one of nats, tls, ws, wss", raw, u.Scheme)
		}
		if u.Hostname() == "" {
			return nil, fmt.Errorf("invalid NATS URL %q: no host", raw)
		}
		if p := u.Port(); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("invalid NATS URL %q: port %q is not a number in 1-65535", raw, p)
			}
		} else if strings.HasSuffix(u.Host, ":") {
			return nil, fmt.Errorf("invalid NATS URL %q: empty port", raw)
		}
		out = append(out, u.String())
	}
	return out, nil
}

// ConnectNATS connects to the servers in opts.URLs. The connection
// reconnects forever with capped, jittered backoff and logs its state
// changes. Unless opts.FailFast is set, unreachable servers at start are
// not an error: the connection is returned in the reconnecting state and
// connects when a server comes up. Bad URLs, unreadable credential files,
// rejected credentials and TLS failures are errors at once.
func ConnectNATS(opts ConnOptions) (*nats.Conn, error) {
	return connect(opts, connHooks{})
}

func connect(opts ConnOptions, hooks connHooks) (*nats.Conn, error) {
	opts.setDefaults()
	urls, err := ParseURLs(opts.URLs)
	if err != nil {
		return nil, err
	}
	nopts, err := natsOptions(&opts, hooks)
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	servers := strings.Join(urls, ",")

	nc, err := nats.Connect(servers, append(nopts, nats.RetryOnFailedConnect(false))...)
	if err == nil {
		// The connect handler logs it.
		return nc, nil
	}
	if authErr := authError(err); authErr != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: credentials rejected: %w", servers, authErr)
	}
	if opts.FailFast || !retryable(err) {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", servers, err)
	}
	log.Warn().Err(err).Str("servers", servers).
		Msg("NATS server unreachable at start, retrying in the background")
	nc, err = nats.Connect(servers, append(nopts, nats.RetryOnFailedConnect(true))...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", servers, err)
	}
	return nc, nil
}

// authError returns the nats.go sentinel for a server's authentication
// error, which the initial connect returns as the server's text only.
func authError(err error) error {
	for _, sentinel := range []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired} {
		if errors.Is(err, sentinel) {
			return sentinel
		}
		if strings.Contains(strings.ToLower(err.Error()), strings.TrimPrefix(sentinel.Error(), "nats: ")) {
			return sentinel
		}
	}
	return nil
}

// retryable tells whether an initial connect error may go away by itself
// (no server up yet) rather than being a configuration error.
func retryable(err error) bool {
	var (
		unknownAuthority x509.UnknownAuthorityError
		certInvalid      x509.CertificateInvalidError
		hostname         x509.HostnameError
		verify           *tls.CertificateVerificationError
		alert            tls.AlertError
	)
	switch {
	case authError(err) != nil, errors.Is(err, nats.ErrPermissionViolation),
		errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted),
		errors.As(err, &unknownAuthority), errors.As(err, &certInvalid), errors.As(err, &hostname),
		errors.As(err, &verify), errors.As(err, &alert):
		return false
	}
	var netErr net.Error
	return errors.Is(err, nats.ErrNoServers) || errors.Is(err, nats.ErrTimeout) ||
		errors.As(err, &netErr) || errors.Is(err, unix.ECONNREFUSED) ||
		errors.Is(err, unix.ECONNRESET) || errors.Is(err, os.ErrDeadlineExceeded)
}

func natsOptions(opts *ConnOptions, hooks connHooks) ([]nats.Option, error) {
	log := opts.Logger
	base, ceiling := opts.ReconnectWait, opts.MaxReconnectWait
	nopts := []nats.Option{
		nats.Name(opts.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectBufSize(opts.ReconnectBufSize),
		nats.DrainTimeout(opts.DrainTimeout),
		nats.Timeout(2 * time.Second),
		// Credentials that stop working while running are retried like an
		// unreachable server: an operator may fix them.
		nats.IgnoreAuthErrorAbort(),
		nats.CustomReconnectDelay(func(attempts int) time.Duration {
			return backoff(base, ceiling, attempts)
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("NATS connected")
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if nc.IsClosed() {
				return
			}
			log.Warn().Err(err).Msg("NATS disconnected, reconnecting")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Uint64("reconnects", nc.Stats().Reconnects).
				Msg("NATS reconnected")
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Debug().Err(err).Msg("NATS reconnect attempt failed")
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			ev := log.Info()
			if err := nc.LastError(); err != nil {
				ev = log.Warn().Err(err)
			}
			ev.Msg("NATS connection closed")
			if hooks.closed != nil {
				hooks.closed()
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Error().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("NATS error")
			if hooks.asyncError != nil {
				hooks.asyncError()
			}
		}),
	}
	if opts.CredsFile != "" {
		if _, err := os.Stat(opts.CredsFile); err != nil {
			return nil, fmt.Errorf("reading NATS credentials file: %w", err)
		}
		nopts = append(nopts, nats.UserCredentials(opts.CredsFile))
	}
	if opts.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(opts.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("reading NATS nkey seed file %s: %w", opts.NKeySeedFile, err)
		}
		nopts = append(nopts, o)
	}
	if opts.User != "" || opts.Password != "" {
		nopts = append(nopts, nats.UserInfo(opts.User, opts.Password))
	}
	if opts.TLSCAFile != "" {
		if _, err := os.Stat(opts.TLSCAFile); err != nil {
			return nil, fmt.Errorf("reading NATS TLS CA file: %w", err)
		}
		nopts = append(nopts, nats.RootCAs(opts.TLSCAFile))
	}
	if (opts.TLSCertFile == "") != (opts.TLSKeyFile == "") {
		return nil, errors.New("NATS TLS client certificate needs both a certificate and a key file")
	}
	if opts.TLSCertFile != "" {
		if _, err := tls.LoadX509KeyPair(opts.TLSCertFile, opts.TLSKeyFile); err != nil {
			return nil, fmt.Errorf("loading NATS TLS client certificate: %w", err)
		}
		nopts = append(nopts, nats.ClientCert(opts.TLSCertFile, opts.TLSKeyFile))
	}
	return nopts, nil
}

// backoff is the delay before reconnect round attempts: base doubled per
// round, capped at ceiling, with the upper half jittered so that a fleet
// does not reconnect in lockstep.
func backoff(base, ceiling time.Duration, attempts int) time.Duration {
	d := ceiling
	if shift := attempts - 1; shift < 30 {
		d = min(base<<max(shift, 0), ceiling)
	}
	half := d / 2
	return half + rand.N(half+1)
}

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
	if err := validatePrefix(opts.SubjectPrefix); err != nil {
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

// Conn returns the sink's connection.
func (s *NATSSink) Conn() *nats.Conn { return s.nc }

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

// intervalMessages encodes one snapshot. The caller holds s.mu.
func (s *NATSSink) intervalMessages(snap *state.Snapshot) ([]outMsg, error) {
	h := Header{
		Schema:   SchemaVersion,
		Node:     s.node,
		Seq:      s.seq,
		Time:     snap.Time,
		Elapsed:  snap.Elapsed,
		Interval: s.opts.Interval,
	}
	byGadget := make(map[string][]state.Row, len(snap.Gadgets))
	for _, g := range snap.Gadgets {
		byGadget[g.GadgetID] = make([]state.Row, 0, g.ProgramCount)
	}
	var unowned []state.Row
	if n := snap.Unowned.ProgramCount; n > 0 {
		unowned = make([]state.Row, 0, n)
	}
	for _, r := range snap.Programs {
		r.NodeName = s.node
		if r.GadgetID == "" {
			unowned = append(unowned, r)
			continue
		}
		byGadget[r.GadgetID] = append(byGadget[r.GadgetID], r)
	}
	msgs := make([]outMsg, 0, len(snap.Gadgets)+2)
	// All messages of the interval are encoded into one buffer the sink
	// keeps: at thousands of programs the _unowned message alone is
	// megabytes, and growing a fresh buffer each interval dominated the
	// publish. nats.Conn.Publish and the key-value put copy the bytes.
	s.encBuf.Reset()
	enc := json.NewEncoder(&s.encBuf)
	add := func(token string, v any) error {
		start := s.encBuf.Len()
		if err := enc.Encode(v); err != nil {
			return fmt.Errorf("encoding %s message: %w", token, err)
		}
		// Encode ends with a newline that Marshal does not write.
		data := s.encBuf.Bytes()[start : s.encBuf.Len()-1 : s.encBuf.Len()-1]
		key := kvToken(s.node) + "."
		switch token {
		case TokenUnowned, TokenNode:
			key += token
		default:
			key += kvToken(gadgetToken(token))
		}
		msgs = append(msgs, outMsg{subject: s.Subject(token), key: key, data: data})
		return nil
	}

	for _, g := range snap.Gadgets {
		h.Type = TypeGadget
		info, ok := snap.GadgetInfo[g.GadgetID]
		if !ok {
			info = state.Gadget{ID: g.GadgetID, Name: g.GadgetName, Image: g.GadgetImage}
			if g.Loader != nil {
				info.Owner = *g.Loader
			}
		}
		progs := byGadget[g.GadgetID]
		if progs == nil {
			progs = []state.Row{}
		}
		msg := GadgetMessage{
			Header:   h,
			Gadget:   GadgetIdentity{ID: g.GadgetID, Name: g.GadgetName, Image: g.GadgetImage},
			Owner:    info.Owner,
			Totals:   gadgetTotals(g, progs),
			Programs: progs,
		}
		if err := add(g.GadgetID, msg); err != nil {
			return nil, err
		}
	}

	h.Type = TypeUnowned
	if unowned == nil {
		unowned = []state.Row{}
	}
	if err := add(TokenUnowned, UnownedMessage{Header: h, Totals: gadgetTotals(snap.Unowned, unowned), Programs: unowned}); err != nil {
		return nil, err
	}

	h.Type = TypeNode
	c := snap.Counters
	node := NodeMessage{
		Header:  h,
		Version: s.opts.Version,
		Kernel:  s.opts.Kernel,
		Source:  snap.Source,
		Counts: NodeCounts{
			Programs:      len(snap.Programs),
			Gadgets:       len(snap.Gadgets),
			Unowned:       len(unowned),
			EventsLoad:    c.EventsLoad,
			EventsRelease: c.EventsRelease,
			EventsLost:    c.EventsLost,
		},
		Resyncs:       c.Resyncs,
		Sweeps:        c.Sweeps,
		SweepDuration: snap.SweepDuration,
		Publisher:     s.Stats(),
	}
	if err := add(TokenNode, node); err != nil {
		return nil, err
	}
	return msgs, nil
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

// putKV writes the interval's messages to the key-value bucket and deletes
// the keys of gadgets that are gone. The caller holds s.mu.
func (s *NATSSink) putKV(msgs []outMsg) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.KVTimeout)
	defer cancel()
	if s.kv == nil {
		kv, err := s.openKV(ctx)
		if err != nil {
			s.pubErrors.Add(1)
			if !s.kvFailing {
				s.kvFailing = true
				s.log.Warn().Err(err).Str("bucket", s.opts.KVBucket).Msg("NATS key-value bucket unavailable, retrying every interval")
			}
			return err
		}
		s.kv = kv
		s.kvFailing = false
		s.log.Info().Str("bucket", s.opts.KVBucket).Dur("ttl", s.opts.KVTTL).Msg("NATS key-value bucket ready")
	}
	var errs []error
	current := make(map[string]struct{}, len(msgs))
	for _, m := range msgs {
		current[m.key] = struct{}{}
		if _, err := s.kv.Put(ctx, m.key, m.data); err != nil {
			s.pubErrors.Add(1)
			errs = append(errs, fmt.Errorf("writing key %s to bucket %s: %w", m.key, s.opts.KVBucket, err))
		}
	}
	for key := range s.kvKeys {
		if _, ok := current[key]; ok {
			continue
		}
		if err := s.kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			s.pubErrors.Add(1)
			errs = append(errs, fmt.Errorf("deleting key %s from bucket %s: %w", key, s.opts.KVBucket, err))
		}
	}
	s.kvKeys = current
	return errors.Join(errs...)
}

func (s *NATSSink) openKV(ctx context.Context) (jetstream.KeyValue, error) {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return nil, fmt.Errorf("opening JetStream: %w", err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      s.opts.KVBucket,
		Description: "bpfstats: latest message per node and gadget",
		History:     1,
		TTL:         s.opts.KVTTL,
		Storage:     jetstream.MemoryStorage,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		// Another tracker created it with another TTL: share it.
		kv, err = js.KeyValue(ctx, s.opts.KVBucket)
	}
	if err != nil {
		return nil, fmt.Errorf("creating key-value bucket %s: %w", s.opts.KVBucket, err)
	}
	return kv, nil
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
