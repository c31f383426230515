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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

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
	opts     MetricsOptions
	registry *prometheus.Registry
	sweeps   prometheus.Histogram

	mu     sync.Mutex
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
	labels    []string // in the order of seriesLabels
	mapCount  float64
	mapMemory float64
	runcount  float64
	runtime   float64
}

// NewMetrics returns a Metrics with its own registry; serve it with Handler.
func NewMetrics(opts MetricsOptions) (*Metrics, error) {
	m := &Metrics{
		opts:     opts,
		registry: prometheus.NewRegistry(),
		sweeps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tracker_sweep_duration_seconds",
			Help: "Time one stats sweep spent reading the kernel.",
			// Sweeps take about 2 µs per program (see the kernel notes):
			// 1 ms for a few hundred programs, seconds only when
			// something is wrong.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	cs := []prometheus.Collector{m.sweeps, newMetricsCollector(m)}
	if !opts.OmitRuntimeMetrics {
		cs = append(cs,
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
	}
	for _, c := range cs {
		if err := m.registry.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics collector: %w", err)
		}
	}
	return m, nil
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
	m.mu.Unlock()
	m.sweeps.Observe(snap.SweepDuration.Seconds())
	return nil
}

// Handler serves the metrics in the Prometheus text format. Mount it
// anywhere; ListenMetrics mounts it at MetricsPath.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		// Scrapes are cheap; more than a few at once is a misconfiguration.
		MaxRequestsInFlight: 4,
	})
}

func (m *Metrics) snapshot() *metricsState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.latest
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

// metricsCollector emits everything derived from the latest snapshot.
type metricsCollector struct {
	m *Metrics

	mapCount, mapMemory, runcount, runtime *prometheus.Desc

	events, eventsLost, resyncs, sweeps  *prometheus.Desc
	repairs, loadsGone, attribRejected   *prometheus.Desc
	eventsDropped, snapshotsDropped      *prometheus.Desc
	registrationsRemoved                 *prometheus.Desc
	programs, gadgets, lastSweep, source *prometheus.Desc
	natsConnected, natsErrors, buildInfo *prometheus.Desc
}

