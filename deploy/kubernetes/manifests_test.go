// Package kubernetes holds the tracker's Kubernetes manifests; its test decodes them strictly with the Kubernetes API types.
package kubernetes

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// unitFile is the systemd unit whose capabilities the DaemonSet must grant:
// its AmbientCapabilities= line is the one list (docs/systemd.md explains
// each entry).
const unitFile = "../systemd/bpfstats-tracker.service"

// kustomization is the part of kustomization.yaml used here.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// manifests are the objects of the kustomization, decoded.
type manifests struct {
	namespace      corev1.Namespace
	serviceAccount corev1.ServiceAccount
	configMap      corev1.ConfigMap
	daemonSet      appsv1.DaemonSet
}

// decodeStrict decodes one YAML document into v as the API server does:
// field names case-sensitive, unknown and duplicate fields refused.
// (encoding/json's DisallowUnknownFields alone would take "hostPid" for
// hostPID.)
func decodeStrict(t *testing.T, file string, data []byte, v any) {
	t.Helper()
	if err := unmarshalStrict(data, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func unmarshalStrict(data []byte, v any) error {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(js, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// load decodes every resource of kustomization.yaml with the type its kind
// names, and checks that the kustomization lists every manifest here.
func load(t *testing.T) *manifests {
	t.Helper()
	var k kustomization
	decodeStrict(t, "kustomization.yaml", read(t, "kustomization.yaml"), &k)
	if k.Kind != "Kustomization" || k.APIVersion != "kustomize.config.k8s.io/v1beta1" {
		t.Fatalf("kustomization.yaml is %s %s", k.APIVersion, k.Kind)
	}
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return f == "kustomization.yaml" })
	if got, want := slices.Sorted(slices.Values(k.Resources)), files; !slices.Equal(got, want) {
		t.Fatalf("kustomization resources %v, want every manifest %v", got, want)
	}
	m := &manifests{}
	seen := map[string]bool{}
	for _, file := range k.Resources {
		data := read(t, file)
		if bytes.Contains(data, []byte("\n---")) {
			t.Fatalf("%s: one object per file", file)
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(data, &meta); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var obj any
		switch meta.APIVersion + " " + meta.Kind {
		case "v1 Namespace":
			obj = &m.namespace
		case "v1 ServiceAccount":
			obj = &m.serviceAccount
		case "v1 ConfigMap":
			obj = &m.configMap
		case "apps/v1 DaemonSet":
			obj = &m.daemonSet
		default:
			t.Fatalf("%s: unexpected %s %s", file, meta.APIVersion, meta.Kind)
		}
		if seen[meta.Kind] {
			t.Fatalf("%s: a second %s", file, meta.Kind)
		}
		seen[meta.Kind] = true
		decodeStrict(t, file, data, obj)
	}
	if len(seen) != 4 {
		t.Fatalf("kinds %v, want Namespace, ServiceAccount, ConfigMap and DaemonSet", seen)
	}
	return m
}

func read(t *testing.T, file string) []byte {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// The strict decoding refuses a misspelt field, a field in the wrong case
// and a duplicate one: the tests above would catch them in the manifests.
func TestStrictDecodingRefusesUnknownFields(t *testing.T) {
	for _, spec := range []string{"hostPid: true", "hostPIDs: true", "hostPID: true\n      hostPID: false"} {
		var ds appsv1.DaemonSet
		err := unmarshalStrict([]byte("apiVersion: apps/v1\nkind: DaemonSet\nspec:\n  template:\n    spec:\n      "+spec+"\n"), &ds)
		if err == nil {
			t.Errorf("%q decoded: %+v", spec, ds.Spec.Template.Spec)
		}
	}
}

func TestObjectsBelongTogether(t *testing.T) {
	m := load(t)
	ns := m.namespace.Name
	for kind, got := range map[string]string{
		"ServiceAccount": m.serviceAccount.Namespace,
		"ConfigMap":      m.configMap.Namespace,
		"DaemonSet":      m.daemonSet.Namespace,
	} {
		if got != ns {
			t.Errorf("%s in namespace %q, want %q", kind, got, ns)
		}
	}
	ds := m.daemonSet
	pod := ds.Spec.Template.Spec
	if pod.ServiceAccountName != m.serviceAccount.Name {
		t.Errorf("pods run as %q, want the ServiceAccount %q", pod.ServiceAccountName, m.serviceAccount.Name)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the API token is mounted: the tracker never talks to the API server")
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Empty() || !sel.Matches(labelSet(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not select the pod labels %v", sel, ds.Spec.Template.Labels)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want the tracker only", len(pod.Containers))
	}
}

type labelSet map[string]string

func (l labelSet) Has(k string) bool   { _, ok := l[k]; return ok }
func (l labelSet) Get(k string) string { return l[k] }
func (l labelSet) Lookup(k string) (string, bool) {
	v, ok := l[k]
	return v, ok
}

// unitCapabilities reads the capabilities the systemd unit grants, without
// the CAP_ prefix (Kubernetes' spelling), checking that the bounding set
// is the same list.
func unitCapabilities(t *testing.T) []corev1.Capability {
	t.Helper()
	lists := map[string][]string{}
	for line := range strings.Lines(string(read(t, unitFile))) {
		key, value, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && (key == "AmbientCapabilities" || key == "CapabilityBoundingSet") {
			lists[key] = strings.Fields(value)
		}
	}
	ambient := lists["AmbientCapabilities"]
	if len(ambient) == 0 || !slices.Equal(ambient, lists["CapabilityBoundingSet"]) {
		t.Fatalf("%s: AmbientCapabilities %v and CapabilityBoundingSet %v differ", unitFile, ambient, lists["CapabilityBoundingSet"])
	}
	var caps []corev1.Capability
	for _, c := range ambient {
		name, ok := strings.CutPrefix(c, "CAP_")
		if !ok {
			t.Fatalf("%s: capability %q", unitFile, c)
		}
		caps = append(caps, corev1.Capability(name))
	}
	slices.Sort(caps)
	return caps
}

// The container gets exactly the unit's capabilities, all others dropped,
// in the host's PID namespace, not privileged; and Kubernetes' own rule
// (CAP_SYS_ADMIN cannot go with allowPrivilegeEscalation: false) holds.
func TestPrivileges(t *testing.T) {
	m := load(t)
	pod := m.daemonSet.Spec.Template.Spec
	if !pod.HostPID {
		t.Error("hostPID is off: /proc would show the pod's processes only")
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged: true")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("drop %v, want ALL", sc.Capabilities.Drop)
	}
	got := slices.Sorted(slices.Values(sc.Capabilities.Add))
	if want := unitCapabilities(t); !slices.Equal(got, want) {
		t.Errorf("capabilities %v, want the unit's %v", got, want)
	}
	if slices.Contains(got, "SYS_ADMIN") && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation: false with SYS_ADMIN: the API server refuses it")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("not root in the container: added capabilities would not be effective")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("the root file system is writable: the tracker writes no file")
	}
}

// hostMount is a host path the tracker reads and where it must appear.
type hostMount struct {
	path     string
	kind     corev1.HostPathType
	readOnly bool
}

// The host paths the tracker and its --check read: BTF (the fentry
// source), bpffs (written: the registry is pinned there), the cgroup
// hierarchy (placements) and the CRI socket that --cri-socket names, each
// at the same path in the container.
func TestMounts(t *testing.T) {
	m := load(t)
	pod := m.daemonSet.Spec.Template.Spec
	c := pod.Containers[0]
	socket := flagValue(t, c.Args, "cri-socket")
	want := []hostMount{
		{"/sys/kernel/btf", corev1.HostPathDirectory, true},
		{"/sys/fs/bpf", corev1.HostPathDirectory, false},
		{"/sys/fs/cgroup", corev1.HostPathDirectory, true},
		{socket, corev1.HostPathSocket, true},
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = vm
		if _, ok := volumes[vm.Name]; !ok {
			t.Errorf("mount %s names no volume %q", vm.MountPath, vm.Name)
		}
	}
	for _, w := range want {
		vm, ok := mounts[w.path]
		if !ok {
			t.Errorf("%s is not mounted", w.path)
			continue
		}
		hp := volumes[vm.Name].HostPath
		switch {
		case hp == nil:
			t.Errorf("%s: volume %q is not a hostPath", w.path, vm.Name)
		case hp.Path != w.path:
			t.Errorf("%s: mounted from the host's %s", w.path, hp.Path)
		case hp.Type == nil || *hp.Type != w.kind:
			t.Errorf("%s: hostPath type %v, want %s", w.path, hp.Type, w.kind)
		}
		if vm.ReadOnly != w.readOnly {
			t.Errorf("%s: readOnly %t, want %t", w.path, vm.ReadOnly, w.readOnly)
		}
	}
	if len(pod.Volumes) != len(want) {
		t.Errorf("%d volumes, want %d: nothing more of the host", len(pod.Volumes), len(want))
	}
}

// flagValue returns the value of --name=value in args.
func flagValue(t *testing.T, args []string, name string) string {
	t.Helper()
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	t.Fatalf("no --%s= in args %v", name, args)
	return ""
}

// The node name comes from the downward API, the NATS URL from the
// ConfigMap; metrics listen on every address of the pod, on the port the
// scrape annotations, the container port and the liveness probe name.
func TestEnvAndMetrics(t *testing.T) {
	m := load(t)
	tmpl := m.daemonSet.Spec.Template
	c := tmpl.Spec.Containers[0]
	var node *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "TRACKER_NODE" {
			node = &c.Env[i]
		}
	}
	if node == nil || node.ValueFrom == nil || node.ValueFrom.FieldRef == nil || node.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("TRACKER_NODE is %+v, want the downward API's spec.nodeName", node)
	}
	fromConfigMap := slices.ContainsFunc(c.EnvFrom, func(e corev1.EnvFromSource) bool {
		return e.ConfigMapRef != nil && e.ConfigMapRef.Name == m.configMap.Name
	})
	if !fromConfigMap {
		t.Errorf("the environment does not come from the ConfigMap %q", m.configMap.Name)
	}
	if m.configMap.Data["TRACKER_NATS_URL"] == "" {
		t.Error("the ConfigMap sets no TRACKER_NATS_URL")
	}

	host, port, err := net.SplitHostPort(flagValue(t, c.Args, "metrics-addr"))
	if err != nil || host != "0.0.0.0" {
		t.Fatalf("--metrics-addr %s:%s (%v), want 0.0.0.0: a pod is scraped on its IP", host, port, err)
	}
	ann := tmpl.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != port || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("scrape annotations %v, want port %s and /metrics", ann, port)
	}
	i := slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool {
		return p.ContainerPort > 0 && port == strconv.Itoa(int(p.ContainerPort))
	})
	if i < 0 {
		t.Fatalf("no container port %s", port)
	}
	probe := c.LivenessProbe
	if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != "/metrics" || probe.HTTPGet.Port.String() != c.Ports[i].Name {
		t.Errorf("liveness probe %+v, want GET /metrics on port %s", probe, c.Ports[i].Name)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want CPU and memory requests and a memory limit", c.Resources)
	}
}

