package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/publish/metricstest"
	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

// eventsOf matches the _events subject of node.
func eventsOf(node string) func(string) bool {
	return func(s string) bool { return s == "bpfstats."+node+"._events" }
}

// The daemon with its embedded NATS server publishes gadget, _node and
// _events messages whose contents are the kernel's.
func TestDaemonPublishesToNATS(t *testing.T) {
	requireRoot(t)
	natsAddr := testutil.FreeAddr(t)
	// A long interval: the load event must arrive long before the next tick.
	startDaemon(t, "GADGETID", "--nats-listen", natsAddr, "--metrics-addr", "", "--node", "test.node",
		"--interval", "1h", "--print")
	sub := testutil.Subscribe(t, "nats://"+natsAddr, "bpfstats.>")

	// The first sweep ran before we subscribed; load a program and expect
	// its event at once, then nothing else is due for an hour.
	prog := testgadget.LoadSocketFilter(t, "bpfstats_t_nats")
	id := testgadget.ProgramID(t, prog)
	m := sub.Next(t, "_events", eventsOf("test_node"))
	ev := testutil.Decode[publish.EventMessage](t, m)
	for ev.ProgID != id {
		ev = testutil.Decode[publish.EventMessage](t, sub.Next(t, "_events", eventsOf("test_node")))
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
		ev = testutil.Decode[publish.EventMessage](t, sub.Next(t, "_events", eventsOf("test_node")))
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
	wantMem := testutil.BpftoolMapMemory(t, g.MapIDs)
	natsAddr := testutil.FreeAddr(t)
	startDaemon(t, "GADGETID", "--nats-listen", natsAddr, "--metrics-addr", "", "--node", "n1",
		"--interval", "200ms", "--print")
	sub := testutil.Subscribe(t, "nats://"+natsAddr, "bpfstats.n1.>")

	var gm publish.GadgetMessage
	for gm.Gadget.Name != "natsgadget2" {
		m := sub.Next(t, "gadget", func(s string) bool { return !strings.HasPrefix(s, "bpfstats.n1._") })
		gm = testutil.Decode[publish.GadgetMessage](t, m)
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

	m := sub.Next(t, "_node", func(s string) bool { return s == "bpfstats.n1._node" })
	nm := testutil.Decode[publish.NodeMessage](t, m)
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
	wantMem := testutil.BpftoolMapMemory(t, g.MapIDs)
	metricsAddr := testutil.FreeAddr(t)
	startDaemon(t, "GADGETID", daemonTestArgs(t, "--metrics-addr", metricsAddr, "--interval", "200ms", "--print")...)

	url := "http://" + metricsAddr + publish.MetricsPath
	gadget := map[string]string{"gadgetName": "metricsgadget", "progName": ""}
	var mfs map[string]*dto.MetricFamily
	deadline := time.Now().Add(testutil.Wait)
	for {
		var err error
		mfs, err = metricstest.ScrapeAndParse(url)
		if err == nil && len(metricstest.Find(mfs, "mapMemory", gadget)) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no mapMemory series for the gadget within %v (last scrape: %v)", testutil.Wait, err)
		}
		time.Sleep(100 * time.Millisecond) // polling an HTTP endpoint: nothing to wait on
	}
	if got, err := metricstest.Value(mfs, "mapMemory", gadget); err != nil || got != float64(wantMem) {
		t.Fatalf("mapMemory %v (%v), want %d (bpftool)", got, err, wantMem)
	}
	if got, err := metricstest.Value(mfs, "mapCount", gadget); err != nil || got != 3 {
		t.Fatalf("mapCount %v (%v), want 3", got, err)
	}
	for _, name := range []string{"runcount_total", "runtime_total", "tracker_build_info", "tracker_event_source_info", "tracker_programs"} {
		if _, ok := mfs[name]; !ok {
			t.Errorf("no %s series", name)
		}
	}
	if _, err := metricstest.Value(mfs, "runcount_total", gadget); err != nil {
		t.Errorf("no runcount_total series for the gadget: %v", err)
	}
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
	deadline := time.Now().Add(testutil.Wait)
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

// The seed's gadget counters never go down when one of two instances that
// share their labels ends: the ended instance's runs stay counted, so the
// series grows by at least what the live instance ran between the scrapes
// (a drop would be a counter reset and a rate() spike).
func TestDaemonGadgetCountersSurviveAnInstance(t *testing.T) {
	requireRoot(t)
	env := map[string]string{"BPFSTATS_GADGET_NAME": "twins", "BPFSTATS_GADGET_IMAGE": "twins:1"}
	stay := testgadget.StartGadget(t, env, testgadget.TwoProgramsThreeMaps(true))
	leave := testgadget.StartGadget(t, env, testgadget.TwoProgramsThreeMaps(true))
	metricsAddr := testutil.FreeAddr(t)
	startDaemon(t, "GADGETID", daemonTestArgs(t, "--metrics-addr", metricsAddr, "--interval", "200ms", "--metrics-all", "--print")...)
	url := "http://" + metricsAddr + publish.MetricsPath
	gadget := map[string]string{"gadgetName": "twins", "progID": ""}
	progs := func(mfs map[string]*dto.MetricFamily, ids []uint32) (sum float64, found int) {
		for _, id := range ids {
			if v, err := metricstest.Value(mfs, "runcount_total", map[string]string{"progID": fmt.Sprint(id)}); err == nil {
				sum += v
				found++
			}
		}
		return sum, found
	}
	// scrape polls /metrics until ok accepts a scrape.
	scrape := func(what string, ok func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
		t.Helper()
		deadline := time.Now().Add(testutil.Wait)
		for {
			mfs, err := metricstest.ScrapeAndParse(url)
			if err == nil && ok(mfs) {
				return mfs
			}
			if time.Now().After(deadline) {
				t.Fatalf("no scrape with %s within %v (last error: %v)", what, testutil.Wait, err)
			}
			time.Sleep(100 * time.Millisecond) // polling an HTTP endpoint: nothing to wait on
		}
	}
	before := scrape("both instances running", func(mfs map[string]*dto.MetricFamily) bool {
		_, n1 := progs(mfs, stay.ProgramIDs)
		ran, n2 := progs(mfs, leave.ProgramIDs)
		return n1 == len(stay.ProgramIDs) && n2 == len(leave.ProgramIDs) && ran > 0
	})
	gBefore, err := metricstest.Value(before, "runcount_total", gadget)
	if err != nil {
		t.Fatal(err)
	}
	stayBefore, _ := progs(before, stay.ProgramIDs)
	leaveBefore, _ := progs(before, leave.ProgramIDs)

	leave.Stop()
	after := scrape("the ended instance gone", func(mfs map[string]*dto.MetricFamily) bool {
		_, gone := progs(mfs, leave.ProgramIDs)
		return gone == 0
	})
	gAfter, err := metricstest.Value(after, "runcount_total", gadget)
	if err != nil {
		t.Fatal(err)
	}
	stayAfter, _ := progs(after, stay.ProgramIDs)
	if grew := stayAfter - stayBefore; gAfter-gBefore < grew {
		t.Fatalf("gadget runcount_total went from %v to %v while the live instance ran %v more (the ended one had %v): counts were lost",
			gBefore, gAfter, grew, leaveBefore)
	}
}

// The daemon gives every one of its threads its timer slack, the Go
// runtime's monitor thread included (internal/timerslack).
func TestDaemonTimerSlack(t *testing.T) {
	cmd, _ := startDaemon(t, "GADGETID", daemonTestArgs(t, "--print", "--interval", "100ms")...)
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < 2 {
		t.Fatalf("%d threads, want the main one and the runtime's", len(entries))
	}
	for _, e := range entries {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", tid))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(data)); got != strconv.Itoa(int(defaultTimerSlack)) {
			t.Errorf("thread %d: timer slack %s ns, want %d", tid, got, defaultTimerSlack)
		}
	}
}

// After loading and after its first interval the daemon unmaps the
// binary's start-up pages (internal/exepages): its file-backed RSS drops.
func TestDaemonReleasesStartPages(t *testing.T) {
	cmd, log := startDaemon(t, "GADGETID", daemonTestArgs(t, "--print", "--interval", "1h", "--log-level", "debug")...)
	var fields map[string]any
	var seen []any
	for next := 0; fields["after"] != "first interval"; {
		fields, next = log.WaitMessage(t, next, "released the binary's start-up pages")
		seen = append(seen, fields["after"])
	}
	if len(seen) != 2 || seen[0] != "loading" {
		t.Errorf("releases after %v, want loading, then the first interval", seen)
	}
	before, _ := fields["rss_file_bytes_before"].(float64)
	after, _ := fields["rss_file_bytes_after"].(float64)
	mapped, _ := fields["mapped_bytes"].(float64)
	if mapped <= 0 || before <= 0 || after < 0 || after >= before {
		t.Fatalf("log line %v: want mapped bytes, and a file-backed RSS lower after than before", fields)
	}
	// The same, seen from outside the process an hour before its next
	// interval.
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(data), "RssFile:")
	kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(strings.SplitN(rest, "\n", 2)[0]), " kB"))
	if err != nil {
		t.Fatalf("RssFile in /proc/%d/status: %v", cmd.Process.Pid, err)
	}
	if float64(kb<<10) >= before {
		t.Errorf("RssFile %d KiB, want less than the %.0f KiB before the release", kb, before/1024)
	}
	t.Logf("RssFile %.0f KiB before the release, %.0f KiB after, %d KiB now", before/1024, after/1024, kb)
}
