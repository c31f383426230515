package publish

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/bpfstats/tracker/internal/publish/metricstest"
	"github.com/bpfstats/tracker/internal/state"
)

// The -update flag rewrites golden files. Another test file of this package
// may define it too, so it is registered only if nobody did (package-level
// variables are initialised before any init function runs).
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite golden files in testdata")
	}
}

func updateMetricsGolden() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

type metricsNATSStub struct {
	connected bool
	errors    uint64
}

func (f metricsNATSStub) Connected() bool       { return f.connected }
func (f metricsNATSStub) PublishErrors() uint64 { return f.errors }

// metricsSnapshot is a hand-built sweep: the seed's two gadgets, two
// instances of one tool that share a name and image, a gadget whose labels
// need escaping, two programs of one gadget with the same name and
// unowned programs (one nameless).
func metricsSnapshot() *state.Snapshot {
	bpftrace := func(id string) state.Row {
		return state.Row{GadgetID: id, GadgetName: "bpftrace", GadgetImage: "/usr/bin/bpftrace",
			Totals: state.Totals{Runtime: 1000, Runcount: 10, MapMemory: 4096, MapCount: 2, ProgramCount: 1}}
	}
	return &state.Snapshot{
		Time:          time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Elapsed:       time.Second,
		Source:        "perf",
		SweepDuration: 1500 * time.Microsecond,
		Counters: state.Counters{EventsLoad: 12, EventsRelease: 3, EventsLost: 1, Resyncs: 2, Sweeps: 40,
			RepairsAdded: 4, RepairsRemoved: 5, LoadsGone: 6, AttributionsRejected: 7, EventsDropped: 8, SnapshotsDropped: 9, RegistrationsRemoved: 10},
		Gadgets: []state.Row{
			bpftrace("0a1b2c3d4e5"),
			bpftrace("5e4d3c2b1a0"),
			{GadgetID: "a624bdbf27f", GadgetName: "mytraceexec", GadgetImage: "trace_exec:latest",
				Totals: state.Totals{Runtime: 445114, Runcount: 636, MapMemory: 183170336, MapCount: 7}},
			{GadgetID: "bb95fa2c8ab", GadgetName: "mytraceopen", GadgetImage: "trace_open:latest",
				Totals: state.Totals{Runtime: 73383934, Runcount: 219513, MapMemory: 1710240, MapCount: 6}},
			{GadgetID: "ffffffffff0", GadgetName: `say "hi"\`, GadgetImage: "line1\nline2",
				Totals: state.Totals{Runtime: 1, Runcount: 1, MapMemory: 1, MapCount: 1}},
		},
		Programs: []*state.Row{
			{ProgID: 2, ProgName: "hid_tail_call", Totals: state.Totals{Runtime: 0, Runcount: 0, MapMemory: 8512, MapCount: 1}},
			{ProgID: 198, ProgName: "", Totals: state.Totals{MapMemory: 48672, MapCount: 1}},
			{ProgID: 743, GadgetID: "a624bdbf27f", GadgetName: "mytraceexec", GadgetImage: "trace_exec:latest",
				ProgName: "security_bprm_c", Totals: state.Totals{Runtime: 445114, Runcount: 636, MapMemory: 183170336, MapCount: 7}},
			{ProgID: 750, GadgetID: "bb95fa2c8ab", GadgetName: "mytraceopen", GadgetImage: "trace_open:latest",
				ProgName: "ig_openat_e", Totals: state.Totals{Runtime: 21538317, Runcount: 48300, MapMemory: 1098240, MapCount: 3}},
			{ProgID: 752, GadgetID: "bb95fa2c8ab", GadgetName: "mytraceopen", GadgetImage: "trace_open:latest",
				ProgName: "ig_openat_e", Totals: state.Totals{Runtime: 51845617, Runcount: 171213, MapMemory: 1615904, MapCount: 4}},
			{ProgID: 800, GadgetID: "0a1b2c3d4e5", GadgetName: "bpftrace", GadgetImage: "/usr/bin/bpftrace",
				ProgName: "kprobe_x", Totals: state.Totals{Runtime: 1000, Runcount: 10, MapMemory: 4096, MapCount: 2}},
			{ProgID: 801, GadgetID: "5e4d3c2b1a0", GadgetName: "bpftrace", GadgetImage: "/usr/bin/bpftrace",
				ProgName: "kprobe_x", Totals: state.Totals{Runtime: 1000, Runcount: 10, MapMemory: 4096, MapCount: 2}},
			{ProgID: 900, GadgetID: "ffffffffff0", GadgetName: `say "hi"\`, GadgetImage: "line1\nline2",
				ProgName: "p", Totals: state.Totals{Runtime: 1, Runcount: 1, MapMemory: 1, MapCount: 1}},
		},
	}
}

func newTestMetrics(t *testing.T, opts MetricsOptions) *Metrics {
	t.Helper()
	opts.OmitRuntimeMetrics = true
	if opts.Version == "" {
		opts.Version = "v0.0.0-test"
	}
	m, err := NewMetrics(opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// scrapeMetricsText serves m through its Handler and returns the body.
func scrapeMetricsText(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func scrapeMetrics(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := metricstest.Parse(strings.NewReader(scrapeMetricsText(t, m)))
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func wantMetricValue(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels map[string]string, want float64) {
	t.Helper()
	got, err := metricstest.Value(mfs, name, labels)
	if err != nil {
		t.Error(err)
		return
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

func TestMetricsGolden(t *testing.T) {
	for _, tc := range []struct {
		golden string
		all    bool
	}{
		{"metrics_gadgets.golden", false},
		{"metrics_all.golden", true},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			m := newTestMetrics(t, MetricsOptions{All: tc.all, NATS: metricsNATSStub{connected: true, errors: 3}})
			if err := m.Publish(metricsSnapshot()); err != nil {
				t.Fatal(err)
			}
			// The Go version is the only input the test does not fix.
			got := strings.ReplaceAll(scrapeMetricsText(t, m), `goversion="`+runtime.Version()+`"`, `goversion="GOVERSION"`)

			path := filepath.Join("testdata", tc.golden)
			if updateMetricsGolden() {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("exposition differs from %s (run with -update to accept):\n--- got\n%s", path, got)
			}
		})
	}
}

func TestMetricsGadgetSeries(t *testing.T) {
	m := newTestMetrics(t, MetricsOptions{})
	if err := m.Publish(metricsSnapshot()); err != nil {
		t.Fatal(err)
	}
	mfs := scrapeMetrics(t, m)

	for name, typ := range map[string]dto.MetricType{
		"mapCount":       dto.MetricType_GAUGE,
		"mapMemory":      dto.MetricType_GAUGE,
		"runcount_total": dto.MetricType_COUNTER,
		"runtime_total":  dto.MetricType_COUNTER,
	} {
		mf := mfs[name]
		if mf == nil {
			t.Fatalf("no %s family", name)
		}
		if mf.GetType() != typ {
			t.Errorf("%s is %v, want %v", name, mf.GetType(), typ)
		}
		// Four label sets: the bpftrace pair merged into one.
		if n := len(mf.GetMetric()); n != 4 {
			t.Errorf("%s has %d series, want 4 (one per gadget name and image)", name, n)
		}
		for _, metric := range mf.GetMetric() {
			labels := metricstest.Labels(metric)
			want := map[string]string{"gadgetImage": labels["gadgetImage"], "gadgetName": labels["gadgetName"],
				"progName": "", "otel_scope_name": "bpfstats"}
			if fmt.Sprint(labels) != fmt.Sprint(want) {
				t.Errorf("%s labels %v, want exactly %v", name, labels, want)
			}
		}
	}

	open := map[string]string{"gadgetName": "mytraceopen", "gadgetImage": "trace_open:latest"}
	wantMetricValue(t, mfs, "runtime_total", open, 73383934)
	wantMetricValue(t, mfs, "runcount_total", open, 219513)
	wantMetricValue(t, mfs, "mapMemory", open, 1710240)
	wantMetricValue(t, mfs, "mapCount", open, 6)

	// Two instances of one tool share gadgetName and gadgetImage: summed.
	bpftrace := map[string]string{"gadgetName": "bpftrace"}
	wantMetricValue(t, mfs, "runtime_total", bpftrace, 2000)
	wantMetricValue(t, mfs, "mapCount", bpftrace, 4)

	// Quotes and backslashes survive the round trip escaped; control
	// characters are removed (CleanLabel).
	wantMetricValue(t, mfs, "runcount_total", map[string]string{"gadgetName": `say "hi"\`, "gadgetImage": "line1line2"}, 1)

	wantMetricValue(t, mfs, "tracker_events_total", map[string]string{"kind": "load"}, 12)
	wantMetricValue(t, mfs, "tracker_events_total", map[string]string{"kind": "release"}, 3)
	wantMetricValue(t, mfs, "tracker_events_lost_total", nil, 1)
	wantMetricValue(t, mfs, "tracker_resyncs_total", nil, 2)
	wantMetricValue(t, mfs, "tracker_sweeps_total", nil, 40)
	wantMetricValue(t, mfs, "tracker_programs", nil, 8)
	wantMetricValue(t, mfs, "tracker_gadgets", nil, 5)
	wantMetricValue(t, mfs, "tracker_event_source_info", map[string]string{"source": "perf"}, 1)
	wantMetricValue(t, mfs, "tracker_last_sweep_timestamp_seconds", nil, float64(metricsSnapshot().Time.Unix()))
	wantMetricValue(t, mfs, "tracker_build_info", map[string]string{"version": "v0.0.0-test", "goversion": runtime.Version()}, 1)
	if mfs["tracker_nats_connected"] != nil {
		t.Error("tracker_nats_connected exported without a NATS status")
	}

	h := mfs["tracker_sweep_duration_seconds"]
	if h == nil || len(h.GetMetric()) != 1 {
		t.Fatal("no tracker_sweep_duration_seconds histogram")
	}
	hist := h.GetMetric()[0].GetHistogram()
	if hist.GetSampleCount() != 1 || hist.GetSampleSum() != 0.0015 {
		t.Errorf("sweep histogram count %d sum %v, want 1 and 0.0015", hist.GetSampleCount(), hist.GetSampleSum())
	}
}

func TestMetricsAllSeries(t *testing.T) {
	m := newTestMetrics(t, MetricsOptions{All: true, NATS: metricsNATSStub{connected: false, errors: 7}})
	if err := m.Publish(metricsSnapshot()); err != nil {
		t.Fatal(err)
	}
	mfs := scrapeMetrics(t, m)

	// 4 gadget label sets + 8 programs.
	if n := len(mfs["runtime_total"].GetMetric()); n != 12 {
		t.Errorf("runtime_total has %d series, want 12", n)
	}
	// Gadget series are the same as without All: no progID.
	wantMetricValue(t, mfs, "runtime_total", map[string]string{"gadgetName": "mytraceopen", "progName": "", "progID": ""}, 73383934)
	// Two programs named ig_openat_e in one gadget: progID tells them apart.
	openat := findSeries(mfs, "runtime_total", map[string]string{"progName": "ig_openat_e"})
	if len(openat) != 2 {
		t.Fatalf("%d ig_openat_e series, want 2", len(openat))
	}
	wantMetricValue(t, mfs, "runtime_total", map[string]string{"progID": "750"}, 21538317)
	wantMetricValue(t, mfs, "runtime_total", map[string]string{"progID": "752"}, 51845617)
	wantMetricValue(t, mfs, "runcount_total", map[string]string{"progID": "752", "gadgetName": "mytraceopen",
		"gadgetImage": "trace_open:latest", "progName": "ig_openat_e", "otel_scope_name": "bpfstats"}, 171213)
	// Unowned programs have empty gadget labels; a nameless one is still
	// its own series.
	wantMetricValue(t, mfs, "mapMemory", map[string]string{"progID": "198", "progName": "", "gadgetName": "", "gadgetImage": ""}, 48672)
	wantMetricValue(t, mfs, "mapCount", map[string]string{"progID": "2", "progName": "hid_tail_call", "gadgetName": ""}, 1)
	// Per-program series of the two bpftrace instances are not merged.
	wantMetricValue(t, mfs, "runtime_total", map[string]string{"progID": "800"}, 1000)
	wantMetricValue(t, mfs, "runtime_total", map[string]string{"progID": "801"}, 1000)

	wantMetricValue(t, mfs, "tracker_nats_connected", nil, 0)
	wantMetricValue(t, mfs, "tracker_nats_publish_errors_total", nil, 7)
}

// findSeries is metricstest.Find, short for the tests above.
func findSeries(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) []*dto.Metric {
	return metricstest.Find(mfs, name, labels)
}

func TestMetricsSeriesVanish(t *testing.T) {
	m := newTestMetrics(t, MetricsOptions{All: true})
	snap := metricsSnapshot()
	if err := m.Publish(snap); err != nil {
		t.Fatal(err)
	}
	// mytraceopen and its programs go away.
	next := metricsSnapshot()
	next.Gadgets = next.Gadgets[:3]
	next.Programs = next.Programs[:3]
	next.Programs[2].Runtime += 5
	if err := m.Publish(next); err != nil {
		t.Fatal(err)
	}
	mfs := scrapeMetrics(t, m)
	if got := findSeries(mfs, "runtime_total", map[string]string{"gadgetName": "mytraceopen"}); len(got) != 0 {
		t.Errorf("%d mytraceopen series after it went away", len(got))
	}
	if got := findSeries(mfs, "runtime_total", map[string]string{"progID": "750"}); len(got) != 0 {
		t.Error("program 750 still exported after it went away")
	}
	// Counters are the kernel's cumulative value, not a running sum.
	wantMetricValue(t, mfs, "runtime_total", map[string]string{"progID": "743"}, 445114+5)
	wantMetricValue(t, mfs, "tracker_programs", nil, 3)
	wantMetricValue(t, mfs, "tracker_gadgets", nil, 3)
}

func TestMetricsBeforeFirstSweep(t *testing.T) {
	m := newTestMetrics(t, MetricsOptions{NATS: metricsNATSStub{connected: true}})
	mfs := scrapeMetrics(t, m)
	for _, name := range []string{"runtime_total", "mapCount", "tracker_programs", "tracker_event_source_info"} {
		if mfs[name] != nil {
			t.Errorf("%s exported before the first sweep", name)
		}
	}
	wantMetricValue(t, mfs, "tracker_build_info", map[string]string{"version": "v0.0.0-test"}, 1)
	wantMetricValue(t, mfs, "tracker_nats_connected", nil, 1)
}

func TestMetricsKeepsNoSnapshot(t *testing.T) {
	m := newTestMetrics(t, MetricsOptions{All: true})
	snap := metricsSnapshot()
	if err := m.Publish(snap); err != nil {
		t.Fatal(err)
	}
	// The caller reuses its snapshot after Publish returns.
	for i := range snap.Programs {
		snap.Programs[i].Runtime = 0
		snap.Programs[i].ProgName = "reused"
	}
	snap.Gadgets = nil
	mfs := scrapeMetrics(t, m)
	wantMetricValue(t, mfs, "runtime_total", map[string]string{"progID": "750", "progName": "ig_openat_e"}, 21538317)
	wantMetricValue(t, mfs, "runtime_total", map[string]string{"gadgetName": "mytraceexec", "progID": ""}, 445114)
}

func TestMetricsPublishNil(t *testing.T) {
	m := newTestMetrics(t, MetricsOptions{})
	if err := m.Publish(nil); err == nil {
		t.Error("Publish(nil) succeeded")
	}
}

func TestMetricsRuntimeCollectors(t *testing.T) {
	m, err := NewMetrics(MetricsOptions{Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	mfs := scrapeMetrics(t, m)
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if mfs[name] == nil {
			t.Errorf("%s missing by default", name)
		}
	}
}

// TestMetricsConcurrent scrapes while sweeps publish; run with -race.
func TestMetricsConcurrent(t *testing.T) {
	m := newTestMetrics(t, MetricsOptions{All: true})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			snap := metricsSnapshot()
			snap.Programs[0].Runtime = uint64(i)
			if err := m.Publish(snap); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < 20; i++ {
		if _, err := metricstest.ScrapeAndParse(srv.URL); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

func TestMetricsListen(t *testing.T) {
	m := newTestMetrics(t, MetricsOptions{})
	if err := m.Publish(metricsSnapshot()); err != nil {
		t.Fatal(err)
	}
	s, err := ListenMetrics("127.0.0.1:0", m.Handler())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	base := "http://" + s.Addr().String()

	mfs, err := metricstest.ScrapeAndParse(base + MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	wantMetricValue(t, mfs, "runtime_total", map[string]string{"gadgetName": "mytraceexec"}, 445114)

	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET / = %s, want 404", resp.Status)
	}

	// A second listener on the same address says so clearly.
	_, err = ListenMetrics(s.Addr().String(), m.Handler())
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "already in use") {
		t.Errorf("listening twice: %v, want EADDRINUSE", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := metricstest.ScrapeAndParse(base + MetricsPath); err == nil {
		t.Error("scrape succeeded after Close")
	}
}

// A gadget name that is not UTF-8 (any process can pick its own) must not
// take the other series down with it.
func TestMetricsInvalidUTF8Label(t *testing.T) {
	m, err := NewMetrics(MetricsOptions{OmitRuntimeMetrics: true})
	if err != nil {
		t.Fatal(err)
	}
	snap := &state.Snapshot{Gadgets: []state.Row{
		{GadgetID: "a", GadgetName: "bad\xff", GadgetImage: "img", Totals: state.Totals{MapCount: 1}},
		{GadgetID: "b", GadgetName: "good", GadgetImage: "img", Totals: state.Totals{MapCount: 2}},
	}}
	if err := m.Publish(snap); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{`gadgetName="good"`, `gadgetName="bad` + "\uFFFD" + `"`, "tracker_programs"} {
		if !strings.Contains(body, want) {
			t.Fatalf("scrape lacks %q:\n%s", want, body)
		}
	}
}
