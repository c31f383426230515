package publish

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/bpfstats/tracker/internal/state"
)

// DefaultMetricsAddr is where the seed (Inspektor Gadget's metrics
// listener) serves /metrics; the tracker uses the same default.
const DefaultMetricsAddr = "127.0.0.1:2224"

// MetricsPath is the URL path ListenMetrics serves the exposition at.
const MetricsPath = "/metrics"

// Label names of the seed's series, and the one this tracker adds.
const (
	labelGadgetImage = "gadgetImage"
	labelGadgetName  = "gadgetName"
	labelProgName    = "progName"
	// labelProgID is added in All mode only: program names repeat (the
	// kernel keeps 15 bytes of them), so names alone do not identify a
	// program series.
	labelProgID = "progID"
	// labelOTelScope reproduces the label the seed's OTel Prometheus
	// exporter puts on every bpfstats series, so queries written against
	// the seed (…{otel_scope_name="bpfstats"}) keep matching.
	labelOTelScope = "otel_scope_name"
	otelScopeName  = "bpfstats"
)

// NATSStatus reports the NATS connection to the metrics. Its methods are
// called at scrape time, from the HTTP server's goroutines, and must be
// safe for concurrent use.
type NATSStatus interface {
	// Connected reports whether the NATS connection is currently up.
	Connected() bool
	// PublishErrors is the number of failed publishes since start.
	PublishErrors() uint64
}

// MetricsOptions configures NewMetrics. The zero value exports one series
// per gadget plus the tracker's own health and the Go runtime metrics.
type MetricsOptions struct {
	// All adds one series per program (owned or not), labelled with its
	// progID, next to the per-gadget series (--metrics-all).
	All bool
	// Version is the tracker's version for tracker_build_info.
	Version string
	// NATS, when not nil, is exported as tracker_nats_connected and
	// tracker_nats_publish_errors_total.
	NATS NATSStatus
	// OmitRuntimeMetrics leaves out the go_* and process_* collectors.
	OmitRuntimeMetrics bool
}

// Metrics is a Sink serving the latest Snapshot as Prometheus metrics.
//
// Series are built from the latest snapshot only, at scrape time: a
// program or gadget that goes away stops being exported after the next
// sweep, and counters carry the kernel's cumulative values rather than sums
// of deltas. Publish and Handler may be used concurrently.
type Metrics struct {
	opts MetricsOptions
	// inFlight bounds the scrapes served at once.
	inFlight chan struct{}

	mu     sync.Mutex
	sweeps sweepHistogram
	latest *metricsState // nil until the first Publish
	// counters keeps the seed's gadget-level counters monotonic per label
	// set, across the gadget instances that share it; only Publish uses it.
	counters state.CounterSets
}

// metricsState is what Metrics keeps of a snapshot: Publish must not keep
// the snapshot itself.
type metricsState struct {
	series   []rowSeries
	counters state.Counters
	source   string
	time     time.Time
	programs int
	gadgets  int
}

// rowSeries is one label set of the four seed series.
type rowSeries struct {
	labels    []string // gadgetImage, gadgetName, progName and, in All mode, progID
	mapCount  float64
	mapMemory float64
	runcount  float64
	runtime   float64
}

// sweepHistogram counts sweep durations for tracker_sweep_duration_seconds.
type sweepHistogram struct {
	bounds []float64 // the buckets' upper bounds
	counts []uint64  // per bucket, not cumulative
	sum    float64
	count  uint64
}

// newSweepHistogram returns an empty sweepHistogram. Sweeps take about
// 2 µs per program (see the kernel notes): 1 ms for a few hundred
// programs, seconds only when something is wrong.
func newSweepHistogram() sweepHistogram {
	bounds := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	return sweepHistogram{bounds: bounds, counts: make([]uint64, len(bounds))}
}

// observe counts one duration of v seconds.
func (h *sweepHistogram) observe(v float64) {
	for i, bound := range h.bounds {
		if v <= bound {
			h.counts[i]++
			break
		}
	}
	h.sum += v
	h.count++
}