func newMetricsCollector(m *Metrics) *metricsCollector {
	seed := []string{labelGadgetImage, labelGadgetName, labelProgName}
	if m.opts.All {
		seed = append(seed, labelProgID)
	}
	scope := prometheus.Labels{labelOTelScope: otelScopeName}
	return &metricsCollector{
		m: m,
		// Names, types and help text follow the seed's columns.
		mapCount:  prometheus.NewDesc("mapCount", "Number of maps used by the eBPF program or Gadget", seed, scope),
		mapMemory: prometheus.NewDesc("mapMemory", "Memory used by maps in bytes", seed, scope),
		runcount:  prometheus.NewDesc("runcount_total", "Number of times the eBPF program or Gadget has run", seed, scope),
		runtime:   prometheus.NewDesc("runtime_total", "Time that the eBPF program or Gadget has run in nanoseconds", seed, scope),

		events:     prometheus.NewDesc("tracker_events_total", "Program events applied to the inventory, by kind (load, release).", []string{"kind"}, nil),
		eventsLost: prometheus.NewDesc("tracker_events_lost_total", "Program events the event source reported as lost.", nil, nil),
		resyncs:    prometheus.NewDesc("tracker_resyncs_total", "Full inventory resyncs from the kernel's program IDs.", nil, nil),
		sweeps:     prometheus.NewDesc("tracker_sweeps_total", "Stats sweeps completed.", nil, nil),
		repairs: prometheus.NewDesc("tracker_inventory_repairs_total",
			"Programs a sweep's audit found missing from the inventory (kind=added: a load event was lost or late) or still in it though gone from the kernel (kind=removed).", []string{"kind"}, nil),
		loadsGone: prometheus.NewDesc("tracker_loads_gone_total",
			"Load events of programs already released when applied: published with their release, never inserted.", nil, nil),
		attribRejected: prometheus.NewDesc("tracker_attributions_rejected_total",
			"Load events whose PID named a process started after the event (a reused PID): not attributed.", nil, nil),
		eventsDropped: prometheus.NewDesc("tracker_events_dropped_total",
			"Applied events not handed to the publishers because their queue was full (a slow NATS server); the inventory has them.", nil, nil),
		registrationsRemoved: prometheus.NewDesc("tracker_registrations_removed_total",
			"Entries of the registry map (docs/registration.md) removed because their program is gone.", nil, nil),
		snapshotsDropped: prometheus.NewDesc("tracker_snapshots_dropped_total",
			"Interval snapshots replaced by a newer one before a slow publisher took them.", nil, nil),
		programs:      prometheus.NewDesc("tracker_programs", "eBPF programs in the inventory, owned or not.", nil, nil),
		gadgets:       prometheus.NewDesc("tracker_gadgets", "Gadgets in the inventory.", nil, nil),
		lastSweep:     prometheus.NewDesc("tracker_last_sweep_timestamp_seconds", "Unix time of the latest sweep.", nil, nil),
		source:        prometheus.NewDesc("tracker_event_source_info", "The event source in use (fentry, perf or poll).", []string{"source"}, nil),
		natsConnected: prometheus.NewDesc("tracker_nats_connected", "Whether the NATS connection is up (1) or not (0).", nil, nil),
		natsErrors:    prometheus.NewDesc("tracker_nats_publish_errors_total", "NATS publishes that failed.", nil, nil),
		buildInfo:     prometheus.NewDesc("tracker_build_info", "The tracker's version and the Go version it was built with.", []string{"version", "goversion"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.mapCount, c.mapMemory, c.runcount, c.runtime,
		c.events, c.eventsLost, c.resyncs, c.sweeps,
		c.repairs, c.loadsGone, c.attribRejected, c.eventsDropped, c.snapshotsDropped, c.registrationsRemoved,
		c.programs, c.gadgets, c.lastSweep, c.source,
		c.natsConnected, c.natsErrors, c.buildInfo,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.buildInfo, prometheus.GaugeValue, 1, c.m.opts.Version, runtime.Version())
	if nats := c.m.opts.NATS; nats != nil {
		ch <- prometheus.MustNewConstMetric(c.natsConnected, prometheus.GaugeValue, boolFloat(nats.Connected()))
		ch <- prometheus.MustNewConstMetric(c.natsErrors, prometheus.CounterValue, float64(nats.PublishErrors()))
	}

	st := c.m.snapshot()
	if st == nil {
		return
	}
	for i := range st.series {
		s := &st.series[i]
		ch <- prometheus.MustNewConstMetric(c.mapCount, prometheus.GaugeValue, s.mapCount, s.labels...)
		ch <- prometheus.MustNewConstMetric(c.mapMemory, prometheus.GaugeValue, s.mapMemory, s.labels...)
		ch <- prometheus.MustNewConstMetric(c.runcount, prometheus.CounterValue, s.runcount, s.labels...)
		ch <- prometheus.MustNewConstMetric(c.runtime, prometheus.CounterValue, s.runtime, s.labels...)
	}

	ctr := &st.counters
	ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(ctr.EventsLoad), "load")
	ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(ctr.EventsRelease), "release")
	ch <- prometheus.MustNewConstMetric(c.eventsLost, prometheus.CounterValue, float64(ctr.EventsLost))
	ch <- prometheus.MustNewConstMetric(c.resyncs, prometheus.CounterValue, float64(ctr.Resyncs))
	ch <- prometheus.MustNewConstMetric(c.sweeps, prometheus.CounterValue, float64(ctr.Sweeps))
	ch <- prometheus.MustNewConstMetric(c.repairs, prometheus.CounterValue, float64(ctr.RepairsAdded), "added")
	ch <- prometheus.MustNewConstMetric(c.repairs, prometheus.CounterValue, float64(ctr.RepairsRemoved), "removed")
	ch <- prometheus.MustNewConstMetric(c.loadsGone, prometheus.CounterValue, float64(ctr.LoadsGone))
	ch <- prometheus.MustNewConstMetric(c.attribRejected, prometheus.CounterValue, float64(ctr.AttributionsRejected))
	ch <- prometheus.MustNewConstMetric(c.eventsDropped, prometheus.CounterValue, float64(ctr.EventsDropped))
	ch <- prometheus.MustNewConstMetric(c.snapshotsDropped, prometheus.CounterValue, float64(ctr.SnapshotsDropped))
	ch <- prometheus.MustNewConstMetric(c.registrationsRemoved, prometheus.CounterValue, float64(ctr.RegistrationsRemoved))
	ch <- prometheus.MustNewConstMetric(c.programs, prometheus.GaugeValue, float64(st.programs))
	ch <- prometheus.MustNewConstMetric(c.gadgets, prometheus.GaugeValue, float64(st.gadgets))
	if !st.time.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.lastSweep, prometheus.GaugeValue, float64(st.time.UnixNano())/1e9)
	}
	if st.source != "" {
		ch <- prometheus.MustNewConstMetric(c.source, prometheus.GaugeValue, 1, st.source)
	}
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
