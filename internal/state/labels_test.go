package state

import (
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/bpfstats/tracker/internal/loader"
)

// labelKernel is a fakeKernel that also reads program metadata and
// resolves cgroup IDs.
type labelKernel struct {
	*fakeKernel
	meta    map[uint32]loader.ProgramMetadata
	cgroups map[uint64]string
	// metaReads counts ReadProgramMetadata calls per program.
	metaReads map[uint32]int
}

func newLabelKernel() *labelKernel {
	return &labelKernel{
		fakeKernel: newFakeKernel(),
		meta:       map[uint32]loader.ProgramMetadata{},
		cgroups:    map[uint64]string{},
		metaReads:  map[uint32]int{},
	}
}

func (k *labelKernel) ReadProgramMetadata(id uint32) (loader.ProgramMetadata, error) {
	k.metaReads[id]++
	if _, ok := k.progs[id]; !ok {
		return loader.ProgramMetadata{}, fmt.Errorf("program %d: %w", id, os.ErrNotExist)
	}
	md := k.meta[id]
	md.Tag = k.progs[id].Tag
	return md, nil
}

func (k *labelKernel) CgroupPath(id uint64) (string, error) {
	if p, ok := k.cgroups[id]; ok {
		return p, nil
	}
	return "", fmt.Errorf("cgroup %d: %w", id, os.ErrNotExist)
}

// labelled is the metadata of a program labelled id, name, image.
func labelled(id, name, image string) loader.ProgramMetadata {
	return loader.ProgramMetadata{Rodata: true, Vars: map[string]string{
		"gadget_id": id, "gadget_name": name, "gadget_image": image,
	}}
}

// daemon is process 10 running three gadgets: programs 1 and 2 labelled
// A, program 3 labelled B, program 4 unlabelled; the process has
// environment labels too, and holds every program.
func daemon(k *labelKernel) {
	k.procs[10] = loader.Process{PID: 10, StartTime: 500, Comm: "ig", Exe: "/usr/bin/ig",
		Labels: map[string]string{"NAME": "ig-daemon", "ID": "env-id"},
		Cgroup: "/system.slice/ig.service"}
	// Programs 1 and 2 share gadget A's .rodata map, 3 has gadget B's.
	k.maps[91] = loader.MapInfo{ID: 91, Name: ".rodata"}
	k.maps[92] = loader.MapInfo{ID: 92, Name: "trace_ex.rodata"}
	rodata := map[uint32][]uint32{1: {91}, 2: {91}, 3: {92}}
	for id := uint32(1); id <= 4; id++ {
		k.progs[id] = loader.ProgramInfo{ID: id, Name: fmt.Sprintf("p%d", id), Tag: tag(byte(id)), LoadTime: 1, MapIDs: rodata[id]}
		k.holders[id] = []uint32{10}
	}
	k.meta[1] = labelled("gadget-a", "mytraceopen", "trace_open:latest")
	k.meta[2] = labelled("gadget-a", "mytraceopen", "trace_open:latest")
	k.meta[3] = labelled("gadget-b", "mytraceexec", "trace_exec:latest")
	k.meta[4] = loader.ProgramMetadata{}
}

// checkDaemonGadgets checks the three gadgets of daemon in snap.
func checkDaemonGadgets(t *testing.T, snap *Snapshot) {
	t.Helper()
	want := map[uint32]Gadget{
		1: {ID: "gadget-a", Name: "mytraceopen", Image: "trace_open:latest"},
		2: {ID: "gadget-a", Name: "mytraceopen", Image: "trace_open:latest"},
		3: {ID: "gadget-b", Name: "mytraceexec", Image: "trace_exec:latest"},
		// The environment labels name the process's unlabelled gadget.
		4: {ID: "env-id", Name: "ig-daemon", Image: "/usr/bin/ig"},
	}
	for id, g := range want {
		r := programRow(t, snap, id)
		if r.GadgetID != g.ID || r.GadgetName != g.Name || r.GadgetImage != g.Image {
			t.Errorf("program %d in gadget %s/%s/%s, want %s/%s/%s", id, r.GadgetID, r.GadgetName, r.GadgetImage, g.ID, g.Name, g.Image)
		}
		if r.Unit != "ig.service" || r.Cgroup != "/system.slice/ig.service" {
			t.Errorf("program %d placement %+v, want ig.service", id, r.Placement)
		}
	}
	if len(snap.Gadgets) != 3 {
		t.Fatalf("%d gadgets, want 3: %+v", len(snap.Gadgets), snap.Gadgets)
	}
	for _, g := range snap.Gadgets {
		info := snap.GadgetInfo[g.GadgetID]
		if info.Owner.PID != 10 || g.Loader == nil || g.Loader.PID != 10 || g.Unit != "ig.service" || info.Unit != "ig.service" {
			t.Errorf("gadget %s: owner %+v, loader %+v, placement %+v", g.GadgetID, info.Owner, g.Loader, g.Placement)
		}
	}
}

