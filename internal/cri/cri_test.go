package cri

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeRuntime is a CRI runtime service holding a few containers and pod
// sandboxes, counting the calls it answers.
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer

	mu         sync.Mutex
	containers map[string]*runtimeapi.Container
	sandboxes  map[string]*runtimeapi.PodSandboxStatus
	calls      int
	// block makes ListContainers wait for the caller to give up.
	block bool
}

func (f *fakeRuntime) ListContainers(ctx context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f.mu.Lock()
	f.calls++
	block := f.block
	var out []*runtimeapi.Container
	for id, c := range f.containers {
		if id == req.GetFilter().GetId() {
			out = append(out, c)
		}
	}
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &runtimeapi.ListContainersResponse{Containers: out}, nil
}

func (f *fakeRuntime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	s, ok := f.sandboxes[req.GetPodSandboxId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "an error occurred when try to find sandbox %q: not found", req.GetPodSandboxId())
	}
	return &runtimeapi.PodSandboxStatusResponse{Status: s}, nil
}

func (f *fakeRuntime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "fake", RuntimeVersion: "v1.0.0", RuntimeApiVersion: "v1"}, nil
}

func (f *fakeRuntime) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

const (
	containerID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	sandboxID   = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	labelledID  = "1111111111111111111111111111111111111111111111111111111111111111"
	labelledBox = "2222222222222222222222222222222222222222222222222222222222222222"
	strangerID  = "3333333333333333333333333333333333333333333333333333333333333333"
	bareID      = "4444444444444444444444444444444444444444444444444444444444444444"
	bareBox     = "5555555555555555555555555555555555555555555555555555555555555555"
	podUID      = "8a2c7f3e-1b4d-4c5e-9f60-0a1b2c3d4e5f"
)

// newFakeRuntime serves a fakeRuntime on a unix socket in a temporary
// directory: one container in pod gadget/ig-x7k2p, and one whose sandbox
// has no metadata, only the kubelet's labels.
func newFakeRuntime(t *testing.T) (*fakeRuntime, string) {
	t.Helper()
	f := newFakeState()
	sock := filepath.Join(t.TempDir(), "cri.sock")
	serveFake(t, f, sock)
	return f, sock
}

// serveFake serves f on a new unix socket at sock until the returned
// function (also a cleanup of t) stops it.
func serveFake(t *testing.T, f *fakeRuntime, sock string) (stop func()) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(l)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			srv.Stop()
			<-served
		})
	}
	t.Cleanup(stop)
	return stop
}

func newFakeState() *fakeRuntime {
	return &fakeRuntime{
		containers: map[string]*runtimeapi.Container{
			containerID: {Id: containerID, PodSandboxId: sandboxID},
			labelledID:  {Id: labelledID, PodSandboxId: labelledBox},
			// Only the container carries the kubelet's labels.
			bareID: {Id: bareID, PodSandboxId: bareBox, Labels: map[string]string{
				LabelPodName: "db-1", LabelPodNamespace: "store", LabelPodUID: "u-2", "other": "x",
			}},
		},
		sandboxes: map[string]*runtimeapi.PodSandboxStatus{
			sandboxID: {Id: sandboxID, Metadata: &runtimeapi.PodSandboxMetadata{Name: "ig-x7k2p", Namespace: "gadget", Uid: podUID}},
			labelledBox: {Id: labelledBox, Labels: map[string]string{
				LabelPodName: "web-0", LabelPodNamespace: "shop", LabelPodUID: "u-1",
			}},
			bareBox: {Id: bareBox, State: runtimeapi.PodSandboxState_SANDBOX_READY, CreatedAt: 1700000000},
		},
	}
}