// family is the histogram's metric family.
func (h *sweepHistogram) family() expoFamily {
	m := expoMetric{bounds: h.bounds, counts: make([]float64, len(h.bounds)), sum: h.sum, count: h.count}
	var cum uint64
	for i, n := range h.counts {
		cum += n
		m.counts[i] = float64(cum)
	}
	return expoFamily{name: "tracker_sweep_duration_seconds", help: "Time one stats sweep spent reading the kernel.",
		typ: typeHistogram, metrics: []expoMetric{m}}
}

// maxScrapesInFlight bounds the scrapes served at once: scrapes are
// cheap, and more than a few at once is a misconfiguration.
const maxScrapesInFlight = 4

// NewMetrics returns a Metrics; serve it with Handler.
func NewMetrics(opts MetricsOptions) (*Metrics, error) {
	return &Metrics{opts: opts, inFlight: make(chan struct{}, maxScrapesInFlight), sweeps: newSweepHistogram()}, nil
}

// Publish replaces the exported snapshot with snap. It keeps no reference
// to snap.
func (m *Metrics) Publish(snap *state.Snapshot) error {
	if snap == nil {
		return errors.New("publishing metrics: nil snapshot")
	}
	st := &metricsState{
		counters: snap.Counters,
		source:   snap.Source,
		time:     snap.Time,
		programs: len(snap.Programs),
		gadgets:  len(snap.Gadgets),
	}
	n := len(snap.Gadgets)
	if m.opts.All {
		n += len(snap.Programs)
	}
	st.series = make([]rowSeries, 0, n)
	// Gadgets whose names and images are equal would produce one label
	// set twice, which Prometheus rejects. Their rows are summed: with
	// only the seed's labels that is the cost of "that tool".
	index := make(map[string]int, len(snap.Gadgets))
	m.counters.Begin()
	for i := range snap.Gadgets {
		row := &snap.Gadgets[i]
		labels := []string{row.GadgetImage, row.GadgetName, "", ""}
		s := newRowSeries(row, labels, m.opts.All)
		key := seriesKey(s.labels)
		m.counters.Observe(key, gadgetMember(row), row.Totals)
		if j, ok := index[key]; ok {
			st.series[j].add(&s)
			continue
		}
		index[key] = len(st.series)
		st.series = append(st.series, s)
	}
	m.counters.End()
	for i := range st.series {
		r := m.counters.Retired(seriesKey(st.series[i].labels))
		st.series[i].runcount += float64(r.Runcount)
		st.series[i].runtime += float64(r.Runtime)
	}
	if m.opts.All {
		for i := range snap.Programs {
			row := snap.Programs[i]
			labels := []string{row.GadgetImage, row.GadgetName, row.ProgName, strconv.FormatUint(uint64(row.ProgID), 10)}
			st.series = append(st.series, newRowSeries(row, labels, true))
		}
	}

	m.mu.Lock()
	m.latest = st
	m.sweeps.observe(snap.SweepDuration.Seconds())
	m.mu.Unlock()
	return nil
}

// Handler serves the metrics in the Prometheus text format (version
// 0.0.4, gzipped when the scraper accepts it). Mount it anywhere;
// ListenMetrics mounts it at MetricsPath.
func (m *Metrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case m.inFlight <- struct{}{}:
			defer func() { <-m.inFlight }()
		default:
			http.Error(w, fmt.Sprintf("Limit of concurrent requests reached (%d), try again later.", maxScrapesInFlight),
				http.StatusServiceUnavailable)
			return
		}
		serveExposition(w, r, writeExposition(nil, m.families()))
	})
}

// families are the metric families of a scrape.
func (m *Metrics) families() []expoFamily {
	m.mu.Lock()
	st, sweeps := m.latest, m.sweeps.family()
	m.mu.Unlock()
	fams := append(trackerFamilies(m.opts, st), sweeps)
	if !m.opts.OmitRuntimeMetrics {
		fams = append(fams, goFamilies()...)
		fams = append(fams, processFamilies()...)
	}
	return fams
}

