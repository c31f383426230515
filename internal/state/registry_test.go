package state

import (
	"errors"
	"slices"
	"testing"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/pkg/register"
)

// fakeRegistry is an in-memory registry map.
type fakeRegistry struct {
	regs []loader.Registration
	err  error
}

func (r *fakeRegistry) Registrations() ([]loader.Registration, error) {
	return slices.Clone(r.regs), r.err
}

func (r *fakeRegistry) Remove(regs []loader.Registration) (int, error) {
	n := 0
	for _, gone := range regs {
		r.regs = slices.DeleteFunc(r.regs, func(x loader.Registration) bool {
			if x.ProgID == gone.ProgID && x.Tag == gone.Tag {
				n++
				return true
			}
			return false
		})
	}
	return n, nil
}

func registryFixture(t *testing.T) (*fakeKernel, *fakeRegistry, *Tracker) {
	t.Helper()
	k := newFakeKernel()
	k.procs[10] = loader.Process{PID: 10, StartTime: 1, Comm: "runner", Exe: "/runner",
		Labels: map[string]string{labelID: "env-id", labelImage: "env:image"}}
	for id := range uint32(3) {
		k.progs[id+1] = loader.ProgramInfo{ID: id + 1, Tag: tag(byte(id + 1)), LoadTime: 1}
		k.holders[id+1] = []uint32{10}
	}
	reg := &fakeRegistry{}
	c := newClock()
	tr := New(k, Options{Node: "n1", Source: "test", now: c.now, Registry: reg})
	return k, reg, tr
}

// Registrations name the gadgets of a process's programs, field by field
// before the environment; entries of programs gone (no such ID, or
// another tag) are removed and counted; a failed read keeps the last
// registrations and removes nothing.
func TestRegistrationsLabelAndAreCollected(t *testing.T) {
	k, reg, tr := registryFixture(t)
	reg.regs = []loader.Registration{
		{ProgID: 1, Tag: tag(1), Gadget: register.Gadget{ID: "g1", Name: "one"}},
		{ProgID: 2, Tag: tag(2), Gadget: register.Gadget{Name: "two", Image: "two:latest"}},
		{ProgID: 3, Tag: tag(9), Gadget: register.Gadget{ID: "stale"}}, // ID 3 reused
		{ProgID: 7, Tag: tag(7), Gadget: register.Gadget{ID: "gone"}},
	}
	snap := sweep(t, tr)
	for id, want := range map[uint32]Gadget{
		1: {ID: "g1", Name: "one", Image: "env:image"},
		2: {ID: gadgetID("n1", 10, 1, "ni\x00two\x00two:latest"), Name: "two", Image: "two:latest"},
		3: {ID: "env-id", Name: "runner", Image: "env:image"},
	} {
		if r := programRow(t, snap, id); r.GadgetID != want.ID || r.GadgetName != want.Name || r.GadgetImage != want.Image {
			t.Errorf("program %d: gadget %s/%s/%s, want %+v", id, r.GadgetID, r.GadgetName, r.GadgetImage, want)
		}
	}
	if len(snap.Gadgets) != 3 || snap.Counters.RegistrationsRemoved != 2 || len(reg.regs) != 2 {
		t.Fatalf("%d gadgets, %d removed, left %+v; want 3 gadgets, 2 removed", len(snap.Gadgets), snap.Counters.RegistrationsRemoved, reg.regs)
	}

	delete(k.progs, 1)
	delete(k.holders, 1)
	reg.err = errors.New("map gone")
	if _, err := tr.Sweep(); err == nil {
		t.Error("a failed registry read is not reported")
	}
	if r := programRow(t, tr.snapshot(tr.opts.now(), nil), 2); r.GadgetName != "two" || len(reg.regs) != 2 {
		t.Errorf("after a failed read: program 2 in %q, registrations %+v; want them kept", r.GadgetName, reg.regs)
	}
	reg.err = nil
	if snap := sweep(t, tr); snap.Counters.RegistrationsRemoved != 3 || len(reg.regs) != 1 {
		t.Errorf("%d removed, left %+v; want program 1's removed", snap.Counters.RegistrationsRemoved, reg.regs)
	}
}

// Programs without labels share one record, which a registration never
// writes to: the registered program gets its own.
func TestUnlabelledProgramsShareLabels(t *testing.T) {
	_, reg, tr := registryFixture(t)
	reg.regs = []loader.Registration{{ProgID: 1, Tag: tag(1), Gadget: register.Gadget{ID: "g1"}}}
	snap := sweep(t, tr)
	if l := tr.programs[1].labels; l == &tr.noLabels || l.id != "g1" {
		t.Errorf("registered program 1: labels %+v (shared: %v)", l, l == &tr.noLabels)
	}
	for _, id := range []uint32{2, 3} {
		if tr.programs[id].labels != &tr.noLabels {
			t.Errorf("program %d: labels %+v, not the shared record", id, tr.programs[id].labels)
		}
		if r := programRow(t, snap, id); r.GadgetID == "g1" {
			t.Errorf("program %d took program 1's registration", id)
		}
	}
	if tr.noLabels != (programLabels{final: true}) {
		t.Errorf("shared labels written: %+v", tr.noLabels)
	}
}

// A program no process holds (pinned) gets a gadget of its own from its
// registration, and loses it when the registration goes.
func TestRegistrationOfPinnedProgram(t *testing.T) {
	k, reg, tr := registryFixture(t)
	delete(k.holders, 1)
	if r := programRow(t, sweep(t, tr), 1); r.GadgetID != "" {
		t.Fatalf("pinned unregistered program in gadget %q", r.GadgetID)
	}
	reg.regs = []loader.Registration{{ProgID: 1, Tag: tag(1), Gadget: register.Gadget{ID: "pinned", Name: "p"}}}
	snap := sweep(t, tr)
	if r := programRow(t, snap, 1); r.GadgetID != "pinned" || snap.GadgetInfo["pinned"].Owner.PID != 0 {
		t.Fatalf("registered pinned program in gadget %q owned by %+v", r.GadgetID, snap.GadgetInfo["pinned"].Owner)
	}
	reg.regs = nil
	if r := programRow(t, sweep(t, tr), 1); r.GadgetID != "" {
		t.Errorf("pinned program still in gadget %q after its registration went", r.GadgetID)
	}
}
