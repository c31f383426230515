package state

import "github.com/bpfstats/tracker/internal/cri"

// PodResolver is the extension point that names the Kubernetes pod of a
// container: Options.Pods, implemented by internal/cri's Resolver, which
// asks the container runtime over its CRI socket. The pod's name and
// namespace are never guessed from a cgroup path: without a resolver,
// rows carry the pod UID of the path only.
type PodResolver interface {
	// Pod returns the pod running the container of ID containerID (the
	// 64 hex digits of Placement.ContainerID) and whether it is known. It
	// must not block: the tracker calls it for every row of every
	// snapshot, so a resolver that has to ask the runtime starts the
	// question and answers on a later call.
	// When the answer's UID and the cgroup path's pod UID differ, the
	// answer is not used.
	Pod(containerID string) (cri.Pod, bool)
}

// namePods fills PodName and PodNamespace of every gadget placement of
// snap that has a container ID the resolver knows. The program rows were
// named as they were built (see snapshot).
func (t *Tracker) namePods(snap *Snapshot) {
	if t.opts.Pods == nil {
		return
	}
	for i := range snap.Gadgets {
		t.namePod(&snap.Gadgets[i].Placement)
	}
	for id, g := range snap.GadgetInfo {
		if g.ContainerID != "" {
			t.namePod(&g.Placement)
			snap.GadgetInfo[id] = g
		}
	}
}

// namePod fills the pod name and namespace of pl when the resolver knows
// its container.
func (t *Tracker) namePod(pl *Placement) {
	if t.opts.Pods == nil || pl.ContainerID == "" {
		return
	}
	pod, ok := t.opts.Pods.Pod(pl.ContainerID)
	if !ok || pod.Name == "" || pod.Namespace == "" {
		return
	}
	if pod.UID != "" && pl.PodUID != "" && pod.UID != pl.PodUID {
		return
	}
	pl.PodName, pl.PodNamespace = pod.Name, pod.Namespace
}
