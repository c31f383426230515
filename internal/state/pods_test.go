package state

import (
	"testing"

	"github.com/bpfstats/tracker/internal/cri"
)

// podMap is a PodResolver answering from a map and counting calls.
type podMap struct {
	pods  map[string]cri.Pod
	calls int
}

func (m *podMap) Pod(containerID string) (cri.Pod, bool) {
	m.calls++
	p, ok := m.pods[containerID]
	return p, ok
}

// Rows whose container the resolver knows get its pod name and namespace;
// a resolver that does not know it yet leaves them empty until it does,
// and an answer whose pod UID contradicts the cgroup's is not used. Each
// snapshot is recycled, as tracker run does: a kept row is named again.
func TestPodNamesFromResolver(t *testing.T) {
	k := newLabelKernel()
	daemon(k)
	const cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	const uid = "8a2c7f3e-1b4d-4c5e-9f60-0a1b2c3d4e5f"
	proc := k.procs[10]
	proc.Cgroup = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8a2c7f3e_1b4d_4c5e_9f60_0a1b2c3d4e5f.slice/cri-containerd-" + cid + ".scope"
	k.procs[10] = proc
	pods := &podMap{pods: map[string]cri.Pod{}}
	tr := New(k, Options{Node: "n1", Source: "test", Pods: pods})
	tr.apply(load(4, 10))

	snap := sweep(t, tr)
	if r := programRow(t, snap, 4); r.ContainerID != cid || r.PodUID != uid || r.PodName != "" || r.PodNamespace != "" {
		t.Fatalf("unknown container: placement %+v, want the cgroup's and no pod name", r.Placement)
	}
	if pods.calls == 0 {
		t.Fatal("the resolver was never asked")
	}

	pods.pods[cid] = cri.Pod{Name: "ig-x7k2p", Namespace: "gadget", UID: uid}
	tr.Recycle(snap)
	snap = sweep(t, tr)
	r := programRow(t, snap, 4)
	if r.PodName != "ig-x7k2p" || r.PodNamespace != "gadget" {
		t.Fatalf("program row placement %+v, want pod gadget/ig-x7k2p", r.Placement)
	}
	if len(snap.Gadgets) == 0 {
		t.Fatal("no gadget rows")
	}
	for _, g := range snap.Gadgets {
		info := snap.GadgetInfo[g.GadgetID]
		if g.PodName != "ig-x7k2p" || info.PodName != "ig-x7k2p" || info.PodNamespace != "gadget" {
			t.Errorf("gadget %s: row placement %+v, info placement %+v", g.GadgetID, g.Placement, info.Placement)
		}
	}
	if snap.Unowned.PodName != "" {
		t.Errorf("unowned row named pod %q", snap.Unowned.PodName)
	}

	pods.pods[cid] = cri.Pod{Name: "other", Namespace: "gadget", UID: "00000000-0000-0000-0000-000000000000"}
	tr.Recycle(snap)
	snap = sweep(t, tr)
	if r := programRow(t, snap, 4); r.PodName != "" || r.PodNamespace != "" {
		t.Fatalf("an answer with another pod UID was used: %+v", r.Placement)
	}
}

// Without a container ID the resolver is not asked.
func TestPodResolverNotAskedWithoutContainer(t *testing.T) {
	k := newLabelKernel()
	daemon(k)
	pods := &podMap{pods: map[string]cri.Pod{"": {Name: "x", Namespace: "y"}}}
	tr := New(k, Options{Node: "n1", Source: "test", Pods: pods})
	tr.apply(load(4, 10))
	snap := sweep(t, tr)
	if r := programRow(t, snap, 4); r.PodName != "" {
		t.Fatalf("placement %+v named a pod without a container", r.Placement)
	}
	if pods.calls != 0 {
		t.Fatalf("resolver asked %d times for rows without a container", pods.calls)
	}
}
