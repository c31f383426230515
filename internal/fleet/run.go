package fleet

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// LoadKV reads every entry of the key-value bucket into the fleet, each as
// seen when the server stored it (or now, if that is later). The keys,
// <node>.<token> and <node>.<token>.p<N> for the parts after the first,
// stand in for subjects.
func (f *Fleet) LoadKV(ctx context.Context, nc *nats.Conn, bucket string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("opening JetStream: %w", err)
	}
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return fmt.Errorf("opening key-value bucket %s (do the trackers run with key-value enabled?): %w", bucket, err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("reading key-value bucket %s: %w", bucket, err)
	}
	defer w.Stop() //nolint:errcheck // nothing to do about a failed unsubscribe
	// Entries arrive in write order, so each node's _node entry follows the
	// gadget entries of its interval; a nil entry ends the initial values.
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				return nil
			}
			// A bad entry does not hide the others; the fleet counts it.
			seen := f.now()
			if c := e.Created(); c.Before(seen) {
				seen = c
			}
			_ = f.ingestAt(e.Key(), e.Value(), seen)
		case <-ctx.Done():
			return fmt.Errorf("reading key-value bucket %s: %w", bucket, ctx.Err())
		}
	}
}

// Run shows the fleet publishing under opts.SubjectPrefix: it
// subscribes to <prefix>.>, optionally loads the key-value bucket first,
// and prints the view once per opts.Interval (at once after loading the
// bucket) until ctx ends or opts.Count prints are done. Nodes silent for
// ExpiryIntervals of their intervals are dropped.
func Run(ctx context.Context, nc *nats.Conn, opts Options, out io.Writer) error {
	if err := opts.setDefaults(); err != nil {
		return err
	}
	log := opts.Logger
	f := New(opts.SubjectPrefix, opts.Interval, opts.Now)
	subject := opts.SubjectPrefix + ".>"
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if err := f.Ingest(m.Subject, m.Data); err != nil {
			log.Debug().Err(err).Str("subject", m.Subject).Msg("ignoring message")
		}
	})
	if err != nil {
		return fmt.Errorf("subscribing to %s: %w", subject, err)
	}
	defer sub.Unsubscribe() //nolint:errcheck // the connection's owner closes it
	if err := sub.SetPendingLimits(65536, 256<<20); err != nil {
		return fmt.Errorf("subscribing to %s: %w", subject, err)
	}

	prints := 0
	print := func() (done bool, err error) {
		for _, node := range f.Expire() {
			log.Info().Str("node", node).Msg("node stopped publishing, dropped")
		}
		if err := f.Render(out, opts); err != nil {
			return true, err
		}
		prints++
		return opts.Count > 0 && prints >= opts.Count, nil
	}
	if opts.KV {
		kvCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := f.LoadKV(kvCtx, nc, opts.KVBucket)
		cancel()
		if err != nil {
			return err
		}
		if done, err := print(); done || err != nil {
			return err
		}
	}
	ticker := time.NewTicker(opts.Interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			if done, err := print(); done || err != nil {
				return err
			}
		}
	}
}
