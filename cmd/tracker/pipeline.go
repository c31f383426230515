package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/cri"
	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
)

// commonFlags are shared by stats and run.
type commonFlags struct {
	interval time.Duration
	source   string
	node     string
	logLevel string
	all      bool
	// criSocket is the CRI runtime socket naming pods; "" is off.
	criSocket string
	registry  string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	host, _ := os.Hostname()
	fs.DurationVar(&c.interval, "interval", time.Second, "time between two stats sweeps")
	fs.StringVar(&c.source, "source", loader.SourceAuto, sourceUsage())
	fs.StringVar(&c.node, "node", host, "node name reported in rows and NATS subjects")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug|info|warn|error")
	fs.BoolVar(&c.all, "all", false, "one row per program, including programs without a gadget")
	fs.StringVar(&c.criSocket, "cri-socket", "", "container runtime (CRI) socket that names the pods of containers (podName, podNamespace): "+
		cri.ContainerdSocket+" for containerd, "+cri.CRIOSocket+" for CRI-O; empty: pods have their UID only")
	fs.StringVar(&c.registry, "registry", defaultRegistry, registryUsage)
}

// sourceUsage is the help of --source: the values, then one line per
// registered source.
func sourceUsage() string {
	var b strings.Builder
	b.WriteString("event source: " + strings.Join(loader.SourceNames(), "|") + " (auto: the first that works, in that order)")
	for _, s := range loader.Sources() {
		fmt.Fprintf(&b, "\n%s: %s; requires %s", s.Name, s.Description, s.Requires)
	}
	return b.String()
}

func (c *commonFlags) validate() error {
	if err := validateInterval(c.interval); err != nil {
		return err
	}
	if !slices.Contains(loader.SourceNames(), c.source) {
		return usagef("unknown --source %q: want one of %s", c.source, strings.Join(loader.SourceNames(), ", "))
	}
	if c.node == "" {
		return usagef("--node must not be empty")
	}
	return validateLogLevel(c.logLevel)
}

// The bounds of --interval: below MinInterval the sweeps and messages
// cost more than they tell; above MaxInterval the fleet view (and
// fleet.MaxInterval) would take a node for a liar.
const (
	MinInterval = 100 * time.Millisecond
	MaxInterval = time.Hour
)

func validateInterval(d time.Duration) error {
	if d < MinInterval || d > MaxInterval {
		return usagef("--interval must be between %v and %v, got %v", MinInterval, MaxInterval, d)
	}
	return nil
}

func validateLogLevel(level string) error {
	if _, err := zerolog.ParseLevel(level); err != nil || level == "" {
		return usagef("unknown --log-level %.100q: want debug, info, warn or error", level)
	}
	return nil
}

// parseFlags parses args after filling unset flags from TRACKER_<FLAG>
// environment variables: flags win over the environment.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok && envErr == nil {
			if err := f.Value.Set(v); err != nil {
				envErr = usagef("invalid %s=%q: %v", name, v, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	// The flag package prints the usage after every error: bad input is
	// one line (from exitCode) instead, and the usage only with -h.
	out := fs.Output()
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return err
	}
	if err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// envName is the environment variable that can set a flag.
func envName(flagName string) string {
	return "TRACKER_" + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper(flagName))
}

// newLogger logs to stderr: human-readable on a terminal, JSON otherwise.
func newLogger(stderr io.Writer, level string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	w := stderr
	if f, ok := stderr.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		w = zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}

// pipeline is the kernel side of the tracker: stats on, an event source
// attached, and the inventory. A one-shot pipeline has neither stats fd
// nor source (see openOneShot).
type pipeline struct {
	stats   io.Closer
	source  loader.Source
	kernel  *loader.Kernel
	tracker *state.Tracker
	// cri names pods; nil without --cri-socket.
	cri *cri.Resolver
}

// OneShotSource is the source a one-shot's snapshot names: it attached
// none, its one sweep read the kernel's cumulative counters.
const OneShotSource = "none"

// openKernel checks privileges and opens the kernel reads with their
// iterators.
func openKernel(log zerolog.Logger, opts loader.KernelOptions) (*loader.Kernel, error) {
	if err := loader.CheckPrivileges(); err != nil {
		return nil, err
	}
	if w := loader.AttributionWarning(); w != "" {
		log.Warn().Msg(w)
	}
	kernel, err := loader.NewKernelWithOptions(opts)
	if err != nil {
		return nil, err
	}
	// The iterators (Linux 6.2) read every program in one syscall; without
	// them the same reads go through bpf(2) and /proc.
	progIter, holderIter := kernel.Iterators()
	// A one-shot skipping them by choice (loader.ErrFewPrograms) is no news.
	level := zerolog.InfoLevel
	if errors.Is(progIter, loader.ErrFewPrograms) {
		level = zerolog.DebugLevel
	}
	if progIter != nil {
		log.WithLevel(level).Err(progIter).Msg("program iterator unavailable, reading programs with bpf(2)")
	}
	if holderIter != nil {
		log.WithLevel(level).Err(holderIter).Msg("task_file iterator unavailable, scanning /proc for holders")
	}
	if err := kernel.MapIterator(); err != nil {
		log.WithLevel(level).Err(err).Msg("map iterator unavailable, reading maps with bpf(2)")
	}
	if err := kernel.IteratorLoadFallback(); err != nil {
		log.Debug().Err(err).Msg("iterators loaded by cilium/ebpf from the decoded kernel BTF, not by the tracker's own BTF scan")
	}
	return kernel, nil
}

