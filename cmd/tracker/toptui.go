package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/fleet"
	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/tui"
)

// topTUIFlags are the flags of "tracker top" for its interactive view and
// for reading the local kernel instead of NATS.
type topTUIFlags struct {
	local   bool
	source  string
	history int
}

func (f *topTUIFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.local, "local", false, "read this node's kernel (like stats) instead of NATS; needs root")
	fs.StringVar(&f.source, "source", loader.SourceAuto, "event source with --local: "+fmt.Sprint(loader.SourceNames()))
	fs.IntVar(&f.history, "history", tui.DefaultHistory, "intervals of CPU% and runs/s history kept per row in the interactive view")
}

// validate checks the flags; interval is top's --interval.
func (f *topTUIFlags) validate() error {
	if f.history < 1 || f.history > 100000 {
		return usagef("--history must be between 1 and 100000, got %d", f.history)
	}
	if !slices.Contains(loader.SourceNames(), f.source) {
		return usagef("unknown --source %q: want one of %v", f.source, loader.SourceNames())
	}
	return nil
}

// interactive reports whether top shows the full-screen view: stdout is
// a terminal, no --count, the table output, no --by rollup. Pipes and
// --count keep the printed tables and JSON.
func interactive(stdout io.Writer, output string, count int, by string) bool {
	f, ok := stdout.(*os.File)
	return ok && isatty.IsTerminal(f.Fd()) && count == 0 && output == "table" && by == ""
}

// topView is what the interactive view and --local need of top's flags.
type topView struct {
	tui                topTUIFlags
	all                bool
	interval           time.Duration
	nodeGlob, logLevel string
	count              int
	out                outputFlags
	nats               natsFlags
}

// runTopLocal is "tracker top --local": the kernel of this node through
// the stats pipeline, in the interactive view on a terminal, else printed
// like "tracker stats".
func runTopLocal(ctx context.Context, v topView, stdout, stderr io.Writer) error {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	c := commonFlags{interval: v.interval, source: v.tui.source, node: host, logLevel: v.logLevel, all: v.all}
	if !interactive(stdout, v.out.output, v.count, "") {
		print, err := v.out.printer(stdout, v.all)
		if err != nil {
			return err
		}
		log := newLogger(stderr, v.logLevel)
		p, err := openPipeline(&c, log, v.count != 1)
		if err != nil {
			return err
		}
		defer p.Close()
		return p.run(ctx, state.RunConfig{Interval: v.interval, Count: v.count, Log: log, OnSnapshot: func(s *state.Snapshot) { _ = print(s) }})
	}
	return runTUI(ctx, v, stdout, stderr, func(ctx context.Context, log zerolog.Logger, send func(tui.Frame)) error {
		p, err := openPipeline(&c, log, true)
		if err != nil {
			return err
		}
		defer p.Close()
		cpus := runtime.NumCPU()
		return p.run(ctx, state.RunConfig{Interval: v.interval, Log: log, OnSnapshot: func(s *state.Snapshot) {
			send(tui.FrameFromSnapshot(s, v.interval, cpus))
		}})
	})
}

// runTopFleet is the interactive view of the fleet publishing to NATS.
func runTopFleet(ctx context.Context, v topView, nc *nats.Conn, stdout, stderr io.Writer) error {
	return runTUI(ctx, v, stdout, stderr, func(ctx context.Context, log zerolog.Logger, send func(tui.Frame)) error {
		f := fleet.New(v.nats.prefix, v.interval, time.Now)
		subject := v.nats.prefix + ".>"
		sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
			if err := f.Ingest(m.Subject, m.Data); err != nil {
				log.Debug().Err(err).Str("subject", m.Subject).Msg("ignoring message")
			}
		})
		if err != nil {
			return fmt.Errorf("subscribing to %s: %w", subject, err)
		}
		defer sub.Unsubscribe() //nolint:errcheck // the connection is closed next
		if v.nats.kv {
			kvCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := f.LoadKV(kvCtx, nc, publish.DefaultKVBucket)
			cancel()
			if err != nil {
				return err
			}
			send(fleetFrame(f, v))
		}
		ticker := time.NewTicker(v.interval)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-ticker.C:
				for _, node := range f.Expire() {
					log.Info().Str("node", node).Msg("node stopped publishing, dropped")
				}
				send(fleetFrame(f, v))
			}
		}
	})
}

