package loader

import (
	"bytes"
	"strings"
)

// Cgroup is what a cgroup path tells about where a process runs. Every
// field but Path is derived from the path's naming alone (systemd units
// and slices, container runtimes' scopes, the kubelet's pod slices), for
// cgroup v2 and for the v1 name=systemd hierarchy alike.
type Cgroup struct {
	// Path is the cgroup v2 path, "/system.slice/foo.service".
	Path string
	// Unit is the systemd unit the process runs in ("foo.service",
	// "docker-<id>.scope"); inside a user manager, the manager and the
	// innermost user unit: "user@1000.service/app-foo-1.scope".
	Unit string
	// Slice is the slice holding Unit ("system.slice", "user-1000.slice",
	// "kubepods-burstable-pod<uid>.slice"), or the innermost slice of a
	// path without a unit.
	Slice string
	// ContainerID is the innermost container's 64-hex-digit ID.
	ContainerID string
	// ContainerRuntime is "containerd", "cri-o", "docker" or "podman"
	// when the naming tells; "" for a bare cgroupfs ID under kubepods.
	ContainerRuntime string
	// PodUID is the Kubernetes pod UID (with dashes).
	PodUID string
	// PodQoS is the pod's QoS class: "Guaranteed", "Burstable" or
	// "BestEffort".
	PodQoS string
}

// containerScopes are the name prefixes runtimes give container cgroups
// under the systemd cgroup driver ("<prefix><id>.scope") and, for some,
// under cgroupfs ("<prefix><id>").
var containerScopes = []struct{ prefix, runtime string }{
	{"cri-containerd-", "containerd"},
	{"crio-", "cri-o"},
	{"docker-", "docker"},
	{"libpod-", "podman"},
}

// ParseCgroupPath derives the unit, slice, container and pod of a cgroup
// path (see Cgroup). It never fails: what the path does not tell is "".
func ParseCgroupPath(path string) Cgroup {
	cg := Cgroup{Path: path}
	var userManager, inKubepods bool
	var parent string
	for c := range strings.SplitSeq(path, "/") {
		switch {
		case c == "" || c == "." || c == "..":
			// ".." leads a path seen from another cgroup namespace.
			continue
		case strings.HasSuffix(c, ".slice"):
			if cg.Unit == "" {
				cg.Slice = c
			}
			parseKubepodsSlice(c, &cg)
		case isUnit(c):
			switch {
			case cg.Unit == "":
				cg.Unit = c
				userManager = strings.HasPrefix(c, "user@") && strings.HasSuffix(c, ".service")
			case userManager:
				manager, _, _ := strings.Cut(cg.Unit, "/")
				cg.Unit = manager + "/" + c
			}
		}
		parseCgroupfsKubepods(c, parent, &inKubepods, &cg)
		if id, runtime, ok := containerOf(c, parent); ok {
			cg.ContainerID, cg.ContainerRuntime = id, runtime
		}
		parent = c
	}
	return cg
}

// isUnit reports whether a path component names a systemd unit that can
// hold processes (slices only group them).
func isUnit(c string) bool {
	for _, suffix := range []string{".service", ".scope", ".socket", ".mount", ".swap"} {
		if strings.HasSuffix(c, suffix) && len(c) > len(suffix) {
			return true
		}
	}
	return false
}

// parseKubepodsSlice reads a kubelet slice under the systemd cgroup
// driver: "kubepods-burstable.slice", "kubepods-besteffort-pod<uid>.slice"
// or "kubepods-pod<uid>.slice" (Guaranteed), the UID's dashes written as
// underscores; kind and some distributions prefix "kubelet-".
func parseKubepodsSlice(c string, cg *Cgroup) {
	name := strings.TrimSuffix(c, ".slice")
	if !strings.HasPrefix(name, "kubepods") && !strings.Contains(name, "-kubepods") {
		return
	}
	i := strings.LastIndex(name, "-pod")
	if i < 0 {
		return
	}
	uid := strings.ReplaceAll(name[i+len("-pod"):], "_", "-")
	if !isPodUID(uid) {
		return
	}
	cg.PodUID = uid
	cg.PodQoS = qosOf(name[:i])
}

// parseCgroupfsKubepods reads the kubelet's cgroupfs naming:
// /kubepods[/burstable|/besteffort]/pod<uid>/<container id>.
func parseCgroupfsKubepods(c, parent string, inKubepods *bool, cg *Cgroup) {
	switch {
	case c == "kubepods":
		*inKubepods = true
	case !*inKubepods:
	case parent == "kubepods" && (c == "burstable" || c == "besteffort"):
	case strings.HasPrefix(c, "pod") && isPodUID(c[len("pod"):]):
		cg.PodUID = c[len("pod"):]
		cg.PodQoS = qosOf(parent)
	}
}

// qosOf names the QoS class of the kubelet cgroup a pod is under: the
// burstable and besteffort ones, else Guaranteed (pods directly under
// kubepods).
func qosOf(parent string) string {
	switch {
	case strings.HasSuffix(parent, "burstable"):
		return "Burstable"
	case strings.HasSuffix(parent, "besteffort"):
		return "BestEffort"
	}
	return "Guaranteed"
}

// containerOf returns the container ID a path component names: a
// runtime's scope ("cri-containerd-<id>.scope", "crio-<id>.scope",
// "docker-<id>.scope", "libpod-<id>.scope"), or a bare ID under cgroupfs
// ("/docker/<id>", "/kubepods/.../pod<uid>/<id>"). The runtimes' monitor
// scopes ("crio-conmon-<id>.scope") are not containers.
func containerOf(c, parent string) (id, runtime string, ok bool) {
	name := strings.TrimSuffix(c, ".scope")
	for _, s := range containerScopes {
		if rest, found := strings.CutPrefix(name, s.prefix); found && isContainerID(rest) {
			return rest, s.runtime, true
		}
	}
	if !isContainerID(name) || name != c {
		return "", "", false
	}
	if parent == "docker" {
		return name, "docker", true
	}
	return name, "", true
}

// isContainerID reports whether s is 64 lower-case hex digits.
func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := range len(s) {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

// isPodUID reports whether s looks like a pod UID: a UUID
// (8-4-4-4-12 hex digits) or, for static pods, 32 hex digits.
func isPodUID(s string) bool {
	switch len(s) {
	case 32:
		return strings.IndexFunc(s, func(r rune) bool { return r > 0x7f || !isHex(byte(r)) }) < 0
	case 36:
		for i := range len(s) {
			dash := i == 8 || i == 13 || i == 18 || i == 23
			if dash != (s[i] == '-') || (!dash && !isHex(s[i])) {
				return false
			}
		}
		return true
	}
	return false
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')
}

// parseProcCgroup returns the cgroup path of a /proc/<pid>/cgroup file:
// the cgroup v2 line ("0::/path"), or on a host without cgroup v2 the v1
// name=systemd line, whose paths follow the same naming. "" when neither
// is there.
func parseProcCgroup(data []byte) string {
	var v1 string
	for line := range bytes.Lines(data) {
		line = bytes.TrimRight(line, "\n")
		hierarchy, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		controllers, path, ok := bytes.Cut(rest, []byte(":"))
		if !ok {
			continue
		}
		switch {
		case string(hierarchy) == "0" && len(controllers) == 0:
			return string(path)
		case string(controllers) == "name=systemd":
			v1 = string(path)
		}
	}
	return v1
}
