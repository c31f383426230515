package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/testgadget"
)

// subscriber collects the messages of one NATS subscription.
type subscriber struct {
	msgs chan *nats.Msg
}

func subscribe(t *testing.T, url, subject string) *subscriber {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("bpfstats-test"))
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	s := &subscriber{msgs: make(chan *nats.Msg, 4096)}
	if _, err := nc.ChanSubscribe(subject, s.msgs); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

// next returns the next message whose subject satisfies match.
func (s *subscriber) next(t *testing.T, what string, match func(subject string) bool) *nats.Msg {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case m := <-s.msgs:
			if match(m.Subject) {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s message within %v", what, waitTimeout)
		}
	}
}

func decodeMsg[T any](t *testing.T, m *nats.Msg) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(m.Data, &v); err != nil {
		t.Fatalf("decoding %s: %v: %s", m.Subject, err, m.Data)
	}
	return v
}

// bpftoolMapMemory sums the memlock of maps as bpftool reports it.
func bpftoolMapMemory(t *testing.T, ids []uint32) uint64 {
	t.Helper()
	var sum uint64
	for _, id := range ids {
		var m struct {
			BytesMemlock uint64 `json:"bytes_memlock"`
		}
		bpftool(t, &m, "map", "show", "id", fmt.Sprint(id))
		sum += m.BytesMemlock
	}
	return sum
}

// The daemon with its embedded NATS server publishes gadget, _node and
// _events messages whose contents are the kernel's.
func TestDaemonPublishesToNATS(t *testing.T) {
	requireRoot(t)
	natsAddr := freeAddr(t)
	// A long interval: the load event must arrive long before the next tick.
	startDaemon(t, "GADGETID", "--nats-listen", natsAddr, "--metrics-addr", "", "--node", "test.node",
		"--interval", "1h", "--print")
	sub := subscribe(t, "nats://"+natsAddr, "bpfstats.>")

	// The first sweep ran before we subscribed; load a program and expect
	// its event at once, then nothing else is due for an hour.
	prog := testgadget.LoadSocketFilter(t, "bpfstats_t_nats")
	id := testgadget.ProgramID(t, prog)
	m := sub.next(t, "_events", func(s string) bool { return s == "bpfstats.test_node._events" })
	ev := decodeMsg[publish.EventMessage](t, m)
	for ev.ProgID != id {
		ev = decodeMsg[publish.EventMessage](t, sub.next(t, "_events", func(s string) bool { return s == "bpfstats.test_node._events" }))
	}
	if ev.Kind != "load" || ev.ProgName != "bpfstats_t_nats" || ev.Loader == nil || ev.Loader.PID != uint32(os.Getpid()) {
		t.Fatalf("load event: %+v", ev)
	}
	if ev.Gadget == nil || ev.Gadget.Owner.PID != uint32(os.Getpid()) {
		t.Fatalf("load event gadget: %+v", ev.Gadget)
	}
	prog.Close()
	// Other programs may come and go meanwhile: wait for ours.
	for ev.ProgID != id || ev.Kind == "load" {
		ev = decodeMsg[publish.EventMessage](t, sub.next(t, "_events", func(s string) bool { return s == "bpfstats.test_node._events" }))
	}
	if ev.Kind != "release" || ev.ProgName != "bpfstats_t_nats" {
		t.Fatalf("release event: %+v", ev)
	}
}

// Interval messages: the labelled gadget's message matches the kernel.
func TestDaemonGadgetMessage(t *testing.T) {
	requireRoot(t)
	g := testgadget.StartGadget(t, map[string]string{
		"BPFSTATS_GADGET_NAME":  "natsgadget2",
		"BPFSTATS_GADGET_IMAGE": "nats_gadget:v2",
	}, testgadget.TwoProgramsThreeMaps(false))
	wantMem := bpftoolMapMemory(t, g.MapIDs)
	natsAddr := freeAddr(t)
	startDaemon(t, "GADGETID", "--nats-listen", natsAddr, "--metrics-addr", "", "--node", "n1",
		"--interval", "200ms", "--print")
	sub := subscribe(t, "nats://"+natsAddr, "bpfstats.n1.>")

	var gm publish.GadgetMessage
	for gm.Gadget.Name != "natsgadget2" {
		m := sub.next(t, "gadget", func(s string) bool { return !strings.HasPrefix(s, "bpfstats.n1._") })
		gm = decodeMsg[publish.GadgetMessage](t, m)
		if !strings.HasSuffix(m.Subject, "."+gm.Gadget.ID) {
			t.Fatalf("gadget message on %s has gadget id %s", m.Subject, gm.Gadget.ID)
		}
	}
	if gm.Schema == "" || gm.Type != "gadget" || gm.Node != "n1" || gm.Gadget.Image != "nats_gadget:v2" || gm.Owner.PID != g.PID {
		t.Fatalf("gadget message header: %+v", gm)
	}
	if gm.Totals.MapCount != 3 || gm.Totals.MapMemory != wantMem || gm.Totals.ProgramCount != 2 {
		t.Fatalf("totals %+v, want 3 maps, %d bytes (bpftool), 2 programs", gm.Totals, wantMem)
	}
	var ids []uint32
	for _, r := range gm.Programs {
		ids = append(ids, r.ProgID)
	}
	want := slices.Clone(g.ProgramIDs)
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Fatalf("programs %v, want %v", ids, want)
	}

	m := sub.next(t, "_node", func(s string) bool { return s == "bpfstats.n1._node" })
	nm := decodeMsg[publish.NodeMessage](t, m)
	var uts unix.Utsname
	unix.Uname(&uts)
	if nm.Source == "" || nm.Kernel != unix.ByteSliceToString(uts.Release[:]) || nm.Counts.Programs < 2 || nm.Counts.Gadgets < 1 {
		t.Fatalf("_node message: %+v", nm)
	}
}

