package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"

	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/sdnotify"
	"github.com/bpfstats/tracker/internal/state"
)

type daemonFlags struct {
	common      commonFlags
	output      outputFlags
	nats        natsFlags
	print       bool
	natsListen  string
	metricsAddr string
	metricsAll  bool
	check       bool
}

func (d *daemonFlags) validate() error {
	if err := d.common.validate(); err != nil {
		return err
	}
	if d.nats.url != "" {
		if _, err := publish.ParseURLs(d.nats.url); err != nil {
			return usageError{fmt.Errorf("--nats-url: %w", err)}
		}
	} else if _, _, err := net.SplitHostPort(d.natsListen); err != nil {
		return usagef("--nats-listen %q: want host:port: %v", d.natsListen, err)
	}
	if d.metricsAddr != "" {
		if _, _, err := net.SplitHostPort(d.metricsAddr); err != nil {
			return usagef("--metrics-addr %q: want host:port (or empty to disable): %v", d.metricsAddr, err)
		}
	}
	return nil
}

func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var d daemonFlags
	d.common.register(fs)
	d.output.register(fs)
	d.nats.register(fs, "comma-separated NATS server URLs; empty starts an embedded server on --nats-listen")
	fs.BoolVar(&d.print, "print", false, "also print the table every interval")
	fs.StringVar(&d.natsListen, "nats-listen", "127.0.0.1:4222", "address of the embedded NATS server (without --nats-url)")
	fs.StringVar(&d.metricsAddr, "metrics-addr", "127.0.0.1:2224", "address serving /metrics; empty disables")
	fs.BoolVar(&d.metricsAll, "metrics-all", false, "export one metrics series per program too, not only per gadget")
	fs.BoolVar(&d.check, "check", false, "validate the configuration and the kernel's capabilities, print a report, exit")
	fs.Usage = usageFunc(fs, "run [flags]", true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := d.validate(); err != nil {
		return err
	}
	log := newLogger(stderr, d.common.logLevel)
	if d.check {
		return runCheck(stdout, &d)
	}
	if err := loader.CheckPrivileges(); err != nil {
		return err
	}

	print, err := d.output.printer(stdout, d.common.all)
	if err != nil {
		return err
	}
	var sinks []publish.Sink

	// Network first: a taken port fails before anything is attached.
	url := d.nats.url
	if url == "" {
		es, err := publish.StartEmbedded(publish.EmbeddedOptions{Listen: d.natsListen, JetStream: d.nats.kv, Logger: log})
		if err != nil {
			return err
		}
		defer es.Shutdown()
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
	})
	if err != nil {
		return err
	}
	// Deferred after the embedded server's shutdown, so it drains first.
	defer sink.Close()
	sinks = append(sinks, sink)

	if d.metricsAddr != "" {
		m, err := publish.NewMetrics(publish.MetricsOptions{All: d.metricsAll, Version: version, NATS: sink})
		if err != nil {
			return err
		}
		srv, err := publish.ListenMetrics(d.metricsAddr, m.Handler())
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info().Str("addr", srv.Addr().String()).Msg("serving /metrics")
		sinks = append(sinks, m)
	}

	if d.print {
		// Last, so that a printed table means the interval was published.
		sinks = append(sinks, sinkFunc(print))
	}

	p, err := openPipeline(&d.common, log)
	if err != nil {
		return err
	}
	defer p.Close()

	publishAll := func(s *state.Snapshot) {
		for _, sink := range sinks {
			if err := sink.Publish(s); err != nil {
				log.Warn().Err(err).Msg("publishing snapshot")
			}
		}
	}
	ready := false
	err = p.run(ctx, state.RunConfig{
		Interval: d.common.interval,
		Log:      log,
		OnSnapshot: func(s *state.Snapshot) {
			publishAll(s)
			if !ready {
				ready = true
				notify(log, sdnotify.Ready)
			}
		},
		OnEvent: func(ev *state.Event) {
			if err := sink.PublishEvent(ev); err != nil {
				log.Warn().Err(err).Msg("publishing event")
			}
		},
	})
	notify(log, sdnotify.Stopping)
	if err != nil {
		return err
	}
	// A last sweep, so consumers see the state at shutdown.
	if snap, err := p.tracker.Sweep(); err == nil {
		publishAll(snap)
	}
	log.Info().Msg("shutting down")
	return nil
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
