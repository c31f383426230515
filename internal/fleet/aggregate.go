package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/publish"
)

// Rollup messages: what "tracker aggregate" publishes on
// <prefix>._fleet.<partition> every interval.
const (
	// RollupSchema is the "schema" field of a rollup.
	RollupSchema = "bpfstats-fleet/v1"
	// TypeRollup is the "type" field of a rollup.
	TypeRollup = "rollup"
)

// RollupMessage is one partition's rollup of its nodes' summaries. Its
// counters are the sums over the partition's nodes; a partition's
// cumulative counters never go down while its aggregator runs, also when
// gadgets or nodes go away. The partitions are disjoint, so the fleet's
// rollup is the sum of the partitions'.
type RollupMessage struct {
	Schema string `json:"schema"`
	Type   string `json:"type"`
	// Partition is i of the aggregator's i/N; Partitions is N.
	Partition  int `json:"partition"`
	Partitions int `json:"partitions"`
	// Instance names one run of the aggregator; Seq numbers its rollups
	// from 1.
	Instance string        `json:"instance"`
	Seq      uint64        `json:"seq"`
	Time     time.Time     `json:"time"`
	Interval time.Duration `json:"interval"`
	// Nodes counts the partition's nodes shown.
	Nodes int `json:"nodes"`
	// Images sums the gadgets per image, GadgetNames per gadget name;
	// Unowned the programs without a gadget (Key empty).
	Images      []RollupRow `json:"images"`
	GadgetNames []RollupRow `json:"gadgetNames"`
	Unowned     RollupRow   `json:"unowned"`
	// Fleet and Consumer are the aggregator's own view's counters and
	// how well it keeps up.
	Fleet    Stats    `json:"fleet"`
	Consumer Consumer `json:"consumer"`
	// Misrouted counts the summaries of nodes that Partition places in
	// another partition: the cluster's mapping has another N.
	Misrouted uint64 `json:"misrouted"`
}

// RollupRow sums the gadgets sharing a key (an image or a gadget name).
type RollupRow struct {
	Key     string `json:"key"`
	Nodes   int    `json:"nodes"`
	Gadgets int    `json:"gadgets"`
	// Totals always carry programCount.
	Totals publish.MessageTotals `json:"totals"`
}

// AggregateOptions configures Aggregate.
type AggregateOptions struct {
	// SubjectPrefix defaults to publish.DefaultSubjectPrefix.
	SubjectPrefix string
	// Partition is i of N partitions; the cluster's subject mapping must
	// have N partitions (deploy/nats/partitions.conf).
	Partition, Partitions int
	// Interval between two rollups (default 2s); also the assumed
	// interval of nodes whose summaries carry none.
	Interval time.Duration
	// Count stops after that many rollups; 0 runs until ctx ends.
	Count  int
	Now    func() time.Time
	Logger zerolog.Logger
}

// Aggregate follows the summaries of partition opts.Partition, as the
// cluster's subject mapping delivers them, and publishes their rollup on
// <prefix>._fleet.<partition> every opts.Interval until ctx ends or
// opts.Count rollups are published.
func Aggregate(ctx context.Context, nc *nats.Conn, opts AggregateOptions) error {
	if opts.SubjectPrefix == "" {
		opts.SubjectPrefix = publish.DefaultSubjectPrefix
	}
	if err := publish.ValidateSubjectPrefix(opts.SubjectPrefix); err != nil {
		return err
	}
	if opts.Partitions < 1 || opts.Partitions > MaxPartitions || opts.Partition < 0 || opts.Partition >= opts.Partitions {
		return fmt.Errorf("partition %d of %d: want 0 <= i < N <= %d", opts.Partition, opts.Partitions, MaxPartitions)
	}
	if opts.Interval <= 0 {
		opts.Interval = 2 * time.Second
	}
	// Ends the subscription's decoding goroutine with the aggregator.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := New(opts.SubjectPrefix, opts.Interval, opts.Now)
	f.kinds = kinds{summaries: true}
	var misrouted atomic.Uint64
	ingest := func(subject string, data []byte) error {
		// The cluster's mapping and --partition must agree on N: a node
		// of another partition here means they do not.
		if node, ok := partitionedNode(opts.SubjectPrefix, subject); ok && Partition(node, opts.Partitions) != opts.Partition {
			if misrouted.Add(1) == 1 {
				opts.Logger.Warn().Str("subject", subject).Int("partitions", opts.Partitions).
					Msg("summary of another partition: the cluster's mapping has another partition count than --partition")
			}
		}
		return f.Ingest(subject, data)
	}
	subs, err := subscribeCoalesced(ctx, nc, ingest, opts.Logger, f, []string{partitionSubject(opts.SubjectPrefix, opts.Partition)})
	if err != nil {
		return err
	}
	defer unsubscribe(subs)
	var id [8]byte
	rand.Read(id[:]) //nolint:errcheck // never fails
	base := RollupMessage{Schema: RollupSchema, Type: TypeRollup, Partition: opts.Partition,
		Partitions: opts.Partitions, Instance: hex.EncodeToString(id[:]), Interval: opts.Interval}
	subject := rollupSubject(opts.SubjectPrefix, opts.Partition)
	ticker := time.NewTicker(opts.Interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		f.Expire()
		base.Seq++
		base.Misrouted = misrouted.Load()
		data, err := json.Marshal(f.Rollup(base))
		if err != nil {
			return fmt.Errorf("encoding rollup: %w", err)
		}
		if err := nc.Publish(subject, data); err != nil {
			opts.Logger.Warn().Err(err).Str("subject", subject).Msg("publishing rollup")
		}
		if opts.Count > 0 && base.Seq >= uint64(opts.Count) {
			return nc.Flush()
		}
	}
}

// Rollup fills base with the rollup of every node of the fleet: per
// image, per gadget name and the unowned programs, the view's counters
// and lag, and the time now.
func (f *Fleet) Rollup(base RollupMessage) RollupMessage {
	m := base
	m.Fleet, m.Consumer = f.Stats(), f.Consumer()
	m.Nodes = m.Fleet.Nodes
	m.Time = f.now().UTC()
	f.mu.Lock()
	defer f.mu.Unlock()
	var images, names, unowned []rollupSum
	if f.liveRollups() {
		images, names, unowned = f.liveRollup(byImage, false), f.liveRollup(byName, false), f.liveRollup(byUnowned, false)
	} else {
		// Images keyed with a 'g' in front, so that the unowned row's
		// empty key never meets the gadgets of an empty image.
		all := f.rollup(&f.images, "", true, false, func(id publish.GadgetIdentity) string { return "g" + id.Image })
		for _, r := range all {
			if r.key == "" {
				unowned = append(unowned, r)
				continue
			}
			r.key = r.key[1:]
			images = append(images, r)
		}
		names = f.rollup(&f.names, "", false, false, func(id publish.GadgetIdentity) string { return id.Name })
	}
	m.Images, m.GadgetNames = rollupRows(images), rollupRows(names)
	if len(unowned) > 0 {
		m.Unowned = rollupRows(unowned)[0]
	}
	return m
}

func rollupRows(sums []rollupSum) []RollupRow {
	rows := make([]RollupRow, len(sums))
	for i, r := range sums {
		rows[i] = RollupRow{Key: r.key, Nodes: r.nodes, Gadgets: r.gadgets, Totals: publish.MessageTotals(r.totals)}
	}
	return rows
}