// gadgetMember names a gadget instance among those sharing a label set:
// its ID and, as a user-set ID may be shared, its owner's PID.
func gadgetMember(row *state.Row) string {
	if row.Loader == nil {
		return row.GadgetID
	}
	return row.GadgetID + "/" + strconv.FormatUint(uint64(row.Loader.PID), 10)
}

func newRowSeries(row *state.Row, labels []string, withProgID bool) rowSeries {
	if !withProgID {
		labels = labels[:3]
	}
	// Names come from processes (comm, exe, environment) and may hold any
	// bytes: a label that is not UTF-8 would abort the whole scrape, and one
	// of megabytes or with control characters has no place in a series.
	// The same cleaning as in NATS messages (CleanLabel).
	for i, l := range labels {
		labels[i] = CleanLabel(l)
	}
	return rowSeries{
		labels:    labels,
		mapCount:  float64(row.MapCount),
		mapMemory: float64(row.MapMemory),
		runcount:  float64(row.Runcount),
		runtime:   float64(row.Runtime),
	}
}

func (s *rowSeries) add(o *rowSeries) {
	s.mapCount += o.mapCount
	s.mapMemory += o.mapMemory
	s.runcount += o.runcount
	s.runtime += o.runtime
}

func seriesKey(labels []string) string {
	var n int
	for _, l := range labels {
		n += len(l) + 1
	}
	b := make([]byte, 0, n)
	for _, l := range labels {
		b = append(b, l...)
		b = append(b, 0) // label values are UTF-8 text; NUL separates them
	}
	return string(b)
}

// trackerFamilies are the seed's series and the tracker's own health, from
// st (nil before the first Publish). Names, types and help text of the
// seed's series follow its columns.
func trackerFamilies(opts MetricsOptions, st *metricsState) []expoFamily {
	build := expoFamily{name: "tracker_build_info", help: "The tracker's version and the Go version it was built with.", typ: typeGauge}
	build.add(1, "version", opts.Version, "goversion", runtime.Version())
	fams := []expoFamily{build}
	if nats := opts.NATS; nats != nil {
		fams = append(fams,
			gauge("tracker_nats_connected", "Whether the NATS connection is up (1) or not (0).", boolFloat(nats.Connected())),
			counter("tracker_nats_publish_errors_total", "NATS publishes that failed.", float64(nats.PublishErrors())))
	}
	if st == nil {
		return fams
	}
	fams = append(fams, seriesFamilies(st.series)...)
	ctr := &st.counters
	events := expoFamily{name: "tracker_events_total", help: "Program events applied to the inventory, by kind (load, release).", typ: typeCounter}
	events.add(float64(ctr.EventsLoad), "kind", "load")
	events.add(float64(ctr.EventsRelease), "kind", "release")
	repairs := expoFamily{name: "tracker_inventory_repairs_total", typ: typeCounter,
		help: "Programs a sweep's audit found missing from the inventory (kind=added: a load event was lost or late) or still in it though gone from the kernel (kind=removed)."}
	repairs.add(float64(ctr.RepairsAdded), "kind", "added")
	repairs.add(float64(ctr.RepairsRemoved), "kind", "removed")
	fams = append(fams, events, repairs,
		counter("tracker_events_lost_total", "Program events the event source reported as lost.", float64(ctr.EventsLost)),
		counter("tracker_resyncs_total", "Full inventory resyncs from the kernel's program IDs.", float64(ctr.Resyncs)),
		counter("tracker_sweeps_total", "Stats sweeps completed.", float64(ctr.Sweeps)),
		counter("tracker_loads_gone_total", "Load events of programs already released when applied: published with their release, never inserted.", float64(ctr.LoadsGone)),
		counter("tracker_attributions_rejected_total", "Load events whose PID named a process started after the event (a reused PID): not attributed.", float64(ctr.AttributionsRejected)),
		counter("tracker_events_dropped_total", "Applied events not handed to the publishers because their queue was full (a slow NATS server); the inventory has them.", float64(ctr.EventsDropped)),
		counter("tracker_snapshots_dropped_total", "Interval snapshots replaced by a newer one before a slow publisher took them.", float64(ctr.SnapshotsDropped)),
		counter("tracker_registrations_removed_total", "Entries of the registry map (docs/registration.md) removed because their program is gone.", float64(ctr.RegistrationsRemoved)),
		gauge("tracker_programs", "eBPF programs in the inventory, owned or not.", float64(st.programs)),
		gauge("tracker_gadgets", "Gadgets in the inventory.", float64(st.gadgets)))
	if !st.time.IsZero() {
		fams = append(fams, gauge("tracker_last_sweep_timestamp_seconds", "Unix time of the latest sweep.", float64(st.time.UnixNano())/1e9))
	}
	if st.source != "" {
		source := expoFamily{name: "tracker_event_source_info", help: "The event source in use (fentry, perf or poll).", typ: typeGauge}
		source.add(1, "source", st.source)
		fams = append(fams, source)
	}
	return fams
}

