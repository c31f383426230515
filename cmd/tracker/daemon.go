package main

import (
	"context"
	"flag"
	"io"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	var o outputFlags
	c.register(fs)
	o.register(fs)
	printTable := fs.Bool("print", false, "also print the table every interval")
	fs.Usage = usageFunc(fs, "run [flags]", true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	var sinks []publish.Sink
	var eventSinks []publish.EventSink
	if *printTable {
		print, err := o.printer(stdout, c.all)
		if err != nil {
			return err
		}
		sinks = append(sinks, sinkFunc(print))
	}
	log := newLogger(stderr, c.logLevel)
	p, err := openPipeline(&c, log)
	if err != nil {
		return err
	}
	defer p.Close()
	return p.run(ctx, state.RunConfig{
		Interval: c.interval,
		Log:      log,
		OnSnapshot: func(s *state.Snapshot) {
			for _, sink := range sinks {
				if err := sink.Publish(s); err != nil {
					log.Warn().Err(err).Msg("publishing snapshot")
				}
			}
		},
		OnEvent: func(ev *state.Event) {
			for _, sink := range eventSinks {
				if err := sink.PublishEvent(ev); err != nil {
					log.Warn().Err(err).Msg("publishing event")
				}
			}
		},
	})
}

// sinkFunc adapts a function to publish.Sink.
type sinkFunc func(*state.Snapshot) error

func (f sinkFunc) Publish(s *state.Snapshot) error { return f(s) }
