package publish

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/state"
)

// ExpiryIntervals is how many of its intervals a node may stay silent
// before the fleet view drops it.
const ExpiryIntervals = 3

// Fleet is the latest state of every node publishing under a subject
// prefix, built from their interval messages. It is safe for concurrent
// use.
type Fleet struct {
	now             func() time.Time
	defaultInterval time.Duration

	mu      sync.Mutex
	nodes   map[string]*fleetNode
	invalid uint64
}

type fleetNode struct {
	// lastSeen is when a message of the node last arrived.
	lastSeen time.Time
	// interval is the node's publishing interval.
	interval time.Duration
	// latest is the newest snapshot time seen; older messages are stale.
	latest  time.Time
	info    *NodeMessage
	gadgets map[string]*GadgetMessage
	unowned *UnownedMessage
}

// NewFleet returns an empty fleet. defaultInterval is assumed for nodes
// whose messages carry neither interval nor elapsed time; now is time.Now
// when nil.
func NewFleet(defaultInterval time.Duration, now func() time.Time) *Fleet {
	if now == nil {
		now = time.Now
	}
	if defaultInterval <= 0 {
		defaultInterval = 2 * time.Second
	}
	return &Fleet{now: now, defaultInterval: defaultInterval, nodes: make(map[string]*fleetNode)}
}

// Ingest applies one message as received now. Event messages only mark
// their node alive. Messages of another schema are an error.
func (f *Fleet) Ingest(data []byte) error {
	return f.ingestAt(data, f.now())
}

// Invalid counts messages Ingest rejected.
func (f *Fleet) Invalid() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.invalid
}

func (f *Fleet) ingestAt(data []byte, seen time.Time) error {
	var probe struct {
		Schema string `json:"schema"`
		Type   string `json:"type"`
		Node   string `json:"node"`
	}
	err := json.Unmarshal(data, &probe)
	if err == nil && probe.Schema != SchemaVersion {
		err = fmt.Errorf("schema %q, want %q", probe.Schema, SchemaVersion)
	}
	if err == nil && probe.Node == "" {
		err = errors.New("no node")
	}
	var (
		gm *GadgetMessage
		um *UnownedMessage
		nm *NodeMessage
		h  *Header
	)
	if err == nil {
		switch probe.Type {
		case TypeGadget:
			gm = new(GadgetMessage)
			h = &gm.Header
			err = json.Unmarshal(data, gm)
		case TypeUnowned:
			um = new(UnownedMessage)
			h = &um.Header
			err = json.Unmarshal(data, um)
		case TypeNode:
			nm = new(NodeMessage)
			h = &nm.Header
			err = json.Unmarshal(data, nm)
		case TypeEvent:
		default:
			err = fmt.Errorf("unknown message type %q", probe.Type)
		}
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		f.invalid++
		return fmt.Errorf("decoding fleet message: %w", err)
	}
	n, ok := f.nodes[probe.Node]
	if !ok {
		n = &fleetNode{gadgets: make(map[string]*GadgetMessage)}
		f.nodes[probe.Node] = n
	}
	if seen.After(n.lastSeen) {
		n.lastSeen = seen
	}
	if h == nil {
		return nil
	}
	if h.Interval > 0 {
		n.interval = h.Interval
	} else if h.Elapsed > 0 {
		n.interval = h.Elapsed
	}
	if h.Time.Before(n.latest) {
		// Older than what is shown (a key-value entry read after a live
		// message, or a late message): drop it.
		return nil
	}
	n.latest = h.Time
	switch {
	case gm != nil:
		n.gadgets[gm.Gadget.ID] = gm
	case um != nil:
		n.unowned = um
	case nm != nil:
		// The node message closes an interval: gadgets not published in
		// it have ended.
		n.info = nm
		for id, g := range n.gadgets {
			if g.Seq != nm.Seq {
				delete(n.gadgets, id)
			}
		}
		if n.unowned != nil && n.unowned.Seq != nm.Seq {
			n.unowned = nil
		}
	}
	return nil
}

