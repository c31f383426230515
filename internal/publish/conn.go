package publish

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

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
	// closed runs when nats.go closed nc: asked to, or for good after a
	// server error.
	closed func(nc *nats.Conn)
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

// natsOptions are the nats.go options of a connection: reconnect forever
// with backoff, log state changes, authenticate and verify TLS.
func natsOptions(opts *ConnOptions, hooks connHooks) ([]nats.Option, error) {
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
	}
	nopts = append(nopts, stateHandlers(opts.Logger, hooks)...)
	auth, err := authOptions(opts)
	if err != nil {
		return nil, err
	}
	tlsOpts, err := tlsOptions(opts)
	if err != nil {
		return nil, err
	}
	return append(append(nopts, auth...), tlsOpts...), nil
}

// stateHandlers log the connection's state changes and report closing and
// asynchronous errors to hooks.
func stateHandlers(log zerolog.Logger, hooks connHooks) []nats.Option {
	return []nats.Option{
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Int64("maxPayload", nc.MaxPayload()).
				Msg("NATS connected")
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if nc.IsClosed() {
				return
			}
			log.Warn().Err(err).Msg("NATS disconnected, reconnecting")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Uint64("reconnects", nc.Stats().Reconnects).
				Int64("maxPayload", nc.MaxPayload()).Msg("NATS reconnected")
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
				hooks.closed(nc)
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
}

// authOptions authenticate with the credentials file, nkey seed or user
// and password opts name, checking that the files can be read.
func authOptions(opts *ConnOptions) ([]nats.Option, error) {
	var nopts []nats.Option
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
	return nopts, nil
}

// tlsOptions verify the servers with opts' CA and present its client
// certificate, checking that the files load.
func tlsOptions(opts *ConnOptions) ([]nats.Option, error) {
	var nopts []nats.Option
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

// sinkConn is one connection of a NATSSink. nats.go gives a connection up
// for good after some server errors (e.g. "maximum control line
// exceeded"); the sink then replaces it with a new one.
type sinkConn struct {
	nc *nats.Conn
	// closed is closed once nc's closed handler ran.
	closed chan struct{}
	// shared marks NATSOptions.SharedConn, which the sink neither
	// replaces nor closes.
	shared bool
}

// dial connects with the sink's options, see connect.
func (s *NATSSink) dial() (*sinkConn, error) {
	c := &sinkConn{closed: make(chan struct{})}
	var once sync.Once
	nc, err := connect(s.opts.Conn, connHooks{
		asyncError: func() { s.asyncError.Add(1) },
		closed: func(nc *nats.Conn) {
			once.Do(func() { close(c.closed) })
			s.connClosed(c, nc)
		},
	})
	if err != nil {
		return nil, err
	}
	c.nc = nc
	return c, nil
}

// install makes c the sink's connection, unless the sink is closing, and
// tells whether it did. A connection closed already (its closed handler
// may have run before c was installed) starts its replacement at once.
// The caller holds s.connMu.
func (s *NATSSink) install(c *sinkConn) bool {
	if s.closing {
		return false
	}
	if old := s.conn.Load(); old != nil {
		s.retiredReconnects += old.nc.Stats().Reconnects + 1
	}
	s.conn.Store(c)
	if c.nc.IsClosed() && !s.redialing {
		s.startRedial()
	}
	return true
}

// connClosed replaces c, whose nc nats.go closed, unless the sink closed
// it or c was replaced already.
func (s *NATSSink) connClosed(c *sinkConn, nc *nats.Conn) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.closing || s.redialing || s.conn.Load() != c {
		return
	}
	s.log.Warn().Err(nc.LastError()).Msg("NATS connection closed for good by the client library, connecting again")
	s.startRedial()
}

// startRedial starts replacing the sink's connection. The caller holds
// s.connMu.
func (s *NATSSink) startRedial() {
	s.redialing = true
	s.redial.Add(1)
	go s.redialLoop()
}

// redialLoop connects again with the sink's options after a capped,
// jittered backoff, until it succeeds or the sink is closed. A server
// that is down is not a failure here: the new connection then keeps
// reconnecting by itself, as at start.
func (s *NATSSink) redialLoop() {
	defer s.redial.Done()
	base, ceiling := s.opts.Conn.ReconnectWait, s.opts.Conn.MaxReconnectWait
	for attempt := 1; ; attempt++ {
		select {
		case <-s.done:
			return
		case <-time.After(backoff(base, ceiling, attempt)):
		}
		c, err := s.dial()
		if err != nil {
			s.log.Warn().Err(err).Int("attempt", attempt).Msg("NATS connecting again failed, retrying")
			continue
		}
		s.connMu.Lock()
		s.redialing = false
		installed := s.install(c)
		s.connMu.Unlock()
		if !installed {
			c.nc.Close()
			return
		}
		s.log.Info().Str("status", c.nc.Status().String()).Int("attempt", attempt).
			Msg("NATS connection replaced")
		return
	}
}