// Every flag the manifests set, as an argument or a TRACKER_ variable, is
// one of the tracker's: a renamed flag fails here, not on a cluster.
func TestFlagsExist(t *testing.T) {
	m := load(t)
	c := m.daemonSet.Spec.Template.Spec.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "run" {
		t.Fatalf("args %v, want the run command first", c.Args)
	}
	var flags []string
	for _, a := range c.Args[1:] {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		flags = append(flags, name)
	}
	env := []string{}
	for _, e := range c.Env {
		env = append(env, e.Name)
	}
	for k := range m.configMap.Data {
		env = append(env, k)
	}
	for _, name := range env {
		rest, ok := strings.CutPrefix(name, "TRACKER_")
		if !ok {
			t.Errorf("variable %s is not a TRACKER_ flag", name)
			continue
		}
		flags = append(flags, strings.ToLower(strings.ReplaceAll(rest, "_", "-")))
	}
	sources, err := filepath.Glob("../../cmd/tracker/*.go")
	if err != nil || len(sources) == 0 {
		t.Fatalf("no tracker sources: %v", err)
	}
	registered := map[string]bool{}
	re := regexp.MustCompile(`fs\.\w+Var\(&[\w.]+,\s*"([a-z0-9-]+)"`)
	for _, file := range sources {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		for _, match := range re.FindAllStringSubmatch(string(read(t, file)), -1) {
			registered[match[1]] = true
		}
	}
	for _, f := range flags {
		if !registered[f] {
			t.Errorf("flag --%s is not one of the tracker's (%d found)", f, len(registered))
		}
	}
}