// Expire drops the nodes silent for more than ExpiryIntervals of their
// intervals and returns their names.
func (f *Fleet) Expire() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	var gone []string
	for name, n := range f.nodes {
		iv := n.interval
		if iv <= 0 {
			iv = f.defaultInterval
		}
		if now.Sub(n.lastSeen) > ExpiryIntervals*iv {
			delete(f.nodes, name)
			gone = append(gone, name)
		}
	}
	slices.Sort(gone)
	return gone
}

// Nodes returns the names of the known nodes, sorted.
func (f *Fleet) Nodes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.nodes))
	for name := range f.nodes {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// NodeInfo returns the latest _node message of a node, or nil.
func (f *Fleet) NodeInfo(node string) *NodeMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n, ok := f.nodes[node]; ok {
		return n.info
	}
	return nil
}

// matching returns the nodes whose name matches glob (all for ""), sorted.
// The caller holds f.mu.
func (f *Fleet) matching(glob string) []string {
	var names []string
	for name := range f.nodes {
		if glob != "" {
			if ok, _ := path.Match(glob, name); !ok {
				continue
			}
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// GadgetRows returns one row per gadget of the nodes matching glob, sorted
// by node, gadget name and ID.
func (f *Fleet) GadgetRows(glob string) []state.Row {
	f.mu.Lock()
	defer f.mu.Unlock()
	rows := []state.Row{}
	for _, name := range f.matching(glob) {
		n := f.nodes[name]
		start := len(rows)
		for _, g := range n.gadgets {
			rows = append(rows, gadgetRow(name, g))
		}
		slices.SortFunc(rows[start:], func(a, b state.Row) int {
			return cmp.Or(cmp.Compare(a.GadgetName, b.GadgetName), cmp.Compare(a.GadgetID, b.GadgetID))
		})
	}
	return rows
}

func gadgetRow(node string, g *GadgetMessage) state.Row {
	owner := g.Owner
	r := state.Row{
		NodeName:    node,
		GadgetID:    g.Gadget.ID,
		GadgetName:  g.Gadget.Name,
		GadgetImage: g.Gadget.Image,
		Totals:      state.Totals(g.Totals),
		Loader:      &owner,
		PIDs:        []uint32{},
		Comms:       []string{},
	}
	// A row's comms are the distinct names of its pids, not one per pid:
	// take the union of both lists, as the tracker does.
	for _, p := range g.Programs {
		for _, pid := range p.PIDs {
			if !slices.Contains(r.PIDs, pid) {
				r.PIDs = append(r.PIDs, pid)
			}
		}
		for _, c := range p.Comms {
			if !slices.Contains(r.Comms, c) {
				r.Comms = append(r.Comms, c)
			}
		}
	}
	slices.Sort(r.PIDs)
	return r
}

// ProgramRows returns one row per program of the nodes matching glob,
// unowned ones included, sorted by node and program ID.
func (f *Fleet) ProgramRows(glob string) []state.Row {
	f.mu.Lock()
	defer f.mu.Unlock()
	rows := []state.Row{}
	for _, name := range f.matching(glob) {
		n := f.nodes[name]
		start := len(rows)
		for _, g := range n.gadgets {
			for _, p := range g.Programs {
				p.NodeName = name
				rows = append(rows, p)
			}
		}
		if n.unowned != nil {
			for _, p := range n.unowned.Programs {
				p.NodeName = name
				rows = append(rows, p)
			}
		}
		slices.SortFunc(rows[start:], func(a, b state.Row) int { return cmp.Compare(a.ProgID, b.ProgID) })
	}
	return rows
}

// ImageRow is the rollup of the gadgets of one image across the fleet.
type ImageRow struct {
	// GadgetImage is empty for the unowned programs.
	GadgetImage string `json:"gadgetImage"`
	// Nodes counts the nodes running the image; NodeNames lists them.
	Nodes     int      `json:"nodes"`
	NodeNames []string `json:"nodeNames"`
	Gadgets   int      `json:"gadgets"`
	// Totals sum the gadgets' message totals. ProgramCount is at least 1
	// (a gadget has programs; unowned programs make a row only when there
	// are some), so the JSON always carries programCount.
	state.Totals
}

// ImageRows sums the gadgets of the nodes matching glob per image, sorted
// by image. With unowned, the unowned programs of every node are one more
// row with an empty image.
func (f *Fleet) ImageRows(glob string, unowned bool) []ImageRow {
	f.mu.Lock()
	defer f.mu.Unlock()
	byImage := make(map[string]*ImageRow)
	add := func(image, node string, t MessageTotals, gadgets int) {
		r, ok := byImage[image]
		if !ok {
			r = &ImageRow{GadgetImage: image, NodeNames: []string{}}
			byImage[image] = r
		}
		if !slices.Contains(r.NodeNames, node) {
			r.NodeNames = append(r.NodeNames, node)
		}
		r.Gadgets += gadgets
		// Gadgets of one image on one node may share maps; they are
		// summed as before, each gadget's own maps counted once.
		r.Add(state.Totals(t))
	}
	for _, name := range f.matching(glob) {
		n := f.nodes[name]
		for _, g := range n.gadgets {
			add(g.Gadget.Image, name, g.Totals, 1)
		}
		if unowned && n.unowned != nil && len(n.unowned.Programs) > 0 {
			add("", name, n.unowned.Totals, 0)
		}
	}
	rows := make([]ImageRow, 0, len(byImage))
	for _, r := range byImage {
		slices.Sort(r.NodeNames)
		r.Nodes = len(r.NodeNames)
		rows = append(rows, *r)
	}
	slices.SortFunc(rows, func(a, b ImageRow) int { return cmp.Compare(a.GadgetImage, b.GadgetImage) })
	return rows
}

// TopOptions configures RunTop and Fleet.Render.
type TopOptions struct {
	// SubjectPrefix defaults to DefaultSubjectPrefix.
	SubjectPrefix string
	// All shows program rows, unowned programs included, instead of
	// gadget rows.
	All bool
	// By is "" or "image" (one row per gadget image across nodes).
	By string
	// NodeGlob keeps the nodes whose name matches (path.Match); "" keeps all.
	NodeGlob string
	// JSON prints one JSON array per print instead of a table.
	JSON bool
	// Columns of the row tables (see SelectColumns); nil means the
	// default columns. NODENAME always comes first.
	Columns []Column
	// Interval between prints (default 2s); also the assumed interval of
	// nodes whose messages carry none.
	Interval time.Duration
	// Count stops after that many prints; 0 runs until ctx ends.
	Count int
	// KV reads the key-value bucket first so that the first print shows
	// the whole fleet, without waiting an interval.
	KV bool
	// KVBucket defaults to DefaultKVBucket.
	KVBucket string
	// Now is the clock for node expiry; time.Now when nil.
	Now    func() time.Time
	Logger zerolog.Logger
}

func (o *TopOptions) setDefaults() error {
	if o.SubjectPrefix == "" {
		o.SubjectPrefix = DefaultSubjectPrefix
	}
	if err := validatePrefix(o.SubjectPrefix); err != nil {
		return err
	}
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.KVBucket == "" {
		o.KVBucket = DefaultKVBucket
	}
	switch o.By {
	case "", "image":
	default:
		return fmt.Errorf("invalid rollup %q: want \"image\" or nothing", o.By)
	}
	if _, err := path.Match(o.NodeGlob, ""); err != nil {
		return fmt.Errorf("invalid node pattern %q: %w", o.NodeGlob, err)
	}
	return nil
}

// Render writes the view opts selects: the table of WriteTable with a
// NODENAME first column, or one JSON array on one line.
func (f *Fleet) Render(w io.Writer, opts TopOptions) error {
	if opts.By == "image" {
		rows := f.ImageRows(opts.NodeGlob, opts.All)
		if opts.JSON {
			data, err := json.Marshal(rows)
			if err != nil {
				return fmt.Errorf("encoding fleet rows: %w", err)
			}
			_, err = w.Write(append(data, '\n'))
			return err
		}
		return writeImageTable(w, rows)
	}
	var rows []state.Row
	if opts.All {
		rows = f.ProgramRows(opts.NodeGlob)
	} else {
		rows = f.GadgetRows(opts.NodeGlob)
	}
	if opts.JSON {
		return WriteJSON(w, rows)
	}
	cols, err := fleetColumns(opts.Columns)
	if err != nil {
		return err
	}
	if err := WriteTable(w, cols, rows); err != nil {
		return err
	}
	// A blank line between prints.
	_, err = io.WriteString(w, "\n")
	return err
}

// fleetColumns puts the nodeName column first, before cols or the default
// columns.
func fleetColumns(cols []Column) ([]Column, error) {
	if cols == nil {
		var err error
		if cols, err = SelectColumns(nil); err != nil {
			return nil, err
		}
	}
	all := Columns()
	i := slices.IndexFunc(all, func(c Column) bool { return c.Name == "nodeName" })
	if i < 0 {
		return cols, nil
	}
	out := []Column{all[i]}
	for _, c := range cols {
		if c.Name != "nodeName" {
			out = append(out, c)
		}
	}
	return out, nil
}

// writeImageTable writes the image rollup aligned like WriteTable.
func writeImageTable(w io.Writer, rows []ImageRow) error {
	header := []string{"GADGETIMAGE", "NODES", "GADGETS", "PROGRAMS", "RUNTIME", "RUNCOUNT", "MAPMEMORY", "MAPCOUNT", "CPUPERCENT"}
	cells := [][]string{header}
	for _, r := range rows {
		image := r.GadgetImage
		if image == "" {
			image = "(unowned)"
		}
		cells = append(cells, []string{
			image, strconv.Itoa(r.Nodes), strconv.Itoa(r.Gadgets), strconv.Itoa(r.ProgramCount),
			strconv.FormatUint(r.Runtime, 10), strconv.FormatUint(r.Runcount, 10),
			strconv.FormatUint(r.MapMemory, 10), strconv.Itoa(r.MapCount),
			strconv.FormatFloat(r.CPUPercent, 'f', 2, 64),
		})
	}
	width := make([]int, len(header))
	for _, line := range cells {
		for j, v := range line {
			width[j] = max(width[j], len(v))
		}
	}
	var b strings.Builder
	for _, line := range cells {
		for j, v := range line {
			pad := strings.Repeat(" ", width[j]-len(v))
			if j == 0 {
				b.WriteString(v + pad)
			} else {
				b.WriteString(" " + pad + v)
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// LoadKV reads every entry of the key-value bucket into the fleet, each as
// seen when it was written.
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
			// A bad entry does not hide the others; Invalid counts it.
			_ = f.ingestAt(e.Value(), e.Created())
		case <-ctx.Done():
			return fmt.Errorf("reading key-value bucket %s: %w", bucket, ctx.Err())
		}
	}
}

// RunTop shows the fleet publishing under opts.SubjectPrefix: it
// subscribes to <prefix>.>, optionally loads the key-value bucket first,
// and prints the view once per opts.Interval (at once after loading the
// bucket) until ctx ends or opts.Count prints are done. Nodes silent for
// ExpiryIntervals of their intervals are dropped.
func RunTop(ctx context.Context, nc *nats.Conn, opts TopOptions, out io.Writer) error {
	if err := opts.setDefaults(); err != nil {
		return err
	}
	log := opts.Logger
	f := NewFleet(opts.Interval, opts.Now)
	subject := opts.SubjectPrefix + ".>"
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if err := f.Ingest(m.Data); err != nil {
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
