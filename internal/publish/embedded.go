package publish

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// DefaultListen is where the embedded server listens and where consumers
// look for it.
const DefaultListen = "127.0.0.1:4222"

// EmbeddedOptions configures the in-process NATS server.
type EmbeddedOptions struct {
	// Listen is host:port for clients; default DefaultListen. Port 0 picks
	// a free port (see EmbeddedServer.ClientURL).
	Listen string
	// ServerName defaults to "bpfstats-embedded".
	ServerName string
	// JetStream enables JetStream, needed by NATSOptions.KV.
	JetStream bool
	// StoreDir is JetStream's directory; a temporary directory removed by
	// Shutdown when empty.
	StoreDir string
	// ReadyTimeout bounds the wait for the server to accept clients
	// (default 5s).
	ReadyTimeout time.Duration
	// Logger receives the server's log, its notices at debug level.
	Logger zerolog.Logger
}

// EmbeddedServer is a NATS server running inside the tracker, so that
// `nats sub 'bpfstats.>'` works without deploying one.
type EmbeddedServer struct {
	srv    *server.Server
	tmpDir string
	once   sync.Once
}

// StartEmbedded starts a NATS server in this process and waits until it
// accepts clients. A listen address in use is a clear error.
func StartEmbedded(opts EmbeddedOptions) (*EmbeddedServer, error) {
	if opts.Listen == "" {
		opts.Listen = DefaultListen
	}
	if opts.ServerName == "" {
		opts.ServerName = "bpfstats-embedded"
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 5 * time.Second
	}
	host, portStr, err := net.SplitHostPort(opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server listen address %q: %w", opts.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("embedded NATS server listen address %q: port is not a number in 0-65535", opts.Listen)
	}
	if port != 0 {
		// The server only logs a failed listen and then waits out its
		// ready timeout; probing first gives the reason at once.
		probe, err := net.Listen("tcp", opts.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS server cannot listen on %s (another tracker or nats-server? pass a URL to use it, or another listen address): %w",
				opts.Listen, err)
		}
		probe.Close()
	} else {
		port = server.RANDOM_PORT
	}
	if host == "" {
		host = "0.0.0.0"
	}

	e := &EmbeddedServer{}
	sopts := &server.Options{
		ServerName: opts.ServerName,
		Host:       host,
		Port:       port,
		NoSigs:     true,
		MaxPayload: 8 << 20,
	}
	if opts.JetStream {
		dir := opts.StoreDir
		if dir == "" {
			dir, err = os.MkdirTemp("", "bpfstats-nats-")
			if err != nil {
				return nil, fmt.Errorf("creating JetStream store directory: %w", err)
			}
			e.tmpDir = dir
		}
		sopts.JetStream = true
		sopts.StoreDir = dir
		sopts.JetStreamMaxMemory = 64 << 20
		sopts.JetStreamMaxStore = 256 << 20
	}
	srv, err := server.NewServer(sopts)
	if err != nil {
		e.removeTmp()
		return nil, fmt.Errorf("configuring embedded NATS server: %w", err)
	}
	srv.SetLoggerV2(serverLogger{opts.Logger.With().Str("component", "nats-server").Logger()}, false, false, false)
	e.srv = srv
	srv.Start()
	if !srv.ReadyForConnections(opts.ReadyTimeout) {
		e.Shutdown()
		return nil, fmt.Errorf("embedded NATS server on %s not ready after %s", opts.Listen, opts.ReadyTimeout)
	}
	if opts.JetStream && !srv.JetStreamEnabled() {
		e.Shutdown()
		return nil, errors.New("embedded NATS server: JetStream failed to start (see its log)")
	}
	opts.Logger.Info().Str("url", e.ClientURL()).Bool("jetstream", opts.JetStream).
		Msg("embedded NATS server listening")
	return e, nil
}

// ClientURL is the URL clients connect to, with the actual port.
func (e *EmbeddedServer) ClientURL() string { return e.srv.ClientURL() }

// Shutdown stops the server and removes its temporary store. It is
// idempotent. Close clients (NATSSink.Close) first so that they drain.
func (e *EmbeddedServer) Shutdown() {
	e.once.Do(func() {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
		e.removeTmp()
	})
}

func (e *EmbeddedServer) removeTmp() {
	if e.tmpDir != "" {
		os.RemoveAll(e.tmpDir)
	}
}

// serverLogger adapts zerolog to the server's Logger. Fatal never exits:
// the tracker decides.
type serverLogger struct{ log zerolog.Logger }

func (l serverLogger) Noticef(format string, v ...any) { l.log.Debug().Msgf(format, v...) }
func (l serverLogger) Warnf(format string, v ...any)   { l.log.Warn().Msgf(format, v...) }
func (l serverLogger) Fatalf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l serverLogger) Errorf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l serverLogger) Debugf(format string, v ...any)  { l.log.Debug().Msgf(format, v...) }
func (l serverLogger) Tracef(format string, v ...any)  { l.log.Trace().Msgf(format, v...) }
