package state_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cilium/ebpf"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
	"github.com/bpfstats/tracker/pkg/register"
)

// registryTracker is a tracker on the real kernel reading the registry
// at path, after its start-up resync.
func registryTracker(t *testing.T, path string) (*state.Tracker, *loader.Registry) {
	t.Helper()
	kernel, err := loader.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kernel.Close() })
	reg, err := loader.OpenRegistry(path)
	if err != nil {
		t.Fatal(err)
	}
	tr := state.New(kernel, state.Options{Node: "it", Source: "none", Registry: reg})
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	return tr, reg
}

func sweep(t *testing.T, tr *state.Tracker) *state.Snapshot {
	t.Helper()
	snap, err := tr.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// One process (the test) loads two programs and registers them as two
// gadgets, after a tracker saw them: the next sweep shows two gadgets
// with those labels, and so does a new tracker (a restart). A labelled
// object keeps its own labels over a registration; a hostile entry is
// cleaned; the entry of a released program is removed by the next sweep.
func TestRegisteredGadgetsInOneProcess(t *testing.T) {
	testutil.RequireRoot(t)
	path := testutil.RegistryOnPrivateBPFFS(t)
	tr, reg := registryTracker(t, path)
	progA := testgadget.LoadSocketFilter(t, "tk_reg_a")
	progB := testgadget.LoadSocketFilter(t, "tk_reg_b")
	idA, idB := testgadget.ProgramID(t, progA), testgadget.ProgramID(t, progB)
	suffix := fmt.Sprint(os.Getpid())
	objLabels := testgadget.ProgramLabels{ID: "it-obj-" + suffix, Name: "objname", Image: "obj:latest"}
	labelled := testgadget.LoadLabelled(t, objLabels)
	hostile := testgadget.LoadSocketFilter(t, "tk_reg_hostile")
	if r, _ := findRow(sweep(t, tr).Programs, idA); r.GadgetName == "mytraceopen" {
		t.Fatalf("program %d in gadget %+v before its registration", idA, r)
	}

	client, err := register.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	want := map[uint32]register.Gadget{
		idA:                               {ID: "it-reg-open-" + suffix, Name: "mytraceopen", Image: "ghcr.io/example/trace_open:latest"},
		idB:                               {ID: "it-reg-exec-" + suffix, Name: "mytraceexec", Image: "trace_exec:latest"},
		testgadget.ProgramID(t, labelled): {ID: objLabels.ID, Name: objLabels.Name, Image: objLabels.Image},
	}
	if err := client.RegisterProgram(progA, want[idA]); err != nil {
		t.Fatal(err)
	}
	if err := client.Register(idB, want[idB]); err != nil {
		t.Fatal(err)
	}
	if err := client.RegisterProgram(labelled, register.Gadget{ID: "it-loser-" + suffix, Name: "loser"}); err != nil {
		t.Fatal(err)
	}
	writeHostile(t, path, testgadget.ProgramID(t, hostile))

	check := func(snap *state.Snapshot) error {
		for id, g := range want {
			r, ok := findRow(snap.Programs, id)
			switch {
			case !ok:
				return fmt.Errorf("program %d not in the snapshot", id)
			case r.GadgetID != g.ID || r.GadgetName != g.Name || r.GadgetImage != g.Image:
				return fmt.Errorf("program %d in gadget %s/%s/%s, want %+v", id, r.GadgetID, r.GadgetName, r.GadgetImage, g)
			case snap.GadgetInfo[r.GadgetID].Owner.PID != uint32(os.Getpid()):
				return fmt.Errorf("gadget %s owned by %+v, want the test process", r.GadgetID, snap.GadgetInfo[r.GadgetID].Owner)
			}
		}
		return checkHostile(snap, testgadget.ProgramID(t, hostile))
	}
	if err := check(sweep(t, tr)); err != nil {
		t.Fatal(err)
	}
	restarted, _ := registryTracker(t, path)
	if err := check(sweep(t, restarted)); err != nil {
		t.Fatalf("after a restart: %v", err)
	}

	progA.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		snap := sweep(t, restarted)
		regs, err := reg.Registrations()
		if err != nil {
			t.Fatal(err)
		}
		if !registered(regs, idA) {
			if snap.Counters.RegistrationsRemoved != 1 || !registered(regs, idB) || len(regs) != 3 {
				t.Fatalf("after releasing program %d: %d removed, left %+v; want 1 removed, 3 left", idA, snap.Counters.RegistrationsRemoved, regs)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the registration of released program %d is still there", idA)
		}
	}
}

func registered(regs []loader.Registration, id uint32) bool {
	for _, r := range regs {
		if r.ProgID == id {
			return true
		}
	}
	return false
}

// writeHostile registers program id with 64 bytes of garbage as its ID
// (no NUL, control characters, invalid UTF-8) and a name with escapes.
func writeHostile(t *testing.T, path string, id uint32) {
	t.Helper()
	tag := programTag(t, id)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var v register.Value
	for i := range v.ID {
		v.ID[i] = byte(i*37 + 1)
	}
	copy(v.Name[:], "evil\n\x1b[2Jname\xff")
	if err := m.Update(&register.Key{ProgID: id, Tag: tag}, &v, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
}

// checkHostile checks that program id's gadget labels are cleaned.
func checkHostile(snap *state.Snapshot, id uint32) error {
	r, ok := findRow(snap.Programs, id)
	if !ok {
		return fmt.Errorf("hostile program %d not in the snapshot", id)
	}
	control := func(r rune) bool { return r < 0x20 || r == 0x7f }
	if r.GadgetName != "evil[2Jname" || r.GadgetID == "" || len(r.GadgetID) > register.IDSize ||
		!utf8.ValidString(r.GadgetID) || strings.ContainsFunc(r.GadgetID, control) {
		return fmt.Errorf("hostile program %d in gadget %q/%q, want its labels cleaned", id, r.GadgetID, r.GadgetName)
	}
	return nil
}

func programTag(t *testing.T, id uint32) [8]byte {
	t.Helper()
	k, err := loader.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	info, err := k.ReadProgram(id)
	if err != nil {
		t.Fatal(err)
	}
	return info.Tag
}
