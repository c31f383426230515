package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/sdnotify"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/timerslack"
)

type daemonFlags struct {
	common      commonFlags
	output      outputFlags
	nats        natsFlags
	print       bool
	natsListen  string
	metricsAddr string
	metricsAll  bool
	compactRows bool
	maxMessage  int
	pprofAddr   string
	timerSlack  time.Duration
	startPages  bool
	check       bool
}

// parseDaemonFlags parses and validates the flags of "tracker run".
func parseDaemonFlags(args []string, stderr io.Writer) (*daemonFlags, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var d daemonFlags
	d.common.register(fs)
	d.output.register(fs)
	d.nats.register(fs, "comma-separated NATS server URLs; empty starts an embedded server on --nats-listen")
	fs.BoolVar(&d.print, "print", false, "also print the table every interval")
	fs.StringVar(&d.natsListen, "nats-listen", publish.DefaultListen, "address of the embedded NATS server (without --nats-url)")
	fs.StringVar(&d.metricsAddr, "metrics-addr", publish.DefaultMetricsAddr, "address serving /metrics; empty disables")
	fs.BoolVar(&d.metricsAll, "metrics-all", false, "export one metrics series per program too, not only per gadget")
	fs.BoolVar(&d.compactRows, "compact-rows", false, "send a gadget's full program rows only when they change or every 30 intervals, compact rows between (docs/nats.md)")
	fs.IntVar(&d.maxMessage, "max-message-bytes", publish.DefaultMaxMessageBytes, "split a message's program rows into parts of at most this many bytes (or the server's max_payload if smaller; docs/nats.md)")
	fs.StringVar(&d.pprofAddr, "pprof-addr", "", "address serving net/http/pprof at /debug/pprof/ (host empty: 127.0.0.1); empty disables")
	fs.DurationVar(&d.timerSlack, "timer-slack", defaultTimerSlack, "how late the kernel may wake the daemon's threads from their timers (prctl PR_SET_TIMERSLACK, all threads); 0 keeps what it inherited")
	fs.BoolVar(&d.startPages, "release-start-pages", true, "after loading and after the first interval, unmap the pages of the tracker binary touched so far (madvise MADV_DONTNEED on its read-only mappings): those used again come back from the page cache")
	fs.BoolVar(&d.check, "check", false, "validate the configuration and the kernel's capabilities, print a report, exit")
	fs.Usage = usageFunc(fs, "run [flags]", true)
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if err := d.validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

func (d *daemonFlags) validate() error {
	if err := d.common.validate(); err != nil {
		return err
	}
	if err := d.nats.validate(); err != nil {
		return err
	}
	if d.nats.url == "" {
		if err := validateListen(d.natsListen); err != nil {
			return usagef("--nats-listen %.100q: %v", d.natsListen, err)
		}
	}
	if d.maxMessage < minMessageBytes || d.maxMessage > maxMessageBytes {
		return usagef("--max-message-bytes %d: want %d to %d", d.maxMessage, minMessageBytes, maxMessageBytes)
	}
	if d.metricsAddr != "" {
		if err := validateListen(d.metricsAddr); err != nil {
			return usagef("--metrics-addr %.100q (empty disables): %v", d.metricsAddr, err)
		}
	}
	if d.pprofAddr != "" {
		if err := validateListen(d.pprofAddr); err != nil {
			return usagef("--pprof-addr %.100q (empty disables): %v", d.pprofAddr, err)
		}
	}
	if d.timerSlack < 0 || d.timerSlack > maxTimerSlack {
		return usagef("--timer-slack %v: want 0 (keep the inherited slack) to %v", d.timerSlack, maxTimerSlack)
	}
	return nil
}

// defaultTimerSlack is the daemon's timer slack. The Go runtime's monitor
// thread sleeps 20 µs at a time while the daemon works; with the kernel's
// default slack of 50 µs it woke 80 to 110 times a second at 5000
// programs, about a sixth of the daemon's CPU in a VM, and about 20 times
// with 1 ms (internal/timerslack). The daemon's own timers are a second
// apart: a millisecond late is nothing to them. Its events wake it through
// file descriptors, which no slack delays; what the slack can delay is the
// monitor taking a P back from a blocked system call, which the event
// reader avoids (docs/systemd.md#timer-slack has the freshness it measured).
const defaultTimerSlack = time.Millisecond

// maxTimerSlack bounds --timer-slack to a tenth of the shortest interval.
const maxTimerSlack = MinInterval / 10

// The bounds of --max-message-bytes: below 4 KiB nearly every program row
// would be a message of its own; above 1 GiB it is past any server's
// max_payload, which bounds it anyway.
const (
	minMessageBytes = 4 << 10
	maxMessageBytes = 1 << 30
)

// validateListen checks a listen address: host:port, the host empty (all
// addresses), an IP or a host name, the port a number in 0-65535.
func validateListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port: %w", err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 || port != strconv.Itoa(n) {
		return fmt.Errorf("port %.20q is not a number in 0-65535", port)
	}
	if host == "" || net.ParseIP(host) != nil {
		return nil
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 || strings.Trim(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
			return fmt.Errorf("host %.100q is not an IP address or host name", host)
		}
	}
	return nil
}

