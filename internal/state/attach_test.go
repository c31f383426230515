package state

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/bpfstats/tracker/internal/loader"
)

// linkKernel is a fakeKernel with BPF links.
type linkKernel struct {
	*fakeKernel
	links []attachment
	err   error
}

func (k *linkKernel) ReadAttachments(fn func(progID uint32, attach string)) error {
	for _, l := range k.links {
		fn(l.progID, l.attach)
	}
	return k.err
}

func TestSweepFillsAttach(t *testing.T) {
	k := &linkKernel{fakeKernel: newFakeKernel()}
	for id := uint32(1); id <= 3; id++ {
		k.progs[id] = loader.ProgramInfo{ID: id, Name: "p", Tag: tag(byte(id)), LoadTime: 1}
	}
	k.procs[10] = loader.Process{PID: 10, StartTime: 1, Comm: "g", Exe: "/bin/g"}
	k.holders[1] = []uint32{10}
	k.links = []attachment{
		{3, "xdp:lo"},
		{1, "raw_tp:sys_enter"},
		{0, "struct_ops:map=5"}, // attaches no program
		{99, "iter:bpf_map"},    // a program the inventory does not have (yet)
		{1, "cgroup:/a.slice:ingress"},
	}
	tr, _ := newTracker(t, k.fakeKernel)
	tr.kernel = k
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	snap := sweep(t, tr)
	want := map[uint32][]string{
		1: {"cgroup:/a.slice:ingress", "raw_tp:sys_enter"},
		2: {NoLink},
		3: {"xdp:lo"},
	}
	for id, w := range want {
		if got := programRow(t, snap, id).Attach; !slices.Equal(got, w) {
			t.Errorf("program %d: Attach %q, want %q", id, got, w)
		}
	}
	for _, g := range snap.Gadgets {
		if g.Attach != nil {
			t.Errorf("gadget row %s has Attach %q", g.GadgetName, g.Attach)
		}
	}
	// Rows do not share backing arrays: appending to one leaves the next.
	r1 := programRow(t, snap, 1)
	_ = append(r1.Attach, "x")
	_ = append(programRow(t, snap, 2).Attach, "x")
	if got := programRow(t, snap, 3).Attach; !slices.Equal(got, want[3]) {
		t.Errorf("program 3's Attach changed by an append to another row: %q", got)
	}
	js, err := json.Marshal(r1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js), `"attach":["cgroup:/a.slice:ingress","raw_tp:sys_enter"]`) {
		t.Errorf("JSON row without the attach field: %s", js)
	}
}

func TestSweepAttachUnknown(t *testing.T) {
	for _, c := range []struct {
		name    string
		err     error
		wantErr bool
	}{
		{"unsupported", errors.Join(errors.ErrUnsupported, errors.New("EINVAL")), false},
		{"failed", errors.New("EPERM"), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := &linkKernel{fakeKernel: newFakeKernel(), links: []attachment{{1, "raw_tp:sys_enter"}}}
			k.progs[1] = loader.ProgramInfo{ID: 1, Name: "p", Tag: tag(1), LoadTime: 1}
			tr, _ := newTracker(t, k.fakeKernel)
			tr.kernel = k
			if _, _, err := tr.Resync(); err != nil {
				t.Fatal(err)
			}
			// A walk that worked, in storage the next snapshot reuses: its
			// unchanged row must not keep the old Attach.
			tr.Recycle(sweep(t, tr))
			k.err = c.err
			snap, err := tr.Sweep()
			if gotErr := err != nil && strings.Contains(err.Error(), "reading attach points"); gotErr != c.wantErr {
				t.Errorf("Sweep error %v, want an attach error: %v", err, c.wantErr)
			}
			// A walk that did not finish says nothing, not "no link".
			if got := programRow(t, snap, 1).Attach; got != nil {
				t.Errorf("Attach %q after a walk that did not finish, want none", got)
			}
			js, _ := json.Marshal(programRow(t, snap, 1))
			if strings.Contains(string(js), `"attach"`) {
				t.Errorf("row JSON has attach: %s", js)
			}
		})
	}
}
