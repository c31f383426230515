// Package cri names the Kubernetes pods of containers by asking the container runtime over its CRI socket.
package cri

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"
)

// The CRI sockets of the common runtimes.
const (
	ContainerdSocket = "/run/containerd/containerd.sock"
	CRIOSocket       = "/var/run/crio/crio.sock"
)

// The labels the kubelet puts on every pod sandbox and container it
// creates: the fallback when a sandbox has no metadata.
const (
	LabelPodName      = "io.kubernetes.pod.name"
	LabelPodNamespace = "io.kubernetes.pod.namespace"
	LabelPodUID       = "io.kubernetes.pod.uid"
)

// ErrNotPod means the runtime knows no pod for a container ID: the
// container is not the runtime's, or not a Kubernetes pod's.
var ErrNotPod = errors.New("no pod for this container")

// Pod names a Kubernetes pod, as the container runtime knows it.
type Pod struct {
	Name, Namespace, UID string
}

// Options configures a Resolver. Zero fields take the defaults.
type Options struct {
	// Timeout bounds one lookup (its two calls); 2s by default.
	Timeout time.Duration
	// CacheSize bounds the containers remembered; 4096 by default. When
	// full, an arbitrary entry is forgotten for each new one.
	CacheSize int
	// Retry is how long a container the runtime did not name (no pod, or
	// the call failed) is remembered before it is asked again; 30s by
	// default. Pods found are kept until evicted: a container ID names
	// one container forever.
	Retry time.Duration
	// Queue bounds the lookups waiting for the runtime; 256 by default.
	// Beyond it Pod asks again on a later call.
	Queue int
	// now is the clock; time.Now when nil. Tests set it.
	now func() time.Time
	// stored is called after each lookup's answer is cached; tests wait
	// on it.
	stored func(containerID string)
}

func (o *Options) setDefaults() {
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 4096
	}
	if o.Retry <= 0 {
		o.Retry = 30 * time.Second
	}
	if o.Queue <= 0 {
		o.Queue = 256
	}
	if o.now == nil {
		o.now = time.Now
	}
}

// Resolver answers which pod runs a container, from a cache that one
// goroutine fills by asking the runtime (ListContainers for the
// container's pod sandbox, then PodSandboxStatus for the sandbox's
// metadata). It is safe for concurrent use.
type Resolver struct {
	rpc  *rpcClient
	opts Options

	ctx    context.Context
	cancel context.CancelFunc
	queue  chan string
	done   chan struct{}
	closed sync.Once

	mu      sync.Mutex
	cache   map[string]entry
	pending map[string]struct{}
	lastErr error
}

// entry is what the runtime answered about one container.
type entry struct {
	pod Pod
	// found is false for a container without a pod (or a failed call),
	// remembered until retry.
	found bool
	retry time.Time
}

