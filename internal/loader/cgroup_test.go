package loader

import "testing"

func TestParseCgroupPath(t *testing.T) {
	const (
		cid    = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
		cid2   = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
		uid    = "8a2c7f3e-1b4d-4c5e-9f60-0a1b2c3d4e5f"
		uidU   = "8a2c7f3e_1b4d_4c5e_9f60_0a1b2c3d4e5f"
		mirror = "0f1e2d3c4b5a69788796a5b4c3d2e1f0" // a static pod's UID
	)
	for _, c := range []struct {
		path string
		want Cgroup
	}{
		{"/", Cgroup{}},
		{"", Cgroup{}},
		{"/init.scope", Cgroup{Unit: "init.scope"}},
		{"/system.slice/foo.service", Cgroup{Unit: "foo.service", Slice: "system.slice"}},
		{"/system.slice/system-getty.slice/getty@tty1.service", Cgroup{Unit: "getty@tty1.service", Slice: "system-getty.slice"}},
		// A service that manages its own subtree (Delegate=yes) stays the unit.
		{"/system.slice/bpfstats-tracker.service/worker", Cgroup{Unit: "bpfstats-tracker.service", Slice: "system.slice"}},
		{"/user.slice/user-1000.slice/session-3.scope", Cgroup{Unit: "session-3.scope", Slice: "user-1000.slice"}},
		{"/user.slice/user-1000.slice/user@1000.service/init.scope", Cgroup{Unit: "user@1000.service/init.scope", Slice: "user-1000.slice"}},
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope",
			Cgroup{Unit: "user@1000.service/app-gnome-firefox-4242.scope", Slice: "user-1000.slice"}},
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/ig.service",
			Cgroup{Unit: "user@1000.service/ig.service", Slice: "user-1000.slice"}},
		{"/user.slice/user-1000.slice/user@1000.service", Cgroup{Unit: "user@1000.service", Slice: "user-1000.slice"}},
		{"/bpfstats-test.slice/bpfstats-test-x.scope", Cgroup{Unit: "bpfstats-test-x.scope", Slice: "bpfstats-test.slice"}},
		{"/machine.slice", Cgroup{Slice: "machine.slice"}},
		// Docker, systemd and cgroupfs drivers, and nested.
		{"/system.slice/docker-" + cid + ".scope", Cgroup{Unit: "docker-" + cid + ".scope", Slice: "system.slice", ContainerID: cid, ContainerRuntime: "docker"}},
		{"/docker/" + cid, Cgroup{ContainerID: cid, ContainerRuntime: "docker"}},
		{"/docker/" + cid + "/docker/" + cid2, Cgroup{ContainerID: cid2, ContainerRuntime: "docker"}},
		{"/system.slice/docker-" + cid + ".scope/system.slice/nginx.service",
			Cgroup{Unit: "docker-" + cid + ".scope", Slice: "system.slice", ContainerID: cid, ContainerRuntime: "docker"}},
		{"/system.slice/docker.service", Cgroup{Unit: "docker.service", Slice: "system.slice"}},
		// Podman.
		{"/machine.slice/libpod-" + cid + ".scope/container", Cgroup{Unit: "libpod-" + cid + ".scope", Slice: "machine.slice", ContainerID: cid, ContainerRuntime: "podman"}},
		{"/machine.slice/libpod-conmon-" + cid + ".scope", Cgroup{Unit: "libpod-conmon-" + cid + ".scope", Slice: "machine.slice"}},
		// Kubernetes, systemd driver (cgroup v2 and v1 name=systemd alike).
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			Cgroup{Unit: "cri-containerd-" + cid + ".scope", Slice: "kubepods-burstable-pod" + uidU + ".slice", ContainerID: cid, ContainerRuntime: "containerd", PodUID: uid, PodQoS: "Burstable"}},
		{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + cid + ".scope",
			Cgroup{Unit: "crio-" + cid + ".scope", Slice: "kubepods-besteffort-pod" + uidU + ".slice", ContainerID: cid, ContainerRuntime: "cri-o", PodUID: uid, PodQoS: "BestEffort"}},
		{"/kubepods.slice/kubepods-pod" + uidU + ".slice/docker-" + cid + ".scope",
			Cgroup{Unit: "docker-" + cid + ".scope", Slice: "kubepods-pod" + uidU + ".slice", ContainerID: cid, ContainerRuntime: "docker", PodUID: uid, PodQoS: "Guaranteed"}},
		// CRI-O's monitor is not the container; the pod still is the pod.
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-conmon-" + cid + ".scope",
			Cgroup{Unit: "crio-conmon-" + cid + ".scope", Slice: "kubepods-burstable-pod" + uidU + ".slice", PodUID: uid, PodQoS: "Burstable"}},
		// The pod's slice itself (the pause process under some runtimes).
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice",
			Cgroup{Slice: "kubepods-burstable-pod" + uidU + ".slice", PodUID: uid, PodQoS: "Burstable"}},
		// kind: the kubelet runs under kubelet.slice.
		{"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			Cgroup{Unit: "cri-containerd-" + cid + ".scope", Slice: "kubelet-kubepods-besteffort-pod" + uidU + ".slice", ContainerID: cid, ContainerRuntime: "containerd", PodUID: uid, PodQoS: "BestEffort"}},
		// Static pod (mirror) UID.
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + mirror + ".slice/cri-containerd-" + cid + ".scope",
			Cgroup{Unit: "cri-containerd-" + cid + ".scope", Slice: "kubepods-burstable-pod" + mirror + ".slice", ContainerID: cid, ContainerRuntime: "containerd", PodUID: mirror, PodQoS: "Burstable"}},
		// Kubernetes, cgroupfs driver (k3s, older kubeadm, cgroup v1).
		{"/kubepods/burstable/pod" + uid + "/" + cid, Cgroup{ContainerID: cid, PodUID: uid, PodQoS: "Burstable"}},
		{"/kubepods/besteffort/pod" + uid + "/" + cid, Cgroup{ContainerID: cid, PodUID: uid, PodQoS: "BestEffort"}},
		{"/kubepods/pod" + uid + "/" + cid, Cgroup{ContainerID: cid, PodUID: uid, PodQoS: "Guaranteed"}},
		{"/kubepods/burstable/pod" + uid + "/crio-" + cid, Cgroup{ContainerID: cid, ContainerRuntime: "cri-o", PodUID: uid, PodQoS: "Burstable"}},
		{"/kubepods/burstable/pod" + uid, Cgroup{PodUID: uid, PodQoS: "Burstable"}},
		{"/kubepods/burstable", Cgroup{}},
		// Seen from a child cgroup namespace (a container without the host's).
		{"/../../kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			Cgroup{Unit: "cri-containerd-" + cid + ".scope", Slice: "kubepods-pod" + uidU + ".slice", ContainerID: cid, ContainerRuntime: "containerd", PodUID: uid, PodQoS: "Guaranteed"}},
		// Look-alikes that are not.
		{"/docker/" + cid[:63], Cgroup{}},
		{"/docker/" + "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF", Cgroup{}},
		{"/system.slice/podcast.service", Cgroup{Unit: "podcast.service", Slice: "system.slice"}},
		{"/pod" + uid + "/x", Cgroup{}},
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnotauid.slice", Cgroup{Slice: "kubepods-burstable-podnotauid.slice"}},
		{"/.scope", Cgroup{}},
	} {
		c.want.Path = c.path
		if got := ParseCgroupPath(c.path); got != c.want {
			t.Errorf("ParseCgroupPath(%q)\n got %+v\nwant %+v", c.path, got, c.want)
		}
	}
}

func TestParseProcCgroup(t *testing.T) {
	for _, c := range []struct{ data, want string }{
		{"0::/system.slice/foo.service\n", "/system.slice/foo.service"},
		// Hybrid: v1 controllers and the unified line.
		{"9:name=systemd:/user.slice/a.scope\n4:memory:/x\n0::/user.slice/a.scope\n", "/user.slice/a.scope"},
		{"0::/\n", "/"},
		// v1 only: the name=systemd hierarchy.
		{"4:memory:/docker/abc\n1:name=systemd:/docker/abc\n", "/docker/abc"},
		{"4:memory:/x\n", ""},
		{"", ""},
		{"0::/no-newline", "/no-newline"},
	} {
		if got := parseProcCgroup([]byte(c.data)); got != c.want {
			t.Errorf("parseProcCgroup(%q) = %q, want %q", c.data, got, c.want)
		}
	}
}