// One process running labelled gadget instances shows one gadget per
// label, named by the labels, whether the programs came by load events or
// were found by a (restarted) tracker's holders scan.
func TestProgramLabelsSplitOneProcess(t *testing.T) {
	k := newLabelKernel()
	daemon(k)
	tr := New(k, Options{Node: "n1", Source: "test"})
	for id := uint32(1); id <= 4; id++ {
		tr.apply(load(id, 10))
	}
	checkDaemonGadgets(t, sweep(t, tr))
	sweep(t, tr)
	for id := uint32(1); id <= 3; id++ {
		if n := k.metaReads[id]; n != 1 {
			t.Errorf("program %d: %d metadata reads, want 1", id, n)
		}
	}

	// A restarted tracker finds the same gadgets, from the kernel alone.
	restarted := New(k, Options{Node: "n1", Source: "test"})
	if _, _, err := restarted.Resync(); err != nil {
		t.Fatal(err)
	}
	checkDaemonGadgets(t, sweep(t, restarted))
}

// A labelled program no process holds (pinned, kept by a link) keeps its
// gadget after its process exits, and a restarted tracker finds it.
func TestProgramLabelsWithoutHolder(t *testing.T) {
	k := newLabelKernel()
	daemon(k)
	tr := New(k, Options{Node: "n1", Source: "test"})
	for id := uint32(1); id <= 4; id++ {
		tr.apply(load(id, 10))
	}
	sweep(t, tr)
	delete(k.procs, 10)
	clear(k.holders)
	for _, tracker := range []*Tracker{tr, New(k, Options{Node: "n1", Source: "test"})} {
		if _, _, err := tracker.Resync(); err != nil {
			t.Fatal(err)
		}
		snap := sweep(t, tracker)
		for id, want := range map[uint32]string{1: "gadget-a", 2: "gadget-a", 3: "gadget-b", 4: ""} {
			if r := programRow(t, snap, id); r.GadgetID != want {
				t.Errorf("program %d in gadget %q, want %q", id, r.GadgetID, want)
			}
		}
		if len(snap.Gadgets) != 2 {
			t.Fatalf("%d gadgets, want 2: %+v", len(snap.Gadgets), snap.Gadgets)
		}
		for _, g := range snap.Gadgets {
			if g.Loader != nil || snap.GadgetInfo[g.GadgetID].Owner.PID != 0 || g.ProgramCount == 0 {
				t.Errorf("gadget %s without a process: loader %+v, info %+v", g.GadgetID, g.Loader, snap.GadgetInfo[g.GadgetID])
			}
		}
	}
}

// A loader that binds .rodata right after the load (libbpf's
// BPF_PROG_BIND_MAP): the read at the load event finds none, the first
// sweep's finds the labels and moves the program to its gadget.
func TestProgramLabelsBoundAfterLoad(t *testing.T) {
	k := newLabelKernel()
	daemon(k)
	tr := New(k, Options{Node: "n1", Source: "test"})
	bound, info := k.meta[1], k.progs[1]
	k.meta[1] = loader.ProgramMetadata{}
	k.progs[1] = loader.ProgramInfo{ID: 1, Tag: info.Tag, LoadTime: 1}
	tr.apply(load(1, 10))
	k.meta[1], k.progs[1] = bound, info
	snap := sweep(t, tr)
	if r := programRow(t, snap, 1); r.GadgetID != "gadget-a" {
		t.Errorf("program 1 in gadget %q after the sweep, want gadget-a", r.GadgetID)
	}
	checkDaemonGadgets(t, snap)
	sweep(t, tr)
	if n := k.metaReads[1]; n != 2 {
		t.Errorf("program 1: %d metadata reads, want 2", n)
	}
	// A program without .rodata is read once; the sweep's map IDs tell.
	if n := k.metaReads[4]; n > 1 {
		t.Errorf("program 4: %d metadata reads, want at most 1", n)
	}
}

// A program a sweep found without a holder has no placement; its load
// event, applied after, places it: the next snapshot's row has the
// event's cgroup and a new row and slow version, so that publishers
// encode it again.
func TestPlacementAfterRow(t *testing.T) {
	k := newLabelKernel()
	k.progs[5] = loader.ProgramInfo{ID: 5, Name: "p5", Tag: tag(5), LoadTime: 1}
	k.cgroups[77] = "/system.slice/late.service"
	// Program 6's holder has no cgroup path (cgroup v1, or unreadable).
	k.procs[11] = loader.Process{PID: 11, StartTime: 600, Comm: "v1", Exe: "/usr/bin/v1"}
	k.progs[6] = loader.ProgramInfo{ID: 6, Name: "p6", Tag: tag(6), LoadTime: 1}
	k.holders[6] = []uint32{11}
	tr := New(k, Options{Node: "n1", Source: "test"})
	before := sweep(t, tr)
	if r := programRow(t, before, 5); r.Placement != (Placement{}) {
		t.Fatalf("unplaced program 5: placement %+v", r.Placement)
	}
	ev := load(5, 42) // a process gone by now: the cgroup ID alone places it
	ev.CgroupID = 77
	tr.apply(ev)
	after := sweep(t, tr)
	if r := programRow(t, after, 5); r.Cgroup != k.cgroups[77] || r.Unit != "late.service" {
		t.Errorf("program 5 after its event: placement %+v, want %s", r.Placement, k.cgroups[77])
	}
	i := slices.IndexFunc(after.Programs, func(r *Row) bool { return r.ProgID == 5 })
	j := slices.IndexFunc(before.Programs, func(r *Row) bool { return r.ProgID == 5 })
	if after.RowVersion(i) == before.RowVersion(j) || after.SlowVersion(i) == before.SlowVersion(j) {
		t.Errorf("program 5 placed: row version %d -> %d, slow %d -> %d; want both new",
			before.RowVersion(j), after.RowVersion(i), before.SlowVersion(j), after.SlowVersion(i))
	}
	// Nothing changed: no program's row has a new version, not even one
	// whose holder has no cgroup path (its placement stays empty).
	again := sweep(t, tr)
	for i, r := range again.Programs {
		if again.RowVersion(i) != after.RowVersion(i) {
			t.Errorf("program %d: row version %d -> %d without a change", r.ProgID, after.RowVersion(i), again.RowVersion(i))
		}
	}
}