// stateRows drops the fleet rows' seq: the view shows the rows.
func stateRows(rows []fleet.Row) []state.Row {
	out := make([]state.Row, len(rows))
	for i := range rows {
		out[i] = rows[i].Row
	}
	return out
}

// fleetFrame is the fleet's latest state as one Frame.
func fleetFrame(f *fleet.Fleet, v topView) tui.Frame {
	fr := tui.Frame{
		Time: time.Now(), Source: redactURLs(v.nats.url), Interval: v.interval,
		Gadgets: stateRows(f.GadgetRows(v.nodeGlob)), Programs: stateRows(f.ProgramRows(v.nodeGlob)),
	}
	// A set, not a scan of the list per row: a fleet has thousands of
	// nodes and rows.
	nodes := map[string]struct{}{}
	for _, rows := range [][]state.Row{fr.Gadgets, fr.Programs} {
		for _, r := range rows {
			if _, ok := nodes[r.NodeName]; !ok {
				nodes[r.NodeName] = struct{}{}
				fr.Nodes = append(fr.Nodes, r.NodeName)
			}
		}
	}
	slices.Sort(fr.Nodes)
	if s := f.Stats(); s.Rejected()+s.Dropped() > 0 {
		fr.Status = fmt.Sprintf("messages rejected %d, dropped %d", s.Rejected(), s.Dropped())
	}
	return fr
}

// redactURLs drops the user information (tokens, passwords) of
// comma-separated URLs, for the header.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil {
			u.User = nil
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

// feed reads rows until ctx ends, handing each interval to send.
type feed func(ctx context.Context, log zerolog.Logger, send func(tui.Frame)) error

// runTUI runs the full-screen view on stdout's terminal, fed by read,
// until q (or ctx ends, or read fails). The log goes to a buffer printed
// to stderr once the screen is restored: it would tear the view.
func runTUI(ctx context.Context, v topView, stdout, stderr io.Writer, read feed) error {
	logs := &tailBuffer{max: 64 << 10}
	log := zerolog.New(zerolog.ConsoleWriter{Out: logs, NoColor: true, TimeFormat: time.TimeOnly}).
		Level(logLevelOf(v.logLevel)).With().Timestamp().Logger()
	defer func() { _, _ = stderr.Write(logs.Bytes()) }()

	model := tui.New(tui.Options{History: v.tui.history, Programs: v.all, Fleet: !v.tui.local})
	prog := tea.NewProgram(model, tea.WithAltScreen(), tea.WithOutput(stdout), tea.WithInput(os.Stdin), tea.WithContext(ctx))
	readCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	readErr := make(chan error, 1)
	go func() {
		err := read(readCtx, log, func(f tui.Frame) { prog.Send(f) })
		readErr <- err
		if err != nil {
			prog.Quit()
		}
	}()
	_, err := prog.Run()
	cancel()
	rerr := <-readErr
	if errors.Is(err, tea.ErrProgramKilled) || errors.Is(err, tea.ErrInterrupted) {
		// ctx ended (a signal): the same clean stop as q.
		err = nil
	}
	if err != nil {
		return fmt.Errorf("running the interactive view: %w", err)
	}
	return rerr
}

func logLevelOf(level string) zerolog.Level {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.WarnLevel
	}
	return lvl
}

// tailBuffer keeps the last max bytes written to it; safe for concurrent
// use.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

// Bytes returns a copy of what is kept.
func (b *tailBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.buf)
}
