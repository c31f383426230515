package publish

import (
	"bytes"
	"compress/gzip"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// The go_* and process_* families client_golang v1.25's default Go and
// process collectors exported, which dashboards may use: the hand-written
// exposition keeps every one, with its type.
var clientGolangRuntimeFamilies = map[string]dto.MetricType{
	"go_gc_duration_seconds": dto.MetricType_SUMMARY, "go_gc_gogc_percent": dto.MetricType_GAUGE,
	"go_gc_gomemlimit_bytes": dto.MetricType_GAUGE, "go_goroutines": dto.MetricType_GAUGE, "go_info": dto.MetricType_GAUGE,
	"go_memstats_alloc_bytes": dto.MetricType_GAUGE, "go_memstats_alloc_bytes_total": dto.MetricType_COUNTER,
	"go_memstats_buck_hash_sys_bytes": dto.MetricType_GAUGE, "go_memstats_frees_total": dto.MetricType_COUNTER,
	"go_memstats_gc_sys_bytes": dto.MetricType_GAUGE, "go_memstats_heap_alloc_bytes": dto.MetricType_GAUGE,
	"go_memstats_heap_idle_bytes": dto.MetricType_GAUGE, "go_memstats_heap_inuse_bytes": dto.MetricType_GAUGE,
	"go_memstats_heap_objects": dto.MetricType_GAUGE, "go_memstats_heap_released_bytes": dto.MetricType_GAUGE,
	"go_memstats_heap_sys_bytes": dto.MetricType_GAUGE, "go_memstats_last_gc_time_seconds": dto.MetricType_GAUGE,
	"go_memstats_mallocs_total": dto.MetricType_COUNTER, "go_memstats_mcache_inuse_bytes": dto.MetricType_GAUGE,
	"go_memstats_mcache_sys_bytes": dto.MetricType_GAUGE, "go_memstats_mspan_inuse_bytes": dto.MetricType_GAUGE,
	"go_memstats_mspan_sys_bytes": dto.MetricType_GAUGE, "go_memstats_next_gc_bytes": dto.MetricType_GAUGE,
	"go_memstats_other_sys_bytes": dto.MetricType_GAUGE, "go_memstats_stack_inuse_bytes": dto.MetricType_GAUGE,
	"go_memstats_stack_sys_bytes": dto.MetricType_GAUGE, "go_memstats_sys_bytes": dto.MetricType_GAUGE,
	"go_sched_gomaxprocs_threads": dto.MetricType_GAUGE, "go_threads": dto.MetricType_GAUGE,
	"process_cpu_seconds_total": dto.MetricType_COUNTER, "process_max_fds": dto.MetricType_GAUGE,
	"process_network_receive_bytes_total": dto.MetricType_COUNTER, "process_network_transmit_bytes_total": dto.MetricType_COUNTER,
	"process_open_fds": dto.MetricType_GAUGE, "process_resident_memory_bytes": dto.MetricType_GAUGE,
	"process_start_time_seconds": dto.MetricType_GAUGE, "process_virtual_memory_bytes": dto.MetricType_GAUGE,
	"process_virtual_memory_max_bytes": dto.MetricType_GAUGE,
}

// The runtime families are client_golang's, with values that agree with
// what /proc and the runtime say.
func TestRuntimeFamiliesAsClientGolang(t *testing.T) {
	m, err := NewMetrics(MetricsOptions{Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	mfs := scrapeMetrics(t, m)
	for name, typ := range clientGolangRuntimeFamilies {
		if mf := mfs[name]; mf == nil || mf.GetType() != typ {
			t.Errorf("%s: %v, want a %v family", name, mf, typ)
		}
	}
	for name := range mfs {
		if _, ok := clientGolangRuntimeFamilies[name]; !ok && (strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_")) {
			t.Errorf("%s: not a family client_golang exported", name)
		}
	}
	value := func(name string) float64 {
		if mf := mfs[name]; mf != nil && len(mf.Metric) == 1 {
			if g := mf.Metric[0].GetGauge(); g != nil {
				return g.GetValue()
			}
			return mf.Metric[0].GetCounter().GetValue()
		}
		t.Fatalf("%s: not one metric", name)
		return 0
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var vmRSS float64
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			vmRSS = kb * 1024
		}
	}
	if rss := value("process_resident_memory_bytes"); rss < vmRSS/2 || rss > vmRSS*2 {
		t.Errorf("process_resident_memory_bytes %v, VmRSS %v bytes", rss, vmRSS)
	}
	if n := value("go_goroutines"); n < 1 {
		t.Errorf("go_goroutines %v", n)
	}
	if n := value("process_open_fds"); n < 3 {
		t.Errorf("process_open_fds %v", n)
	}
	if v := value("go_sched_gomaxprocs_threads"); v != float64(runtime.GOMAXPROCS(0)) {
		t.Errorf("go_sched_gomaxprocs_threads %v, GOMAXPROCS %d", v, runtime.GOMAXPROCS(0))
	}
	if l := mfs["go_info"].Metric[0].GetLabel(); len(l) != 1 || l[0].GetValue() != runtime.Version() {
		t.Errorf("go_info labels %v", l)
	}
	if s := mfs["go_gc_duration_seconds"].Metric[0].GetSummary(); len(s.GetQuantile()) != 5 {
		t.Errorf("go_gc_duration_seconds quantiles %v", s.GetQuantile())
	}
}

// A scraper that accepts gzip gets the same exposition gzipped; one that
// refuses it (q=0) or does not ask gets it plain.
func TestExpositionGzip(t *testing.T) {
	m := newTestMetrics(t, MetricsOptions{})
	if err := m.Publish(metricsSnapshot()); err != nil {
		t.Fatal(err)
	}
	get := func(accept string) (string, []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/metrics", nil)
		if accept != "" {
			req.Header.Set("Accept-Encoding", accept)
		}
		m.Handler().ServeHTTP(rec, req)
		if ct := rec.Header().Get("Content-Type"); ct != expoContentType {
			t.Fatalf("Content-Type %q", ct)
		}
		return rec.Header().Get("Content-Encoding"), rec.Body.Bytes()
	}
	_, plain := get("")
	if !bytes.Contains(plain, []byte("# TYPE tracker_programs gauge\n")) {
		t.Fatalf("plain exposition without tracker_programs:\n%s", plain)
	}
	for _, accept := range []string{"gzip", "deflate, gzip;q=0.5", "GZIP"} {
		enc, body := get(accept)
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if enc != "gzip" || err != nil {
			t.Fatalf("Accept-Encoding %q: Content-Encoding %q, %v", accept, enc, err)
		}
		if got, err := io.ReadAll(zr); err != nil || !bytes.Equal(got, plain) {
			t.Errorf("Accept-Encoding %q: gzipped body differs from the plain one (%v)", accept, err)
		}
	}
	for _, accept := range []string{"gzip;q=0", "deflate", "identity"} {
		if enc, body := get(accept); enc != "" || !bytes.Equal(body, plain) {
			t.Errorf("Accept-Encoding %q: Content-Encoding %q", accept, enc)
		}
	}
}

// Past maxScrapesInFlight scrapes at once, a scrape is refused with 503.
func TestExpositionInFlightLimit(t *testing.T) {
	m := newTestMetrics(t, MetricsOptions{})
	for range maxScrapesInFlight {
		m.inFlight <- struct{}{}
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("scrape past the limit: %d, want 503", rec.Code)
	}
	<-m.inFlight
	rec = httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape within the limit: %d", rec.Code)
	}
}

func TestAppendFloat(t *testing.T) {
	for f, want := range map[float64]string{
		0: "0", 1: "1", -1: "-1", 0.0005: "0.0005", 8192: "8192", 1.83170336e+08: "1.83170336e+08",
		math.Inf(1): "+Inf", math.Inf(-1): "-Inf", math.MaxUint64: "1.8446744073709552e+19",
	} {
		if got := string(appendFloat(nil, f)); got != want {
			t.Errorf("%v: %q, want %q", f, got, want)
		}
	}
	if got := string(appendFloat(nil, math.NaN())); got != "NaN" {
		t.Errorf("NaN: %q", got)
	}
}

// A duration equal to a bucket's bound counts in that bucket (le is "less
// than or equal"), one past the last bound in +Inf alone.
func TestSweepHistogramBounds(t *testing.T) {
	h := newSweepHistogram()
	h.observe(0.001)
	h.observe(0.0011)
	h.observe(11)
	m := h.family().metrics[0]
	want := map[float64]float64{0.0005: 0, 0.001: 1, 0.0025: 2, 10: 2}
	for i, bound := range m.bounds {
		if w, ok := want[bound]; ok && m.counts[i] != w {
			t.Errorf("le=%v: %v, want %v", bound, m.counts[i], w)
		}
	}
	if m.count != 3 || math.Abs(m.sum-11.0021) > 1e-9 {
		t.Errorf("count %d sum %v, want 3 and 11.0021", m.count, m.sum)
	}
}
