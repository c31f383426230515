package state_test

import (
	"slices"
	"testing"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

// A sweep on the real kernel says where programs are attached: a raw
// tracepoint by its link, a socket filter has none; every program has as
// many attach points as bpftool lists links for it.
func TestSweepAttachPoints(t *testing.T) {
	if err := loader.CheckPrivileges(); err != nil {
		t.Skip("needs root: ", err)
	}
	kernel, err := loader.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kernel.Close() })
	rawTP, _ := testgadget.AttachSysEnter(t, "tk_state_attach")
	filter := testgadget.LoadSocketFilter(t, "tk_state_nolink")

	tr := state.New(kernel, state.Options{Node: "it"})
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	snap, err := tr.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	rows := make(map[uint32][]string, len(snap.Programs))
	for _, r := range snap.Programs {
		rows[r.ProgID] = r.Attach
	}
	if got := rows[testgadget.ProgramID(t, rawTP)]; !slices.Equal(got, []string{"raw_tp:sys_enter"}) {
		t.Errorf("raw tracepoint: attach %q, want [raw_tp:sys_enter]", got)
	}
	if got := rows[testgadget.ProgramID(t, filter)]; !slices.Equal(got, []string{state.NoLink}) {
		t.Errorf("socket filter: attach %q, want [%s]", got, state.NoLink)
	}

	var links []struct {
		ProgID uint32 `json:"prog_id"`
	}
	testutil.Bpftool(t, &links, "link", "show")
	perProg := make(map[uint32]int)
	for _, l := range links {
		perProg[l.ProgID]++
	}
	for id, attach := range rows {
		n := len(attach)
		if slices.Equal(attach, []string{state.NoLink}) {
			n = 0
		}
		if n != perProg[id] {
			t.Errorf("program %d: attach %q, bpftool lists %d links", id, attach, perProg[id])
		}
	}
}
