package fleet

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/publish"
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
	keys := ">"
	if !f.kinds.detail {
		// Only the summaries: the other keys are not read at all.
		keys = "*." + publish.TokenSummary
	}
	w, err := kv.Watch(ctx, keys, jetstream.IgnoreDeletes())
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

// Run shows the fleet publishing under opts.SubjectPrefix, optionally
// loading the key-value bucket first, and prints the view once per
// opts.Interval (at once after loading the bucket) until ctx ends or
// opts.Count prints are done. Nodes silent for ExpiryIntervals of their
// intervals are dropped.
//
// It reads only what it shows: every node's _summary (also as a
// partitioned cluster delivers them) for the gadget and image rows of the
// whole fleet; the gadget, _unowned and _node messages of the nodes
// opts.NodeGlob matches (or of all nodes with opts.All) for program rows
// and drill-down, their program rows decoded only with opts.All.
func Run(ctx context.Context, nc *nats.Conn, opts Options, out io.Writer) error {
	if err := opts.setDefaults(); err != nil {
		return err
	}
	log := opts.Logger
	// Ends the subscriptions' decoding goroutine with the view.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := New(opts.SubjectPrefix, opts.Interval, opts.Now)
	f.kinds, _ = viewKinds(opts)
	subs, err := subscribe(ctx, nc, f, opts)
	if err != nil {
		return err
	}
	defer unsubscribe(subs)

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

// viewKinds are the messages a view of opts takes, and the subjects it
// subscribes to.
func viewKinds(opts Options) (kinds, []string) {
	// Placement rollups read where gadgets run from their program rows,
	// which summaries do not carry.
	placement := isPlacementBy(opts.By)
	if !opts.All && opts.NodeGlob == "" && !placement {
		return kinds{summaries: true}, summarySubjects(opts.SubjectPrefix)
	}
	k := kinds{detail: true, rows: opts.All || placement, nodeGlob: opts.NodeGlob}
	if literalToken(opts.NodeGlob) {
		// One node: only its subjects reach the consumer.
		return k, []string{opts.SubjectPrefix + "." + opts.NodeGlob + ".>"}
	}
	// A pattern: the other nodes' messages are skipped before decoding.
	return k, []string{opts.SubjectPrefix + ".>"}
}

// literalToken tells whether glob matches exactly one subject token.
func literalToken(glob string) bool {
	return glob != "" && !strings.ContainsAny(glob, "*?[\\.> \t")
}

// subscribe subscribes f to the subjects of its view, and sets what f
// reports of them. A view of summaries alone decodes each node's newest
// summary (coalescer) until ctx ends.
func subscribe(ctx context.Context, nc *nats.Conn, f *Fleet, opts Options) ([]*nats.Subscription, error) {
	_, subjects := viewKinds(opts)
	if f.kinds.detail {
		subs, err := subscribeSubjects(nc, f.Ingest, opts.Logger, subjects)
		f.consumer = func() (int, uint64, uint64) {
			pending, dropped := subsPending(subs)
			return pending, dropped, 0
		}
		return subs, err
	}
	return subscribeCoalesced(ctx, nc, f.Ingest, opts.Logger, f, subjects)
}

// subscribeCoalesced subscribes to summary subjects through a coalescer
// that decodes with ingest until ctx ends, and sets what f reports of
// them.
func subscribeCoalesced(ctx context.Context, nc *nats.Conn, ingest func(subject string, data []byte) error, log zerolog.Logger, f *Fleet, subjects []string) ([]*nats.Subscription, error) {
	c := newCoalescer(ingest, func(subject string, err error) {
		log.Debug().Err(err).Str("subject", subject).Msg("ignoring message")
	})
	subs, err := subscribeSubjects(nc, c.put, log, subjects)
	if err != nil {
		return nil, err
	}
	go c.run(ctx)
	f.consumer = func() (int, uint64, uint64) {
		pending, dropped := subsPending(subs)
		filed, skipped := c.pending()
		return pending + filed, dropped, skipped
	}
	return subs, nil
}

// subscribeSubjects hands the messages of subjects to ingest, each
// subscription with room for a burst of a large fleet's messages before
// the client drops them.
func subscribeSubjects(nc *nats.Conn, ingest func(subject string, data []byte) error, log zerolog.Logger, subjects []string) ([]*nats.Subscription, error) {
	var subs []*nats.Subscription
	for _, subject := range subjects {
		sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
			if err := ingest(m.Subject, m.Data); err != nil {
				log.Debug().Err(err).Str("subject", m.Subject).Msg("ignoring message")
			}
		})
		if err == nil {
			err = sub.SetPendingLimits(pendingMsgs, pendingBytes)
		}
		if err != nil {
			unsubscribe(subs)
			return nil, fmt.Errorf("subscribing to %s: %w", subject, err)
		}
		subs = append(subs, sub)
	}
	return subs, nil
}

// unsubscribe ends subs.
func unsubscribe(subs []*nats.Subscription) {
	for _, sub := range subs {
		sub.Unsubscribe() //nolint:errcheck // the connection's owner closes it
	}
}

// A subscription's pending limits: a burst of a large fleet's summaries
// waits rather than being dropped.
const (
	pendingMsgs  = 1 << 16
	pendingBytes = 256 << 20
)

// subsPending sums the pending and dropped messages of subs.
func subsPending(subs []*nats.Subscription) (pending int, dropped uint64) {
	for _, sub := range subs {
		if n, _, err := sub.Pending(); err == nil {
			pending += n
		}
		if n, err := sub.Dropped(); err == nil {
			dropped += uint64(n)
		}
	}
	return pending, dropped
}