// runDaemon is "tracker run": track, publish to NATS, serve metrics.
func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	d, err := parseDaemonFlags(args, stderr)
	if err != nil {
		return err
	}
	if d.check {
		return runCheck(stdout, d)
	}
	if err := loader.CheckPrivileges(); err != nil {
		return err
	}
	log := newLogger(stderr, d.common.logLevel)
	tuneGC()
	sampleHeap(d.pprofAddr != "")
	setTimerSlack(d.timerSlack, log)
	print, err := d.output.printer(stdout, d.common.all)
	if err != nil {
		return err
	}
	out := &outputs{fanout: fanout{log: log}}
	defer out.Close()
	// Network first: a taken port fails before anything is attached.
	if err := out.openNetwork(d, log); err != nil {
		return err
	}
	if err := out.openPprof(d.pprofAddr, log); err != nil {
		return err
	}
	if d.print {
		// Last, so that a printed table means the interval was published.
		out.sinks = append(out.sinks, sinkFunc(print))
	}
	if d.startPages {
		out.sinks = append(out.sinks, startPagesSink(log))
	}
	p, err := openPipeline(&d.common, log, true)
	if err != nil {
		return err
	}
	defer p.Close()
	if d.startPages {
		releaseStartPages(log, "loading")
	}
	err = p.run(ctx, out.runConfig(d.common.interval))
	notify(log, sdnotify.Stopping)
	if err != nil {
		return err
	}
	// A last sweep, so consumers see the state at shutdown.
	if snap, err := p.tracker.Sweep(); err == nil {
		out.Publish(snap)
	}
	log.Info().Msg("shutting down")
	return nil
}

// daemonGCPercent is the daemon's GOGC: the heap may grow 25 % over what
// the last collection left before the next one starts, not the default
// 100 %. Most of the daemon's heap lives for its whole run (the inventory,
// the kept row encodings) and it allocates little per interval, so
// collections stay rare while the peak RSS drops by about a fifth at
// thousands of programs.
const daemonGCPercent = 25

// tuneGC sets the daemon's GOGC unless the environment sets GOGC (which
// then wins, as for any Go program).
func tuneGC() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(daemonGCPercent)
	}
}

// sampleHeap turns the runtime's heap profiling off unless pprof is
// served (or GODEBUG sets memprofilerate). By default the runtime records
// one allocation per 512 KiB with its stack, in a bucket table of its own
// that only a heap profile reads: at 5000 programs the daemon's anonymous
// RSS measured 0.1 to 1.0 MiB lower without it (three interleaved pairs,
// 0.4 MiB on average). The samples taken before this call (package
// initialisation, flag parsing) are few.
func sampleHeap(served bool) {
	if !served && !strings.Contains(os.Getenv("GODEBUG"), "memprofilerate=") {
		runtime.MemProfileRate = 0
	}
}

// setTimerSlack gives every thread of the daemon the slack d (none when d
// is 0). Without CAP_SYS_NICE only the calling thread gets it, unless the
// process inherited it (systemd's TimerSlackNSec=): the daemon runs on,
// only costlier, and says so.
func setTimerSlack(d time.Duration, log zerolog.Logger) {
	if d == 0 {
		return
	}
	if err := timerslack.Set(d); err != nil {
		log.Info().Err(err).Stringer("timer_slack", d).Msg("timer slack not set for every thread: the Go runtime wakes more often (systemd: TimerSlackNSec=; or grant CAP_SYS_NICE)")
	}
}

// fanout hands every snapshot to each Sink and every event to each
// EventSink, in order. A sink's error is logged (the sink counts its own
// errors) and the sinks after it still get theirs.
type fanout struct {
	log        zerolog.Logger
	sinks      []publish.Sink
	eventSinks []publish.EventSink
}