func newResolver(t *testing.T, sock string, opts Options) *Resolver {
	t.Helper()
	r, err := New(sock, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

func TestLookup(t *testing.T) {
	_, sock := newFakeRuntime(t)
	r := newResolver(t, sock, Options{})
	ctx := t.Context()
	for _, tc := range []struct {
		name, id string
		want     Pod
	}{
		{"container", containerID, Pod{Name: "ig-x7k2p", Namespace: "gadget", UID: podUID}},
		{"pause container", sandboxID, Pod{Name: "ig-x7k2p", Namespace: "gadget", UID: podUID}},
		{"sandbox labels", labelledID, Pod{Name: "web-0", Namespace: "shop", UID: "u-1"}},
		{"container labels", bareID, Pod{Name: "db-1", Namespace: "store", UID: "u-2"}},
	} {
		got, err := r.Lookup(ctx, tc.id)
		if err != nil || got != tc.want {
			t.Errorf("%s: Lookup = %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
	if _, err := r.Lookup(ctx, strangerID); !errors.Is(err, ErrNotPod) {
		t.Errorf("unknown container: err = %v, want ErrNotPod", err)
	}
	v, err := r.Version(ctx)
	if err != nil || v != "fake v1.0.0" {
		t.Errorf("Version = %q, %v", v, err)
	}
}

// Pod answers from the cache without blocking: the first call queues the
// lookup, later calls have its answer without asking the runtime again;
// a container without a pod is asked again only after Retry.
func TestPodCachesAnswers(t *testing.T) {
	f, sock := newFakeRuntime(t)
	stored := make(chan string, 16)
	now := time.Unix(1_700_000_000, 0)
	var clock sync.Mutex
	r := newResolver(t, sock, Options{
		Retry:  time.Minute,
		stored: func(id string) { stored <- id },
		now: func() time.Time {
			clock.Lock()
			defer clock.Unlock()
			return now
		},
	})
	if _, ok := r.Pod(containerID); ok {
		t.Fatal("Pod answered before any lookup")
	}
	if id := <-stored; id != containerID {
		t.Fatalf("stored %s, want %s", id, containerID)
	}
	pod, ok := r.Pod(containerID)
	if !ok || pod.Name != "ig-x7k2p" || pod.Namespace != "gadget" || pod.UID != podUID {
		t.Fatalf("Pod = %+v, %v", pod, ok)
	}
	calls := f.callCount()
	for range 3 {
		r.Pod(containerID)
	}
	if got := f.callCount(); got != calls {
		t.Fatalf("a cached container made %d more calls", got-calls)
	}

	r.Pod(strangerID)
	<-stored
	calls = f.callCount()
	if _, ok := r.Pod(strangerID); ok {
		t.Fatal("a container without a pod has one")
	}
	if err := r.Err(); err != nil {
		t.Fatalf("Err after a container without a pod = %v, want nil", err)
	}
	if got := f.callCount(); got != calls {
		t.Fatalf("a container without a pod was asked again before Retry (%d calls)", got-calls)
	}
	clock.Lock()
	now = now.Add(time.Minute)
	clock.Unlock()
	r.Pod(strangerID)
	if id := <-stored; id != strangerID {
		t.Fatalf("stored %s, want %s", id, strangerID)
	}
	if f.callCount() == calls {
		t.Fatal("not asked again after Retry")
	}
}

// The cache holds at most CacheSize containers.
func TestPodCacheBounded(t *testing.T) {
	_, sock := newFakeRuntime(t)
	stored := make(chan string, 16)
	r := newResolver(t, sock, Options{CacheSize: 2, stored: func(id string) { stored <- id }})
	for _, id := range []string{containerID, labelledID, strangerID, sandboxID} {
		r.Pod(id)
		<-stored
	}
	r.mu.Lock()
	n := len(r.cache)
	r.mu.Unlock()
	if n != 2 {
		t.Fatalf("cache holds %d containers, want 2", n)
	}
}

// A runtime that does not answer in time fails the lookup with the
// deadline, and Pod still returns at once.
func TestLookupTimeout(t *testing.T) {
	f, sock := newFakeRuntime(t)
	f.block = true
	stored := make(chan string, 1)
	r := newResolver(t, sock, Options{Timeout: 50 * time.Millisecond, stored: func(id string) { stored <- id }})
	if _, ok := r.Pod(containerID); ok {
		t.Fatal("Pod answered from a runtime that does not answer")
	}
	<-stored
	if err := r.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want a deadline", err)
	}
}

// Without a runtime on the socket, lookups fail with the reason and Pod
// answers nothing; Close is idempotent.
func TestNoRuntime(t *testing.T) {
	stored := make(chan string, 1)
	r, err := New(filepath.Join(t.TempDir(), "missing.sock"), Options{stored: func(id string) { stored <- id }})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Pod(containerID); ok {
		t.Fatal("Pod answered without a runtime")
	}
	<-stored
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "listing CRI container") {
		t.Fatalf("Err = %v, want the failed call", err)
	}
	if _, err := r.Lookup(t.Context(), containerID); err == nil || errors.Is(err, ErrNotPod) {
		t.Fatalf("Lookup without a runtime: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, ok := r.Pod(containerID); ok {
		t.Fatal("Pod answered after Close")
	}
	if _, err := New("", Options{}); err == nil {
		t.Fatal("New accepted an empty path")
	}
}

// A runtime that restarts (a new server on the same socket) answers the
// next lookup: the connection to the old one is made again.
func TestRuntimeRestart(t *testing.T) {
	f := newFakeState()
	sock := filepath.Join(t.TempDir(), "cri.sock")
	stop := serveFake(t, f, sock)
	r := newResolver(t, sock, Options{})
	want := Pod{Name: "ig-x7k2p", Namespace: "gadget", UID: podUID}
	if got, err := r.Lookup(t.Context(), containerID); err != nil || got != want {
		t.Fatalf("before the restart: Lookup = %+v, %v", got, err)
	}
	stop()
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if _, err := r.Lookup(t.Context(), containerID); err == nil {
		t.Fatal("Lookup answered with the runtime down")
	}
	serveFake(t, f, sock)
	if got, err := r.Lookup(t.Context(), containerID); err != nil || got != want {
		t.Fatalf("after the restart: Lookup = %+v, %v", got, err)
	}
}