// openOneShot opens what one sweep needs and nothing more: the kernel
// reads, without an event source (nothing happens between the first and
// the last read that an event could tell) and without a BPF_ENABLE_STATS
// fd (run time and count are cumulative: the sweep reads what the kernel
// counted while stats were on, and turning them on for the microseconds
// of one read adds nothing to that).
func openOneShot(c *commonFlags, log zerolog.Logger, beforeIterators func()) (*pipeline, error) {
	kernel, err := openKernel(log, loader.KernelOptions{OneSweep: true, BeforeIterators: beforeIterators})
	if err != nil {
		return nil, err
	}
	tr := state.New(kernel, state.Options{
		Node:   c.node,
		Source: OneShotSource,
		Self:   selfOf(),
	})
	return &pipeline{kernel: kernel, tracker: tr}, nil
}

// selfOf names this process's gadget.
func selfOf() state.Self {
	return state.Self{PID: uint32(os.Getpid()), Name: "bpfstats-tracker", Image: "bpfstats-tracker:" + version}
}

// openPipeline checks privileges, enables stats and attaches the event
// source (before the inventory's snapshot, which Run takes).
func openPipeline(c *commonFlags, log zerolog.Logger, measureCost bool) (*pipeline, error) {
	kernel, err := openKernel(log, loader.KernelOptions{})
	if err != nil {
		return nil, err
	}
	// Measured before stats are on: the cost of the accounting itself,
	// shown per row as statsCostPercent.
	var statsCost time.Duration
	if measureCost {
		if statsCost, err = loader.MeasureStatsCost(); err != nil {
			log.Info().Err(err).Msg("cost of BPF stats unknown: statsCostPercent stays 0")
		}
	}
	stats, err := loader.EnableStats()
	if err != nil {
		kernel.Close()
		return nil, fmt.Errorf("enabling BPF run-time stats: %w", err)
	}
	src, err := loader.OpenSource(c.source, loader.SourceOptions{
		PollInterval: c.interval,
		Logf: func(format string, args ...any) {
			log.Info().Msgf(format, args...)
		},
		Warnf: func(format string, args ...any) {
			log.Warn().Msgf(format, args...)
		},
	})
	if err != nil {
		stats.Close()
		kernel.Close()
		return nil, err
	}
	log.Info().Str("source", src.Name()).Str("node", c.node).Dur("interval", c.interval).Msg("event source attached")
	ignorePIDs := false
	if w := pidNamespaceWarning(); w != "" && src.Name() == loader.SourceFentry {
		log.Warn().Msg(w)
		ignorePIDs = true
	}
	criResolver, pods := openPods(c.criSocket, log)
	tr := state.New(kernel, state.Options{
		Node:            c.node,
		Source:          src.Name(),
		Self:            selfOf(),
		IgnoreEventPIDs: ignorePIDs,
		StatsCost:       statsCost,
		Pods:            pods,
		Registry:        openRegistry(c.registry, log),
	})
	return &pipeline{stats: stats, source: src, kernel: kernel, tracker: tr, cri: criResolver}, nil
}

// run drives the tracker until ctx ends or count sweeps are done. A
// one-shot pipeline sweeps once: its sweep is also the audit that fills
// the empty inventory with every program the kernel lists.
func (p *pipeline) run(ctx context.Context, cfg state.RunConfig) error {
	if p.source == nil {
		snap, err := p.tracker.Sweep()
		if err != nil {
			cfg.Log.Warn().Err(err).Msg("sweep incomplete")
		}
		if cfg.OnSnapshot != nil && ctx.Err() == nil {
			cfg.OnSnapshot(snap)
		}
		return nil
	}
	cfg.Source = p.source
	return p.tracker.Run(ctx, cfg)
}

// Close detaches the source and turns stats off. It is idempotent.
func (p *pipeline) Close() error {
	var errs []error
	if p.source != nil {
		errs = append(errs, p.source.Close())
		p.source = nil
	}
	if p.stats != nil {
		errs = append(errs, p.stats.Close())
		p.stats = nil
	}
	if p.kernel != nil {
		errs = append(errs, p.kernel.Close())
		p.kernel = nil
	}
	if p.cri != nil {
		errs = append(errs, p.cri.Close())
		p.cri = nil
	}
	return errors.Join(errs...)
}

// pidNamespaceWarning says why fentry event PIDs cannot be used, when the
// tracker runs in a child PID namespace (a container without hostPID):
// the kernel hooks report host PIDs, which name other processes here or
// none. The perf source's PIDs are translated into our namespace.
func pidNamespaceWarning() string {
	child, err := loader.InChildPIDNamespace()
	switch {
	case err != nil:
		return "cannot tell the PID namespace (" + err.Error() + "): fentry event PIDs are not used, programs are attributed by fd holders only"
	case child:
		return "running in a child PID namespace: fentry event PIDs are host PIDs, programs are attributed by fd holders only (run with the host's PID namespace, e.g. hostPID: true)"
	}
	return ""
}

// openPods opens the CRI resolver of --cri-socket (nil, nil when empty).
// A runtime that does not answer yet is no error: it may start after the
// tracker, and lookups connect again.
func openPods(socket string, log zerolog.Logger) (*cri.Resolver, state.PodResolver) {
	if socket == "" {
		return nil, nil
	}
	r, err := cri.New(socket, cri.Options{})
	if err != nil {
		log.Warn().Err(err).Msg("pods are not named")
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if v, err := r.Version(ctx); err != nil {
		log.Warn().Err(err).Str("socket", socket).Msg("CRI runtime not answering yet: pods are named once it does")
	} else {
		log.Info().Str("runtime", v).Str("socket", socket).Msg("CRI runtime names pods")
	}
	return r, r
}