// seriesFamilies are the seed's four series, one metric per label set of
// series.
func seriesFamilies(series []rowSeries) []expoFamily {
	names := []string{labelGadgetImage, labelGadgetName, labelProgName, labelProgID}
	fams := []expoFamily{
		{name: "mapCount", help: "Number of maps used by the eBPF program or Gadget", typ: typeGauge},
		{name: "mapMemory", help: "Memory used by maps in bytes", typ: typeGauge},
		{name: "runcount_total", help: "Number of times the eBPF program or Gadget has run", typ: typeCounter},
		{name: "runtime_total", help: "Time that the eBPF program or Gadget has run in nanoseconds", typ: typeCounter},
	}
	for i := range fams {
		fams[i].metrics = make([]expoMetric, 0, len(series))
	}
	for i := range series {
		s := &series[i]
		// The label values in the order of names; progID in All mode
		// only (see newRowSeries).
		pairs := make([]string, 0, 2*len(names)+2)
		for k, v := range s.labels {
			pairs = append(pairs, names[k], v)
		}
		pairs = append(pairs, labelOTelScope, otelScopeName)
		for k, v := range []float64{s.mapCount, s.mapMemory, s.runcount, s.runtime} {
			fams[k].add(v, pairs...)
		}
	}
	return fams
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// MetricsServer serves a metrics handler on a TCP address.
type MetricsServer struct {
	listener net.Listener
	server   *http.Server
	done     chan struct{} // closed when Serve returns
	serveErr error

	closeOnce sync.Once
	closeErr  error
}

// ListenMetrics binds addr (host:port) and serves h at MetricsPath in the
// background until Close. Binding happens before it returns, so an address
// already in use is reported here, not later.
func ListenMetrics(addr string, h http.Handler) (*MetricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("listening for metrics on %s: address already in use by another process (another tracker, or an ig daemon's metrics listener?): %w", addr, err)
	}
	if err != nil {
		return nil, fmt.Errorf("listening for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle(MetricsPath, h)
	s := &MetricsServer{
		listener: ln,
		server: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.server.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.serveErr = fmt.Errorf("serving metrics on %s: %w", ln.Addr(), err)
		}
	}()
	return s, nil
}

// Addr is the bound address (useful after listening on port 0).
func (s *MetricsServer) Addr() net.Addr { return s.listener.Addr() }

// Close stops the server, giving scrapes in flight up to five seconds, and
// reports why serving stopped if it stopped by itself. It is idempotent.
func (s *MetricsServer) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.server.Shutdown(ctx); err != nil {
			s.closeErr = fmt.Errorf("shutting down metrics server: %w", err)
			s.server.Close()
		}
		<-s.done
		s.closeErr = errors.Join(s.closeErr, s.serveErr)
	})
	return s.closeErr
}
