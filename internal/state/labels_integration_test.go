package state_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

func TestMain(m *testing.M) {
	testgadget.RunIfChild()
	os.Exit(m.Run())
}

// One process in a cgroup of its own runs two labelled gadget instances
// and one unlabelled program: the tracker shows three gadgets, named by
// the program labels and by the environment, all placed in that cgroup;
// a restarted tracker finds the same from the kernel alone.
func TestLabelledGadgetsInOneProcess(t *testing.T) {
	src := testSource(t)
	mount, err := loader.CgroupMount()
	if err != nil {
		t.Fatal(err)
	}
	unit := fmt.Sprintf("bpfstats-test-%d.scope", os.Getpid())
	cgroup := testutil.NewCgroup(t, mount, unit)
	_, snaps := runTracker(t, src)
	<-snaps

	suffix := fmt.Sprint(os.Getpid())
	labels := []testgadget.ProgramLabels{
		{ID: "it-open-" + suffix, Name: "mytraceopen", Image: "ghcr.io/example/trace_open:latest"},
		{ID: "it-exec-" + suffix, Name: "mytraceexec", Image: "trace_exec:latest"},
	}
	g := testgadget.StartGadget(t, map[string]string{"BPFSTATS_GADGET_NAME": "runner"}, testgadget.GadgetSpec{
		Programs: []testgadget.GadgetProgram{{Name: "tk_unlabelled"}},
		Labelled: labels,
		Cgroup:   filepath.Join(mount, cgroup),
	})
	want := map[uint32]testgadget.ProgramLabels{
		g.ProgramIDs[0]: {Name: "runner"},
		g.ProgramIDs[1]: labels[0],
		g.ProgramIDs[2]: labels[1],
	}
	for id, l := range want {
		if l.ID == "" {
			continue
		}
		var shown struct {
			Metadata map[string]any `json:"metadata"`
		}
		testutil.Bpftool(t, &shown, "prog", "show", "id", fmt.Sprint(id))
		if shown.Metadata["gadget_id"] != l.ID || shown.Metadata["gadget_name"] != l.Name || shown.Metadata["gadget_image"] != l.Image {
			t.Errorf("bpftool prog show id %d: metadata %v, want %+v", id, shown.Metadata, l)
		}
	}

	check := func(snap *state.Snapshot) error {
		gadgets := map[string]bool{}
		for id, l := range want {
			r, ok := findRow(snap.Programs, id)
			switch {
			case !ok:
				return fmt.Errorf("program %d not in the snapshot", id)
			case l.ID != "" && (r.GadgetID != l.ID || r.GadgetName != l.Name || r.GadgetImage != l.Image):
				return fmt.Errorf("program %d in gadget %s/%s/%s, want %+v", id, r.GadgetID, r.GadgetName, r.GadgetImage, l)
			case l.ID == "" && r.GadgetName != l.Name:
				return fmt.Errorf("unlabelled program %d in gadget %q, want the environment's %q", id, r.GadgetName, l.Name)
			case r.Cgroup != cgroup || r.Unit != unit || r.Slice != testutil.TestSlice:
				return fmt.Errorf("program %d placed %+v, want cgroup %s", id, r.Placement, cgroup)
			}
			gadgets[r.GadgetID] = true
		}
		for id := range gadgets {
			info := snap.GadgetInfo[id]
			if info.Owner.PID != g.PID || info.Cgroup != cgroup || info.Unit != unit {
				return fmt.Errorf("gadget %s: owner %+v placed %+v, want process %d in %s", id, info.Owner, info.Placement, g.PID, cgroup)
			}
		}
		if len(gadgets) != 3 {
			return fmt.Errorf("%d gadgets, want 3", len(gadgets))
		}
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for err := check(<-snaps); err != nil; err = check(<-snaps) {
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}

	// A new tracker (a restart) finds the same, without any load event.
	kernel, err := loader.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kernel.Close() })
	restarted := state.New(kernel, state.Options{Node: "it", Source: "none"})
	if _, _, err := restarted.Resync(); err != nil {
		t.Fatal(err)
	}
	snap, err := restarted.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	if err := check(snap); err != nil {
		t.Errorf("after a restart: %v", err)
	}
}

func findRow(rows []*state.Row, id uint32) (state.Row, bool) {
	for _, r := range rows {
		if r.ProgID == id {
			return *r, true
		}
	}
	return state.Row{}, false
}