// Publish hands snap to every sink.
func (f *fanout) Publish(snap *state.Snapshot) {
	for _, sink := range f.sinks {
		if err := sink.Publish(snap); err != nil {
			f.log.Warn().Err(err).Msg("publishing snapshot")
		}
	}
}

// PublishEvent hands ev to every event sink.
func (f *fanout) PublishEvent(ev *state.Event) {
	for _, sink := range f.eventSinks {
		if err := sink.PublishEvent(ev); err != nil {
			f.log.Warn().Err(err).Msg("publishing event")
		}
	}
}

// outputs are the daemon's sinks and the servers and connections they
// need, closed in the reverse order of opening.
type outputs struct {
	fanout
	closers []func()
}

// openNetwork starts the embedded NATS server unless a URL is given,
// connects the NATS sink, and listens for metrics unless disabled.
func (o *outputs) openNetwork(d *daemonFlags, log zerolog.Logger) error {
	url := d.nats.url
	if url == "" {
		es, err := publish.StartEmbedded(publish.EmbeddedOptions{Listen: d.natsListen, JetStream: d.nats.kv, Logger: log})
		if err != nil {
			return err
		}
		o.closers = append(o.closers, es.Shutdown)
		url = es.ClientURL()
	}
	sink, err := publish.NewNATSSink(publish.NATSOptions{
		Conn:          d.nats.conn(url, "", log),
		Node:          d.common.node,
		SubjectPrefix: d.nats.prefix,
		Version:       version,
		Kernel:        loader.KernelRelease(),
		Interval:      d.common.interval,
		KV:            d.nats.kv,
		CompactRows:   d.compactRows,
		// Also what nats.go's write buffer and the encoder's grow to.
		MaxMessageBytes: d.maxMessage,
	})
	if err != nil {
		return err
	}
	// Closed before the embedded server shuts down, so that it drains.
	o.closers = append(o.closers, func() { sink.Close() })
	o.sinks = append(o.sinks, sink)
	o.eventSinks = append(o.eventSinks, sink)
	if d.metricsAddr == "" {
		return nil
	}
	m, err := publish.NewMetrics(publish.MetricsOptions{All: d.metricsAll, Version: version, NATS: sink})
	if err != nil {
		return err
	}
	srv, err := publish.ListenMetrics(d.metricsAddr, m.Handler())
	if err != nil {
		return err
	}
	o.closers = append(o.closers, func() { srv.Close() })
	log.Info().Str("addr", srv.Addr().String()).Msg("serving /metrics")
	o.sinks = append(o.sinks, m)
	return nil
}

// openPprof serves the profiles when addr is set.
func (o *outputs) openPprof(addr string, log zerolog.Logger) error {
	if addr == "" {
		return nil
	}
	srv, err := listenPprof(addr)
	if err != nil {
		return err
	}
	o.closers = append(o.closers, func() { srv.Close() })
	log.Info().Str("addr", srv.Addr().String()).Msg("serving /debug/pprof/")
	return nil
}

// runConfig feeds the pipeline's snapshots and events to the sinks and
// tells systemd the daemon is ready after the first snapshot.
func (o *outputs) runConfig(interval time.Duration) state.RunConfig {
	ready := false
	return state.RunConfig{
		Interval: interval,
		Log:      o.log,
		OnSnapshot: func(s *state.Snapshot) {
			o.Publish(s)
			if !ready {
				ready = true
				notify(o.log, sdnotify.Ready)
			}
		},
		OnEvent: o.PublishEvent,
		// Every sink is done with a snapshot's rows when Publish returns
		// (the NATS sink keeps encodings, the metrics their own series).
		RecycleSnapshots: true,
	}
}

// Close closes what was opened, last first. It is idempotent.
func (o *outputs) Close() {
	for i := len(o.closers) - 1; i >= 0; i-- {
		o.closers[i]()
	}
	o.closers = nil
}

// notify tells systemd (when it started us with Type=notify) our state.
func notify(log zerolog.Logger, send func() (bool, error)) {
	if _, err := send(); err != nil {
		log.Warn().Err(err).Msg("systemd notify")
	}
}

// sinkFunc adapts a function to publish.Sink.
type sinkFunc func(*state.Snapshot) error

func (f sinkFunc) Publish(s *state.Snapshot) error { return f(s) }
