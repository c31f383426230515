package fleet

import (
	"encoding/json"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"time"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/rs/zerolog"
)

// Options configures Run and Fleet.Render.
type Options struct {
	// SubjectPrefix defaults to publish.DefaultSubjectPrefix.
	SubjectPrefix string
	// All shows program rows, unowned programs included, instead of
	// gadget rows.
	All bool
	// By is "" or "image" (one row per gadget image across nodes), or
	// ByUnit, ByContainer, ByPod (GroupRows).
	By string
	// NodeGlob keeps the nodes whose name matches (path.Match); "" keeps all.
	NodeGlob string
	// JSON prints one JSON array per print instead of a table.
	JSON bool
	// Columns of the row tables (see publish.SelectColumns); nil means the
	// default columns. NODENAME always comes first.
	Columns []publish.Column
	// Interval between prints (default 2s); also the assumed interval of
	// nodes whose messages carry none.
	Interval time.Duration
	// Count stops after that many prints; 0 runs until ctx ends.
	Count int
	// KV reads the key-value bucket first so that the first print shows
	// the whole fleet, without waiting an interval.
	KV bool
	// KVBucket defaults to publish.DefaultKVBucket.
	KVBucket string
	// Now is the clock for node expiry; time.Now when nil.
	Now    func() time.Time
	Logger zerolog.Logger
}

func (o *Options) setDefaults() error {
	if o.SubjectPrefix == "" {
		o.SubjectPrefix = publish.DefaultSubjectPrefix
	}
	if err := publish.ValidateSubjectPrefix(o.SubjectPrefix); err != nil {
		return err
	}
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.KVBucket == "" {
		o.KVBucket = publish.DefaultKVBucket
	}
	if !ValidBy(o.By) {
		return fmt.Errorf("invalid rollup %q: want image, unit, container, pod or nothing", o.By)
	}
	if _, err := path.Match(o.NodeGlob, ""); err != nil {
		return fmt.Errorf("invalid node pattern %q: %w", o.NodeGlob, err)
	}
	return nil
}

// Print is one print of "tracker top -o json", one JSON object per line:
// the fleet's counters, how well the view keeps up, then the rows (Row,
// or ImageRow with --by image).
type Print[R any] struct {
	// Time is the consumer's clock at the print.
	Time     time.Time `json:"time"`
	Fleet    Stats     `json:"fleet"`
	Consumer Consumer  `json:"consumer"`
	Rows     []R       `json:"rows"`
}

// Render writes the view opts selects: a "#" line of the fleet's counters
// then the table of publish.WriteTable with a NODENAME first column, or
// one JSON Print on one line.
func (f *Fleet) Render(w io.Writer, opts Options) error {
	stats, consumer, now := f.Stats(), f.Consumer(), f.now().UTC()
	if isPlacementBy(opts.By) {
		return f.renderGroups(w, opts, now, stats, consumer)
	}
	if opts.By == "image" {
		rows := f.ImageRows(opts.NodeGlob, opts.All)
		if opts.JSON {
			return writePrint(w, Print[ImageRow]{Time: now, Fleet: stats, Consumer: consumer, Rows: rows})
		}
		writeStatsLine(w, now, stats, consumer)
		return writeImageTable(w, "GADGETIMAGE", rows)
	}
	var rows []Row
	if opts.All {
		rows = f.ProgramRows(opts.NodeGlob)
	} else {
		rows = f.GadgetRows(opts.NodeGlob)
	}
	if opts.JSON {
		return writePrint(w, Print[Row]{Time: now, Fleet: stats, Consumer: consumer, Rows: rows})
	}
	cols, err := fleetColumns(opts.Columns)
	if err != nil {
		return err
	}
	writeStatsLine(w, now, stats, consumer)
	table := make([]*state.Row, len(rows))
	for i := range rows {
		table[i] = &rows[i].Row
	}
	if err := publish.WriteTable(w, cols, table); err != nil {
		return err
	}
	// A blank line between prints.
	_, err = io.WriteString(w, "\n")
	return err
}

func writePrint[R any](w io.Writer, p Print[R]) error {
	if p.Rows == nil {
		p.Rows = []R{}
	}
	data, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encoding fleet rows: %w", err)
	}
	_, err = w.Write(append(data, '\n'))
	return err
}

// writeStatsLine writes the "#" line heading a table: the time, the nodes
// shown, what the view refused or cut since it started, and how far
// behind it is (lag, in time and in the nodes' intervals; nodes behind;
// messages pending and dropped by the NATS client; summaries skipped for a
// newer one).
func writeStatsLine(w io.Writer, now time.Time, s Stats, c Consumer) {
	fmt.Fprintf(w, "# %s nodes=%d accepted=%d rejected=%d stale=%d dropped=%d capped=%d incomplete=%d expired=%d lag=%s lagIntervals=%.2f behind=%d pending=%d slowDrops=%d skipped=%d\n",
		now.Format("2006-01-02T15:04:05Z"), s.Nodes, s.Accepted, s.Rejected(), s.Stale, s.Dropped(),
		s.CappedLabels+s.CappedLists, s.IncompleteIntervals, s.ExpiredNodes,
		c.Lag.Round(time.Millisecond), c.LagIntervals, c.Behind, c.Pending, c.Dropped, c.Skipped)
}

// fleetColumns puts the nodeName column first, before cols or the default
// columns.
func fleetColumns(cols []publish.Column) ([]publish.Column, error) {
	if cols == nil {
		var err error
		if cols, err = publish.SelectColumns(nil); err != nil {
			return nil, err
		}
	}
	all := publish.Columns()
	i := slices.IndexFunc(all, func(c publish.Column) bool { return c.Name == "nodeName" })
	if i < 0 {
		return cols, nil
	}
	out := []publish.Column{all[i]}
	for _, c := range cols {
		if c.Name != "nodeName" {
			out = append(out, c)
		}
	}
	return out, nil
}

// writeImageTable writes a rollup aligned like publish.WriteTable, its
// key (the image, or the gadget name) under keyHeader.
func writeImageTable(w io.Writer, keyHeader string, rows []ImageRow) error {
	header := []string{keyHeader, "NODES", "GADGETS", "PROGRAMS", "RUNTIME", "RUNCOUNT", "MAPMEMORY", "MAPCOUNT", "CPUPERCENT"}
	cells := [][]string{header}
	for _, r := range rows {
		image := publish.TableCell(r.GadgetImage)
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
	return writeAligned(w, cells)
}
