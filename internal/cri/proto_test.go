package cri

import (
	"maps"
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The hand-written requests are what the generated types encode, and the
// decoders read messages the generated types encoded with every field
// set, those they skip included (varints, fixed-size numbers, nested
// messages, maps).
func TestProtoMatchesGenerated(t *testing.T) {
	want, err := proto.Marshal(&runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{Id: "c1"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := listContainersRequest("c1"); string(got) != string(want) {
		t.Errorf("ListContainersRequest: %x, generated %x", got, want)
	}
	want, _ = proto.Marshal(&runtimeapi.PodSandboxStatusRequest{PodSandboxId: "s1"})
	if got := podSandboxStatusRequest("s1"); string(got) != string(want) {
		t.Errorf("PodSandboxStatusRequest: %x, generated %x", got, want)
	}

	labels := map[string]string{LabelPodName: "web-0", LabelPodNamespace: "shop", "": "empty key"}
	list, _ := proto.Marshal(&runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{
		{
			Id: "c1", PodSandboxId: "s1", Labels: labels,
			Metadata:    &runtimeapi.ContainerMetadata{Name: "app", Attempt: 3},
			Image:       &runtimeapi.ImageSpec{Image: "nginx", Annotations: map[string]string{"a": "b"}},
			ImageRef:    "sha256:x",
			State:       runtimeapi.ContainerState_CONTAINER_RUNNING,
			CreatedAt:   -1,
			Annotations: map[string]string{"io.kubernetes.container.hash": "1"},
			ImageId:     "id",
		},
		{Id: "c2"},
	}})
	cs, err := decodeListContainers(list)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].id != "c1" || cs[0].podSandboxID != "s1" || !maps.Equal(cs[0].labels, labels) ||
		cs[1].id != "c2" || cs[1].podSandboxID != "" || cs[1].labels != nil {
		t.Errorf("ListContainersResponse decoded as %+v", cs)
	}

	status, _ := proto.Marshal(&runtimeapi.PodSandboxStatusResponse{
		Status: &runtimeapi.PodSandboxStatus{
			Id:       "s1",
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-0", Uid: "u-1", Namespace: "shop", Attempt: 7},
			State:    runtimeapi.PodSandboxState_SANDBOX_NOTREADY,
			Network:  &runtimeapi.PodSandboxNetworkStatus{Ip: "10.0.0.1"},
			Labels:   labels, Annotations: map[string]string{"x": "y"}, RuntimeHandler: "runc", CreatedAt: 1 << 40,
		},
		Info:      map[string]string{"info": "{}"},
		Timestamp: 99,
	})
	sb, err := decodePodSandboxStatus(status)
	if err != nil {
		t.Fatal(err)
	}
	if sb.meta != (Pod{Name: "web-0", Namespace: "shop", UID: "u-1"}) || !maps.Equal(sb.labels, labels) {
		t.Errorf("PodSandboxStatusResponse decoded as %+v", sb)
	}

	version, _ := proto.Marshal(&runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "v2.1.4", RuntimeApiVersion: "v1"})
	if name, v, err := decodeVersion(version); err != nil || name != "containerd" || v != "v2.1.4" {
		t.Errorf("VersionResponse decoded as %q %q, %v", name, v, err)
	}
}

// A hostile or broken runtime's answer is an error, never a panic:
// every truncation of a valid message, and a few malformed ones.
func TestProtoMalformed(t *testing.T) {
	list, _ := proto.Marshal(&runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{
		{Id: "c1", PodSandboxId: "s1", Labels: map[string]string{"k": "v"}, CreatedAt: 5},
	}})
	for i := range len(list) {
		// A cut may fall between two fields and still parse: only a panic
		// or a wrong answer from a whole message would be a bug here.
		if cs, err := decodeListContainers(list[:i]); err == nil && len(cs) == 1 && cs[0].podSandboxID == "s1" && cs[0].labels["k"] == "v" {
			t.Errorf("cut at %d of %d decoded as the whole message", i, len(list))
		}
	}
	for _, msg := range [][]byte{
		{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}, // length beyond the message
		{0x0a},                               // key without a value
		{0x0b, 0x00},                         // wire type 3 (groups): not used by CRI
		{0x09, 0x01, 0x02},                   // fixed64 cut short
		{0x08, 0xff},                         // varint cut short
	} {
		if _, err := decodeListContainers(msg); err == nil {
			t.Errorf("%x: decoded without an error", msg)
		}
	}
}
