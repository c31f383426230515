package fleet

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// MaxRollupRows caps the image and gadget name rows taken from one
// rollup.
const MaxRollupRows = 10000

// FleetPrint is one print of "tracker top --fleet -o json": the merged
// rollups of the partitions.
type FleetPrint struct {
	// Time is the consumer's clock at the print.
	Time time.Time `json:"time"`
	// Partitions is N, of the newest rollup; Seen lists the partitions
	// with a current rollup, Missing those without.
	Partitions int   `json:"partitions"`
	Seen       []int `json:"seen"`
	Missing    []int `json:"missing"`
	// Nodes sums the partitions' nodes.
	Nodes       int         `json:"nodes"`
	Images      []RollupRow `json:"images"`
	GadgetNames []RollupRow `json:"gadgetNames"`
	Unowned     RollupRow   `json:"unowned"`
	// Lag is the largest lag of an aggregator plus the age of its rollup;
	// Behind sums the aggregators' nodes behind, Dropped the messages
	// their NATS clients dropped; Rejected counts the rollups this view
	// refused.
	Lag      time.Duration `json:"lag"`
	Behind   int           `json:"behind"`
	Dropped  uint64        `json:"dropped"`
	Rejected uint64        `json:"rejected"`
	// Misrouted sums the aggregators' summaries of another partition:
	// the cluster's mapping and their --partition disagree on N.
	Misrouted uint64 `json:"misrouted"`
}

// Rollups keeps the newest rollup of every partition. It is safe for
// concurrent use.
type Rollups struct {
	prefix string
	now    func() time.Time

	mu       sync.Mutex
	latest   map[int]rollupSeen
	rejected uint64
}

type rollupSeen struct {
	msg  RollupMessage
	seen time.Time
}

// NewRollups returns an empty set of the rollups published under prefix.
func NewRollups(prefix string, now func() time.Time) *Rollups {
	if now == nil {
		now = time.Now
	}
	return &Rollups{prefix: prefix, now: now, latest: make(map[int]rollupSeen)}
}

// Ingest takes one rollup received on <prefix>._fleet.<partition>: the
// partition is the subject's; an older rollup of the partition's
// aggregator is stale.
func (r *Rollups) Ingest(subject string, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.ingest(subject, data)
	if err != nil {
		r.rejected++
	}
	return err
}

func (r *Rollups) ingest(subject string, data []byte) error {
	tok, ok := strings.CutPrefix(subject, r.prefix+"."+FleetToken+".")
	p, err := strconv.Atoi(tok)
	if !ok || err != nil || p < 0 || p >= MaxPartitions {
		return fmt.Errorf("subject %.300q: want %s.%s.<partition>", subject, r.prefix, FleetToken)
	}
	var m RollupMessage
	if err := unmarshal(data, &m); err != nil {
		return fmt.Errorf("decoding rollup of %.300q: %w", subject, err)
	}
	switch {
	case m.Schema != RollupSchema || m.Type != TypeRollup:
		return fmt.Errorf("rollup of %.300q: schema %.100q type %.100q", subject, m.Schema, m.Type)
	case m.Partition != p || m.Partitions <= p || m.Partitions > MaxPartitions:
		return fmt.Errorf("rollup of %.300q: partition %d of %d", subject, m.Partition, m.Partitions)
	case len(m.Images) > MaxRollupRows || len(m.GadgetNames) > MaxRollupRows:
		return fmt.Errorf("rollup of %.300q: over %d rows", subject, MaxRollupRows)
	case m.Interval != 0 && (m.Interval < MinInterval || m.Interval > MaxInterval):
		return fmt.Errorf("rollup of %.300q: interval %v", subject, m.Interval)
	}
	if old, ok := r.latest[p]; ok && old.msg.Instance == m.Instance && m.Seq < old.msg.Seq {
		return fmt.Errorf("rollup of %.300q: stale seq %d", subject, m.Seq)
	}
	var st Stats
	for _, rows := range [][]RollupRow{m.Images, m.GadgetNames} {
		for i := range rows {
			st.capLabel(&rows[i].Key)
		}
	}
	r.latest[p] = rollupSeen{msg: m, seen: r.now()}
	return nil
}