// A live tracker's /metrics, parsed with Prometheus' own parser, carries
// the seed's series with the kernel's values.
func TestDaemonMetrics(t *testing.T) {
	requireRoot(t)
	g := testgadget.StartGadget(t, map[string]string{
		"BPFSTATS_GADGET_NAME":  "metricsgadget",
		"BPFSTATS_GADGET_IMAGE": "metrics_gadget:latest",
	}, testgadget.TwoProgramsThreeMaps(false))
	wantMem := bpftoolMapMemory(t, g.MapIDs)
	metricsAddr := freeAddr(t)
	startDaemon(t, "GADGETID", daemonTestArgs(t, "--metrics-addr", metricsAddr, "--interval", "200ms", "--print")...)

	var families map[string]*dtoFamily
	deadline := time.Now().Add(waitTimeout)
	for {
		families = scrape(t, "http://"+metricsAddr+"/metrics")
		if _, ok := families["mapMemory"].value("metricsgadget"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no mapMemory series for the gadget within %v", waitTimeout)
		}
		time.Sleep(100 * time.Millisecond) // polling an HTTP endpoint: nothing to wait on
	}
	if got, _ := families["mapMemory"].value("metricsgadget"); got != float64(wantMem) {
		t.Fatalf("mapMemory %v, want %d (bpftool)", got, wantMem)
	}
	if got, _ := families["mapCount"].value("metricsgadget"); got != 3 {
		t.Fatalf("mapCount %v, want 3", got)
	}
	for _, name := range []string{"runcount_total", "runtime_total", "tracker_build_info", "tracker_event_source_info", "tracker_programs"} {
		if _, ok := families[name]; !ok {
			t.Errorf("no %s series", name)
		}
	}
	if _, ok := families["runcount_total"].value("metricsgadget"); !ok {
		t.Errorf("no runcount_total series for the gadget")
	}
}

type dtoFamily struct {
	// byGadget maps gadgetName to the value of the series with an empty progName.
	byGadget map[string]float64
}

// value returns the gadget-level series of gadget; a missing family has none.
func (d *dtoFamily) value(gadget string) (float64, bool) {
	if d == nil {
		return 0, false
	}
	v, ok := d.byGadget[gadget]
	return v, ok
}

func scrape(t *testing.T, url string) map[string]*dtoFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("Prometheus cannot parse /metrics: %v\n%s", err, body)
	}
	out := make(map[string]*dtoFamily)
	for name, f := range fams {
		d := &dtoFamily{byGadget: map[string]float64{}}
		for _, m := range f.GetMetric() {
			var gadget, prog string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "gadgetName":
					gadget = l.GetValue()
				case "progName":
					prog = l.GetValue()
				}
			}
			if prog != "" {
				continue
			}
			switch {
			case m.GetGauge() != nil:
				d.byGadget[gadget] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				d.byGadget[gadget] = m.GetCounter().GetValue()
			}
		}
		out[name] = d
	}
	return out
}

// After SIGTERM nothing the daemon loaded stays in the kernel.
func TestDaemonLeavesNothingBehind(t *testing.T) {
	watch := startStats(t, "--all")
	cmd, stderr := startDaemon(t, "GADGETID", daemonTestArgs(t, "--print", "--interval", "100ms")...)
	pid := uint32(cmd.Process.Pid)
	// Whatever the daemon loaded (fentry programs, feature probes) is
	// attributed to its pid by the watching tracker.
	var loaded []uint32
	for range 3 {
		for _, r := range watch.next(t) {
			if r.Loader != nil && r.Loader.PID == pid && !slices.Contains(loaded, r.ProgID) {
				loaded = append(loaded, r.ProgID)
			}
		}
	}
	if err := cmd.Process.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("daemon exit: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr.String(), "shutting down") {
		t.Fatalf("no final sweep and orderly shutdown logged:\n%s", stderr)
	}
	deadline := time.Now().Add(waitTimeout)
	for _, id := range loaded {
		for {
			p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
			if err != nil {
				break
			}
			p.Close()
			if time.Now().After(deadline) {
				t.Fatalf("program %d loaded by the daemon still in the kernel after it exited", id)
			}
			watch.next(t)
		}
	}
	t.Logf("daemon had loaded %d programs of its own; all gone", len(loaded))
}