// A row built before its program's tag was known (an event without one,
// the read not yet done) shows the tag once it is, with a new version.
func TestRowTagLearnt(t *testing.T) {
	tr := New(newFakeKernel(), Options{Node: "n1"})
	p := &program{id: 1, info: loader.ProgramInfo{Name: "p1", Type: 2}, row: new(Row)}
	r := tr.programRow(p)
	ver := p.slowVer
	if r.Tag != "0000000000000000" {
		t.Fatalf("row without a tag: Tag %q", r.Tag)
	}
	p.info.Tag = tag(1)
	if r := tr.programRow(p); r.Tag != hex.EncodeToString(p.info.Tag[:]) || p.slowVer == ver {
		t.Errorf("tag learnt: row Tag %q, slow version %d -> %d; want %x and a new version", r.Tag, ver, p.slowVer, p.info.Tag)
	}
}

// The cgroup of a load event (the fentry source's) wins over the one
// /proc shows now; without it, /proc's.
func TestPlacementFromEventCgroup(t *testing.T) {
	k := newLabelKernel()
	daemon(k)
	const cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	k.cgroups[77] = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8a2c7f3e_1b4d_4c5e_9f60_0a1b2c3d4e5f.slice/cri-containerd-" + cid + ".scope"
	tr := New(k, Options{Node: "n1", Source: "test"})
	ev := load(4, 10)
	ev.CgroupID = 77
	tr.apply(ev)
	ev = load(3, 10)
	ev.CgroupID = 78 // unknown: /proc's
	tr.apply(ev)
	snap := sweep(t, tr)
	r := programRow(t, snap, 4)
	want := Placement{Cgroup: k.cgroups[77], Unit: "cri-containerd-" + cid + ".scope",
		Slice:       "kubepods-burstable-pod8a2c7f3e_1b4d_4c5e_9f60_0a1b2c3d4e5f.slice",
		ContainerID: cid, PodUID: "8a2c7f3e-1b4d-4c5e-9f60-0a1b2c3d4e5f", PodQoS: "Burstable"}
	if r.Placement != want {
		t.Errorf("program 4 placement\n got %+v\nwant %+v", r.Placement, want)
	}
	if r := programRow(t, snap, 3); r.Unit != "ig.service" {
		t.Errorf("program 3 placement %+v, want /proc's ig.service", r.Placement)
	}
	if r := programRow(t, snap, 1); r.Unit != "ig.service" {
		t.Errorf("program 1 (found by holders) placement %+v, want its owner's", r.Placement)
	}
	if snap.Unowned.Placement != (Placement{}) {
		t.Errorf("unowned row placement %+v, want none", snap.Unowned.Placement)
	}
}

// A labelled program's load event applied during a sweep, after the
// sweep's program read listed it and before its map read (Run applies
// events at the sweep's yields): its .rodata map is not known yet, so
// the labels are read from the kernel, not taken as none.
func TestProgramLabelsEventBeforeMapRead(t *testing.T) {
	k := newLabelKernel()
	daemon(k)
	late := k.progs[3]
	delete(k.progs, 3)
	tr := New(k, Options{Node: "n1", Source: "test"})
	for id := uint32(1); id <= 2; id++ {
		tr.apply(load(id, 10))
	}
	sweep(t, tr)
	k.progs[3] = late
	applied := false
	snap, err := tr.sweep(yielding(func() {
		if !applied {
			applied = true
			tr.apply(load(3, 10))
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	if r := programRow(t, snap, 3); r.GadgetID != "gadget-b" {
		t.Errorf("program 3 in gadget %q, want gadget-b", r.GadgetID)
	}
	if r := programRow(t, sweep(t, tr), 3); r.GadgetID != "gadget-b" {
		t.Errorf("program 3 in gadget %q after the next sweep, want gadget-b", r.GadgetID)
	}
}
