package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"reflect"
	"testing"

	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

// sourcedRow is a row as "tracker stats -o json" prints it (see
// publish.WriteRowsJSON): with the event source of the tracker that made
// it, as the output's metadata.
type sourcedRow struct {
	state.Row
	Source string `json:"source,omitempty"`
}

// trackerTable runs "tracker stats -o json args..." as a child process and
// returns the rows of its first table.
func trackerTable(t *testing.T, args ...string) []sourcedRow {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"stats", "-o", "json", "--log-level", "warn"}, args...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tracker stats %v: %v\n%s", args, err, stderr.String())
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 64<<20)
	if !sc.Scan() {
		t.Fatalf("tracker stats %v printed nothing; stderr:\n%s", args, stderr.String())
	}
	var rows []sourcedRow
	if err := json.Unmarshal(sc.Bytes(), &rows); err != nil {
		t.Fatalf("tracker stats %v: %v", args, err)
	}
	return rows
}

// A one-shot (--count 1: no event source, no stats fd, one sweep) prints
// the rows a running tracker prints first, for the same kernel state: the
// same programs, owners, pids, maps and counters. Only what tells the two
// apart differs: the source (none) and the cost of stats accounting,
// which only a running tracker measures.
func TestOneShotMatchesRunningTracker(t *testing.T) {
	requireRoot(t)
	g := testgadget.StartGadget(t, map[string]string{
		"BPFSTATS_GADGET_NAME":  "oneshotgadget",
		"BPFSTATS_GADGET_IMAGE": "oneshot_gadget:v1",
	}, testgadget.TwoProgramsThreeMaps(false))
	testgadget.LoadSocketFilters(t, "bpfstats_t_1shot", 40)

	oneShot := trackerTable(t, "--all", "--count", "1")
	running := trackerTable(t, "--all", "--count", "2", "--interval", "100ms")

	// Each tracker lists its own iterators (the other's are gone): those
	// rows are left out.
	ours := func(rows []sourcedRow) map[uint32]state.Row {
		m := make(map[uint32]state.Row)
		for _, r := range rows {
			if r.GadgetName == "bpfstats-tracker" {
				continue
			}
			r.Row.Cost.StatsCostPercent = 0
			m[r.ProgID] = r.Row
		}
		return m
	}
	a, b := ours(oneShot), ours(running)
	for _, r := range oneShot {
		if r.Source != OneShotSource {
			t.Fatalf("one-shot row source %q, want %q", r.Source, OneShotSource)
		}
	}
	for _, id := range g.ProgramIDs {
		if _, ok := a[id]; !ok {
			t.Fatalf("one-shot lacks gadget program %d", id)
		}
	}
	for id, ra := range a {
		rb, ok := b[id]
		if !ok {
			t.Errorf("program %d (%s) only in the one-shot", id, ra.ProgName)
			continue
		}
		if !reflect.DeepEqual(ra, rb) {
			t.Errorf("program %d:\none-shot %+v\nrunning  %+v", id, ra, rb)
		}
	}
	for id, rb := range b {
		if _, ok := a[id]; !ok {
			t.Errorf("program %d (%s) only in the running tracker", id, rb.ProgName)
		}
	}
	row := a[g.ProgramIDs[0]]
	if row.GadgetName != "oneshotgadget" ||
		row.MapMemory == 0 || len(row.PIDs) != 1 || row.PIDs[0] != g.PID {
		t.Errorf("gadget program row %+v: want the gadget, its pids and map memory", row)
	}
	if mem := testutil.BpftoolMapMemory(t, row.MapIDs); row.MapMemory != mem {
		t.Errorf("map memory %d, bpftool %d", row.MapMemory, mem)
	}
}
