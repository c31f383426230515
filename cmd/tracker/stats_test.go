package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testutil"
)

var updateGolden = flag.Bool("update", false, "rewrite golden files in testdata")

// goldenSnapshot is a sweep with a gadget of two programs sharing a map and
// one unowned program; every number is distinct from zero so that a
// dropped field shows.
func goldenSnapshot() *state.Snapshot {
	owner := state.ProcessRef{PID: 4242, Comm: "trace_open", Exe: "/usr/local/bin/trace_open"}
	gadget := state.Gadget{ID: "6bcfcca7a12", Name: "mytraceopen", Image: "trace_open:latest", Owner: owner}
	prog := func(id uint32, name string, runtime uint64, maps []uint32) state.Row {
		r := state.Row{
			NodeName: "node-a", GadgetID: gadget.ID, GadgetName: gadget.Name, GadgetImage: gadget.Image,
			ProgID: id, ProgName: name, ProgType: "tracepoint",
			PIDs: []uint32{4242}, Comms: []string{"trace_open"},
			Loader: &owner, MapIDs: maps, Tag: "00000000000004ec",
		}
		r.Runtime, r.Runcount, r.MapMemory, r.MapCount = runtime, runtime/100, 4096*uint64(len(maps)), len(maps)
		r.RuntimeDelta, r.RuncountDelta, r.CPUPercent, r.RecursionMisses = runtime/10, runtime/1000, 0.25, 2
		return r
	}
	p1 := prog(1260, "ig_openat_x", 1494405100, []uint32{7, 8})
	p2 := prog(1262, "ig_openat_e", 3309752000, []uint32{7})
	unowned := state.Row{
		NodeName: "node-a", ProgID: 2, ProgName: "hid_tail_call", ProgType: "tracing",
		PIDs: []uint32{}, Comms: []string{}, MapIDs: []uint32{1}, Tag: "0000000000000002",
	}
	unowned.MapMemory, unowned.MapCount, unowned.RecursionMisses = 8512, 1, 1
	g := state.Row{
		NodeName: "node-a", GadgetID: gadget.ID, GadgetName: gadget.Name, GadgetImage: gadget.Image,
		PIDs: []uint32{4242}, Comms: []string{"trace_open"}, Loader: &owner, MapIDs: []uint32{7, 8},
	}
	g.Runtime, g.Runcount, g.MapMemory, g.MapCount = p1.Runtime+p2.Runtime, p1.Runcount+p2.Runcount, 8192, 2
	g.RuntimeDelta, g.RuncountDelta, g.CPUPercent = p1.RuntimeDelta+p2.RuntimeDelta, p1.RuncountDelta+p2.RuncountDelta, 0.5
	g.RecursionMisses, g.ProgramCount = 4, 2
	return &state.Snapshot{
		Node:       "node-a",
		Time:       time.Date(2025, 11, 26, 6, 0, 0, 0, time.UTC),
		Elapsed:    time.Second,
		Source:     "perf",
		Programs:   []*state.Row{&unowned, &p1, &p2},
		Gadgets:    []state.Row{g},
		GadgetInfo: map[string]state.Gadget{gadget.ID: gadget},
	}
}

// TestStatsJSONGolden pins the rows "tracker stats -o json" prints, with
// and without --all.
func TestStatsJSONGolden(t *testing.T) {
	for _, tc := range []struct {
		golden string
		all    bool
	}{
		{"stats_gadgets.golden", false},
		{"stats_programs.golden", true},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			var out bytes.Buffer
			o := outputFlags{output: "json"}
			print, err := o.printer(&out, tc.all)
			if err != nil {
				t.Fatal(err)
			}
			snap := goldenSnapshot()
			if err := print(snap); err != nil {
				t.Fatal(err)
			}
			testutil.CheckGoldenJSON(t, filepath.Join("testdata", tc.golden), out.Bytes(), *updateGolden)
		})
	}
}

// Names a program owner chose print escaped and cut in tables; the JSON
// keeps them whole.
func TestStatsTableEscapesHostileNames(t *testing.T) {
	hostile := "\x1b]0;owned\x07\x1b[2J\r\n\xff\u202e" + strings.Repeat("n", 300)
	snap := goldenSnapshot()
	snap.Node = "node\x1b[1m"
	named := append([]*state.Row(nil), snap.Programs...)
	for i := range snap.Gadgets {
		named = append(named, &snap.Gadgets[i])
	}
	for _, r := range named {
		r.GadgetName, r.GadgetImage, r.ProgName, r.ProgType, r.Tag = hostile, hostile, hostile, hostile, hostile
		r.Comms = []string{hostile}
		r.Loader = &state.ProcessRef{Comm: hostile, Exe: hostile}
	}
	for _, all := range []bool{false, true} {
		var out bytes.Buffer
		o := outputFlags{output: "table", fields: "comms,pids,progType,tag"}
		print, err := o.printer(&out, all)
		if err != nil {
			t.Fatal(err)
		}
		if err := print(snap); err != nil {
			t.Fatal(err)
		}
		text := out.String()
		t.Logf("table:\n%s", text)
		if strings.ContainsAny(text, "\x1b\x07\r\u202e") || !utf8.ValidString(text) {
			t.Fatalf("raw control bytes in the table: %q", text)
		}
		lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
		want := 2 + len(snap.Gadgets)
		if all {
			want = 2 + len(snap.Programs)
		}
		if len(lines) != want {
			t.Fatalf("%d lines, want %d: a newline in a name must not start a row", len(lines), want)
		}
		if !strings.Contains(lines[0], `node=node\x1b[1m`) || !strings.Contains(lines[2], `\x1b]0;owned\x07\x1b[2J\x0d\x0a\xff\u202e`) {
			t.Fatalf("escapes missing:\n%s", text)
		}
		for _, l := range lines {
			if n := utf8.RuneCountInString(l); n > 8*publish.MaxCellRunes {
				t.Fatalf("line of %d runes", n)
			}
		}
	}
	var out bytes.Buffer
	print, err := (&outputFlags{output: "json"}).printer(&out, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := print(snap); err != nil {
		t.Fatal(err)
	}
	var rows []state.Row
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil || rows[0].ProgName != strings.ToValidUTF8(hostile, "\ufffd") {
		t.Fatalf("JSON lost the name: %v", err)
	}
}