// Merged returns the sum of the current rollups, of the partition count
// of the newest one; rollups silent for ExpiryIntervals of their
// intervals are dropped.
func (r *Rollups) Merged() FleetPrint {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	out := FleetPrint{Time: now.UTC(), Seen: []int{}, Missing: []int{}, Rejected: r.rejected}
	var newest time.Time
	for p, s := range r.latest {
		iv := s.msg.Interval
		if iv <= 0 {
			iv = MaxInterval
		}
		if now.Sub(s.seen) > ExpiryIntervals*iv {
			delete(r.latest, p)
			continue
		}
		if !s.seen.Before(newest) {
			newest, out.Partitions = s.seen, s.msg.Partitions
		}
	}
	images := map[string]*RollupRow{}
	names := map[string]*RollupRow{}
	for p := range out.Partitions {
		s, ok := r.latest[p]
		if !ok || s.msg.Partitions != out.Partitions {
			out.Missing = append(out.Missing, p)
			continue
		}
		out.Seen = append(out.Seen, p)
		m := s.msg
		out.Nodes += m.Nodes
		out.Lag = max(out.Lag, m.Consumer.Lag+max(0, now.Sub(s.seen)))
		out.Behind += m.Consumer.Behind
		out.Dropped += m.Consumer.Dropped
		out.Misrouted += m.Misrouted
		sumRows(images, m.Images)
		sumRows(names, m.GadgetNames)
		addRollupRow(&out.Unowned, m.Unowned)
	}
	out.Images, out.GadgetNames = sortedRows(images), sortedRows(names)
	return out
}

func sumRows(into map[string]*RollupRow, rows []RollupRow) {
	for _, row := range rows {
		r, ok := into[row.Key]
		if !ok {
			r = &RollupRow{Key: row.Key}
			into[row.Key] = r
		}
		addRollupRow(r, row)
	}
}

// addRollupRow adds o to r: the partitions' nodes are distinct, so nodes
// add up too.
func addRollupRow(r *RollupRow, o RollupRow) {
	r.Nodes += o.Nodes
	r.Gadgets += o.Gadgets
	t := state.Totals(r.Totals)
	t.Add(state.Totals(o.Totals))
	r.Totals = publish.MessageTotals(t)
}

func sortedRows(m map[string]*RollupRow) []RollupRow {
	rows := make([]RollupRow, 0, len(m))
	for _, r := range m {
		rows = append(rows, *r)
	}
	slices.SortFunc(rows, func(a, b RollupRow) int { return cmp.Compare(a.Key, b.Key) })
	return rows
}

// RunRollups shows the fleet's merged rollups, those the aggregators
// publish on <prefix>._fleet.*, once per opts.Interval until ctx ends or
// opts.Count prints are done.
func RunRollups(ctx context.Context, nc *nats.Conn, opts Options, out io.Writer) error {
	if err := opts.setDefaults(); err != nil {
		return err
	}
	r := NewRollups(opts.SubjectPrefix, opts.Now)
	subject := opts.SubjectPrefix + "." + FleetToken + ".*"
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if err := r.Ingest(m.Subject, m.Data); err != nil {
			opts.Logger.Debug().Err(err).Str("subject", m.Subject).Msg("ignoring rollup")
		}
	})
	if err != nil {
		return fmt.Errorf("subscribing to %s: %w", subject, err)
	}
	defer sub.Unsubscribe() //nolint:errcheck // the connection's owner closes it
	ticker := time.NewTicker(opts.Interval)
	defer ticker.Stop()
	for prints := 0; ; {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		if err := writeFleetPrint(out, r.Merged(), opts.JSON); err != nil {
			return err
		}
		if prints++; opts.Count > 0 && prints >= opts.Count {
			return nil
		}
	}
}

// writeFleetPrint writes the merged rollups: one JSON object on a line,
// or a "#" line and the image and gadget name tables.
func writeFleetPrint(w io.Writer, p FleetPrint, asJSON bool) error {
	if asJSON {
		data, err := json.Marshal(p)
		if err != nil {
			return fmt.Errorf("encoding fleet rollup: %w", err)
		}
		_, err = w.Write(append(data, '\n'))
		return err
	}
	fmt.Fprintf(w, "# %s partitions=%d/%d missing=%v nodes=%d lag=%s behind=%d slowDrops=%d rejected=%d misrouted=%d\n",
		p.Time.Format("2006-01-02T15:04:05Z"), len(p.Seen), p.Partitions, p.Missing, p.Nodes,
		p.Lag.Round(time.Millisecond), p.Behind, p.Dropped, p.Rejected, p.Misrouted)
	images := rollupTableRows(p.Images)
	if p.Unowned.Totals.ProgramCount > 0 {
		images = append([]ImageRow{{Nodes: p.Unowned.Nodes, Totals: state.Totals(p.Unowned.Totals)}}, images...)
	}
	if err := writeImageTable(w, "GADGETIMAGE", images); err != nil {
		return err
	}
	return writeImageTable(w, "GADGETNAME", rollupTableRows(p.GadgetNames))
}

func rollupTableRows(rows []RollupRow) []ImageRow {
	out := make([]ImageRow, len(rows))
	for i, r := range rows {
		out[i] = ImageRow{GadgetImage: r.Key, Nodes: r.Nodes, Gadgets: r.Gadgets, Totals: state.Totals(r.Totals)}
	}
	return out
}