// New returns a Resolver talking to the CRI runtime service on the unix
// socket at path. It does not connect: the connection is made by the
// first lookup, and made again after the runtime restarts.
func New(path string, opts Options) (*Resolver, error) {
	if path == "" {
		return nil, errors.New("opening the CRI socket: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("opening the CRI socket %s: %w", path, err)
	}
	opts.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Resolver{
		rpc:     newRPCClient(abs),
		opts:    opts,
		ctx:     ctx,
		cancel:  cancel,
		queue:   make(chan string, opts.Queue),
		done:    make(chan struct{}),
		cache:   make(map[string]entry),
		pending: make(map[string]struct{}),
	}
	go r.work()
	return r, nil
}

// Close stops the lookups and closes the connection. It is idempotent.
func (r *Resolver) Close() error {
	var err error
	r.closed.Do(func() {
		r.cancel()
		<-r.done
		r.rpc.close()
	})
	return err
}

// Pod returns the pod of containerID when the cache has it. It never
// blocks: a container not in the cache (or whose retry time came) is
// queued for the lookup goroutine, and a later call has the answer.
func (r *Resolver) Pod(containerID string) (Pod, bool) {
	if containerID == "" {
		return Pod{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[containerID]
	if ok && (e.found || r.opts.now().Before(e.retry)) {
		return e.pod, e.found
	}
	if _, queued := r.pending[containerID]; queued || r.ctx.Err() != nil {
		return Pod{}, false
	}
	select {
	case r.queue <- containerID:
		r.pending[containerID] = struct{}{}
	default:
		// Full: asked again on a later call.
	}
	return Pod{}, false
}

// Err returns the error of the last lookup that failed otherwise than
// with ErrNotPod, or nil when the last lookup reached the runtime.
func (r *Resolver) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// work answers the queued containers until Close.
func (r *Resolver) work() {
	defer close(r.done)
	for {
		select {
		case <-r.ctx.Done():
			return
		case id := <-r.queue:
			ctx, cancel := context.WithTimeout(r.ctx, r.opts.Timeout)
			pod, err := r.Lookup(ctx, id)
			cancel()
			r.store(id, pod, err)
		}
	}
}

// store caches the answer of a lookup of id.
func (r *Resolver) store(id string, pod Pod, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pending, id)
	if r.ctx.Err() != nil {
		return
	}
	switch {
	case err == nil:
		r.lastErr = nil
	case errors.Is(err, ErrNotPod):
		r.lastErr = nil
	default:
		r.lastErr = err
	}
	if _, ok := r.cache[id]; !ok && len(r.cache) >= r.opts.CacheSize {
		for old := range r.cache {
			delete(r.cache, old)
			break
		}
	}
	r.cache[id] = entry{pod: pod, found: err == nil, retry: r.opts.now().Add(r.opts.Retry)}
	if r.opts.stored != nil {
		r.opts.stored(id)
	}
}

// Lookup asks the runtime which pod runs containerID: the container's pod
// sandbox (or the sandbox of that ID, for a pod's pause container), then
// the sandbox's name, namespace and UID. An error wrapping ErrNotPod means
// the runtime knows no such container or sandbox.
func (r *Resolver) Lookup(ctx context.Context, containerID string) (Pod, error) {
	resp, err := r.rpc.call(ctx, "ListContainers", listContainersRequest(containerID))
	var list []container
	if err == nil {
		list, err = decodeListContainers(resp)
	}
	if err != nil {
		return Pod{}, fmt.Errorf("listing CRI container %s: %w", containerID, err)
	}
	sandboxID := containerID
	var labels map[string]string
	for _, c := range list {
		if c.id == containerID {
			sandboxID, labels = c.podSandboxID, c.labels
			break
		}
	}
	resp, err = r.rpc.call(ctx, "PodSandboxStatus", podSandboxStatusRequest(sandboxID))
	if isNotFound(err) {
		return Pod{}, fmt.Errorf("CRI pod sandbox %s of container %s: %w", sandboxID, containerID, ErrNotPod)
	}
	var sb sandbox
	if err == nil {
		sb, err = decodePodSandboxStatus(resp)
	}
	if err != nil {
		return Pod{}, fmt.Errorf("reading CRI pod sandbox %s of container %s: %w", sandboxID, containerID, err)
	}
	pod := podOf(sb, labels)
	if pod.Name == "" || pod.Namespace == "" {
		return Pod{}, fmt.Errorf("CRI pod sandbox %s of container %s has no pod name: %w", sandboxID, containerID, ErrNotPod)
	}
	return pod, nil
}

// podOf reads the pod of a sandbox from its metadata, else from the
// kubelet's labels on the sandbox, else on the container.
func podOf(s sandbox, containerLabels map[string]string) Pod {
	if s.meta.Name != "" && s.meta.Namespace != "" {
		return s.meta
	}
	for _, labels := range []map[string]string{s.labels, containerLabels} {
		if labels[LabelPodName] != "" && labels[LabelPodNamespace] != "" {
			return Pod{Name: labels[LabelPodName], Namespace: labels[LabelPodNamespace], UID: labels[LabelPodUID]}
		}
	}
	return Pod{}
}

// Version asks the runtime its name and version ("containerd v2.1.4"),
// to check the socket at start.
func (r *Resolver) Version(ctx context.Context) (string, error) {
	resp, err := r.rpc.call(ctx, "Version", nil)
	var name, version string
	if err == nil {
		name, version, err = decodeVersion(resp)
	}
	if err != nil {
		return "", fmt.Errorf("asking the CRI runtime its version: %w", err)
	}
	return name + " " + version, nil
}
