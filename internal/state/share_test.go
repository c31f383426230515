package state

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/bpfstats/tracker/internal/cri"
	"github.com/bpfstats/tracker/internal/loader"
)

// A snapshot's program rows are shared with the Tracker and with later
// snapshots: a sweep that changes a program's numbers, maps, links or pod
// name gives it a new row and leaves the one an earlier snapshot holds as
// it was, and a program that did not change keeps the very same row.
func TestSnapshotRowsShared(t *testing.T) {
	const cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	fk := benchFake(200)
	// The programs of the first gadget process run in a pod's container.
	proc := fk.procs[1000]
	proc.Cgroup = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8a2c7f3e_1b4d_4c5e_9f60_0a1b2c3d4e5f.slice/cri-containerd-" + cid + ".scope"
	fk.procs[1000] = proc
	k := &linkKernel{fakeKernel: fk, links: []attachment{{20, "raw_tp:sys_enter"}}}
	pods := &podMap{pods: map[string]cri.Pod{}}
	tr := New(batchLinkKernel{k}, Options{Node: "n1", Source: "test", Pods: pods})
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	sweep(t, tr)
	before := sweep(t, tr)
	frozen, err := json.Marshal(before.Programs)
	if err != nil {
		t.Fatal(err)
	}

	// What changes: 10 runs, 11 uses another map, 12 gets a link and 20
	// loses its own, and the pod of process 1000's programs (10, 15, 20,
	// ...: IDs 10 apart from 10 on, with 5 owners) gets a name.
	ran := fk.progs[10]
	ran.RunTime, ran.RunCount = ran.RunTime+500, ran.RunCount+1
	fk.progs[10] = ran
	remapped := fk.progs[11]
	fk.maps[77777] = loader.MapInfo{ID: 77777, Name: "m", Memlock: 8192}
	remapped.MapIDs = []uint32{77777}
	fk.progs[11] = remapped
	k.links = []attachment{{12, "xdp:lo"}}
	pods.pods[cid] = cri.Pod{Name: "ig-x7k2p", Namespace: "gadget", UID: "8a2c7f3e-1b4d-4c5e-9f60-0a1b2c3d4e5f"}
	after := sweep(t, tr)

	if got, err := json.Marshal(before.Programs); err != nil || string(got) != string(frozen) {
		t.Fatalf("a later sweep wrote into an earlier snapshot's rows (err %v)", err)
	}
	if len(after.Programs) != len(before.Programs) {
		t.Fatalf("%d rows after, %d before", len(after.Programs), len(before.Programs))
	}
	inPod := func(id uint32) bool { return (id-10)%5 == 0 }
	changed := 0
	for i, r := range after.Programs {
		was := before.Programs[i]
		id := r.ProgID
		want := id == 10 || id == 11 || id == 12 || id == 20 || inPod(id)
		if (r != was) != want {
			t.Errorf("program %d: new row %v, want %v", id, r != was, want)
		}
		if r != was {
			changed++
		}
		if inPod(id) && (r.PodName != "ig-x7k2p" || was.PodName != "") {
			t.Errorf("program %d: pod name %q, was %q", id, r.PodName, was.PodName)
		}
	}
	if changed == 0 || changed == len(after.Programs) {
		t.Fatalf("%d of %d rows new: the change is not what the test means", changed, len(after.Programs))
	}
	checks := []struct {
		id   uint32
		ok   func(r *Row) bool
		what string
	}{
		{10, func(r *Row) bool { return r.Runcount == ran.RunCount && r.RuncountDelta == 1 }, "its runs"},
		{11, func(r *Row) bool { return slices.Equal(r.MapIDs, []uint32{77777}) && r.MapMemory == 8192 }, "its map"},
		{12, func(r *Row) bool { return slices.Equal(r.Attach, []string{"xdp:lo"}) }, "its link"},
		{20, func(r *Row) bool { return slices.Equal(r.Attach, []string{NoLink}) }, "no link"},
	}
	for _, c := range checks {
		i := slices.IndexFunc(after.Programs, func(r *Row) bool { return r.ProgID == c.id })
		if i < 0 || !c.ok(after.Programs[i]) {
			t.Errorf("program %d: row does not show %s", c.id, c.what)
		}
	}
	// The versions follow the numbers and the slow fields, not the
	// columns a snapshot fills (Attach, pod name).
	for i, r := range after.Programs {
		newVer := after.RowVersion(i) != before.RowVersion(i)
		if want := r.ProgID == 10 || r.ProgID == 11; newVer != want {
			t.Errorf("program %d: new row version %v, want %v", r.ProgID, newVer, want)
		}
	}
}

// batchLinkKernel is a linkKernel that reads programs in batches.
type batchLinkKernel struct{ *linkKernel }

func (k batchLinkKernel) ReadPrograms(ids []uint32, fn func(uint32, *loader.ProgramInfo, error)) error {
	return batchFakeKernel{k.fakeKernel}.ReadPrograms(ids, fn)
}
