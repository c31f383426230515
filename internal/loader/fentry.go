package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"golang.org/x/sys/unix"
)

// fentryHook is one kernel function the fentry source can attach to, and
// the program of bpf/tracker.bpf.c written for it.
type fentryHook struct {
	Function string
	Program  string
}

// fentryLoadHooks lists the load hooks in order of preference. Each must run
// once per loaded program, after the program got its ID.
func fentryLoadHooks() []fentryHook {
	return []fentryHook{
		{"bpf_prog_kallsyms_add", trackerProgLoadKallsymsAdd},
		{"perf_event_bpf_event", trackerProgLoadPerfEvent},
	}
}

// fentryReleaseHooks lists the release hooks in order of preference. Each
// must run once when the last reference is dropped, while the ID is valid.
// On Debian's kernels: 5.10 has no bpf_prog_put_deferred and cannot attach
// to perf_event_bpf_event; 6.1 and 6.12 inline bpf_prog_free_id, which
// attaches there but never fires.
func fentryReleaseHooks() []fentryHook {
	return []fentryHook{
		{"bpf_prog_put_deferred", trackerProgReleasePutDeferred},
		{"perf_event_bpf_event", trackerProgReleasePerfEvent},
		{"bpf_prog_free_id", trackerProgReleaseFreeId},
	}
}

// fentrySelfTestTimeout bounds the wait for the events of the self-test
// program: a hook that attached but did not fire by then is dropped.
const fentrySelfTestTimeout = 2 * time.Second

// fentryLostPollInterval is how often an idle Read checks the lost counter,
// so that a loss is reported even when no record follows it.
const fentryLostPollInterval = time.Second

// fentryRecordSize is sizeof(struct tracker_event) of bpf/tracker.bpf.c;
// decodeFentryRecord reads its fields (keep in sync).
const fentryRecordSize = 96

// fentrySource is the Source fed by fentry programs on the kernel's program
// load and release paths.
type fentrySource struct {
	events *ebpf.Map
	lost   *ebpf.Map
	reader *ringbuf.Reader
	cache  *btf.Cache
	logf   func(format string, args ...any)

	load, release attachedHook

	// pending holds events read before they were asked for: during the
	// self-test, or the record behind an EventLost.
	pending  []ProgramEvent
	record   ringbuf.Record
	seenLost uint64

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	// readMu is held by Read; Close takes it before closing the maps.
	readMu sync.Mutex
}

// attachedHook is a hook program and its link; confirmed once it fired.
type attachedHook struct {
	hook      fentryHook
	prog      *ebpf.Program
	link      link.Link
	confirmed bool
}

func (h *attachedHook) attached() bool { return h.link != nil }

func (h *attachedHook) detach() error {
	var errs []error
	if h.link != nil {
		errs = append(errs, h.link.Close())
	}
	if h.prog != nil {
		errs = append(errs, h.prog.Close())
	}
	*h = attachedHook{}
	return errors.Join(errs...)
}

// newFentrySource attaches the tracker's fentry programs. Requires Linux 5.8
// (ring buffer, fentry needs 5.5) with BTF, and a kernel that lets trampoline
// programs load (lockdown refuses them with EPERM).
func newFentrySource(opts SourceOptions) (Source, error) {
	return openFentry(opts, fentryConfig{Loads: fentryLoadHooks(), Releases: fentryReleaseHooks()})
}

// fentryConfig is what tests can change of the fentry source.
type fentryConfig struct {
	// Loads and Releases are the candidate hooks, in order of preference.
	Loads, Releases []fentryHook
	// RingSize is the ring buffer size in bytes (a power-of-two multiple of
	// the page size); 0 keeps the size of bpf/tracker.bpf.c.
	RingSize uint32
}

// openFentry attaches the first load and the first release hook of the
// candidate lists that are seen firing for a throwaway program.
func openFentry(opts SourceOptions, cfg fentryConfig) (_ *fentrySource, err error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}

	// Before Linux 5.11, BPF memory is charged to RLIMIT_MEMLOCK; a no-op after.
	if err := raiseMemlock(); err != nil {
		return nil, fmt.Errorf("removing memlock rlimit: %w", err)
	}

	spec, err := loadTracker()
	if err != nil {
		return nil, err
	}

	s := &fentrySource{cache: btf.NewCache(), logf: logf}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.openRing(spec, cfg.RingSize); err != nil {
		return nil, err
	}
	if err := s.attachHooks(spec, cfg.Loads, cfg.Releases); err != nil {
		return nil, err
	}
	logf("fentry: load hook %s, release hook %s", s.load.hook.Function, s.release.hook.Function)
	return s, nil
}

// openRing creates the ring buffer (of ringSize bytes, 0 for the size of
// bpf/tracker.bpf.c), the lost counter and the ring's reader.
func (s *fentrySource) openRing(spec *ebpf.CollectionSpec, ringSize uint32) error {
	if ringSize != 0 {
		// spec is this open's own copy; the hook programs load with it too.
		spec.Maps[trackerMapEvents].MaxEntries = ringSize
	}
	var err error
	if s.events, err = ebpf.NewMap(spec.Maps[trackerMapEvents]); err != nil {
		return fmt.Errorf("creating ring buffer: %w", err)
	}
	if s.lost, err = ebpf.NewMap(spec.Maps[trackerMapLost]); err != nil {
		return fmt.Errorf("creating lost counter: %w", err)
	}
	if s.reader, err = ringbuf.NewReader(s.events); err != nil {
		return fmt.Errorf("opening ring buffer reader: %w", err)
	}
	return nil
}

// attachHooks attaches the first load and the first release candidate
// that attach, runs the self-test, and replaces a hook that did not fire
// by the next candidate until both are confirmed or a list runs out.
func (s *fentrySource) attachHooks(spec *ebpf.CollectionSpec, loads, releases []fentryHook) error {
	var loadErrs, releaseErrs []error
	var err error
	for {
		if !s.load.attached() {
			if loads, err = s.attachNext(spec, "load", &s.load, loads, &loadErrs); err != nil {
				return err
			}
			if !s.load.attached() {
				return fmt.Errorf("no load hook works: %w", errors.Join(loadErrs...))
			}
		}
		if !s.release.attached() {
			if releases, err = s.attachNext(spec, "release", &s.release, releases, &releaseErrs); err != nil {
				return err
			}
			if !s.release.attached() {
				return fmt.Errorf("no release hook works: %w", errors.Join(releaseErrs...))
			}
		}
		if s.load.confirmed && s.release.confirmed {
			return nil
		}

		loadSeen, releaseSeen, err := s.selfTest()
		if err != nil {
			return err
		}
		if err := s.confirm(&s.load, "load", loadSeen, &loadErrs); err != nil {
			return err
		}
		if err := s.confirm(&s.release, "release", releaseSeen, &releaseErrs); err != nil {
			return err
		}
	}
}

// confirm marks h confirmed when the self-test saw it fire, and detaches
// it (recording why in errs) when it did not.
func (s *fentrySource) confirm(h *attachedHook, kind string, seen bool, errs *[]error) error {
	if h.confirmed {
		return nil
	}
	if seen {
		h.confirmed = true
		return nil
	}
	fn := h.hook.Function
	s.logf("fentry: %s hook %s attached but did not fire within %v", kind, fn, fentrySelfTestTimeout)
	*errs = append(*errs, fmt.Errorf("%s: attached but did not fire", fn))
	if err := h.detach(); err != nil {
		return fmt.Errorf("detaching %s: %w", fn, err)
	}
	return nil
}

// attachNext loads and attaches the first candidate that works into h and
// returns the candidates after it. A refusal that no other candidate can
// avoid (EPERM: lockdown or missing capability) is returned as an error.
func (s *fentrySource) attachNext(spec *ebpf.CollectionSpec, kind string, h *attachedHook, candidates []fentryHook, errs *[]error) ([]fentryHook, error) {
	for len(candidates) > 0 {
		c := candidates[0]
		candidates = candidates[1:]

		prog, err := s.loadHookProgram(spec, c)
		if errors.Is(err, unix.EPERM) {
			// cilium's hint about RLIMIT_MEMLOCK is wrong here: the memlock
			// limit is gone, and lockdown refuses every trampoline program.
			return nil, fmt.Errorf("loading fentry program %s: %w (kernel lockdown?)", c.Program, unix.EPERM)
		}
		if err != nil {
			s.logf("fentry: %s hook %s unavailable: %v", kind, c.Function, err)
			*errs = append(*errs, fmt.Errorf("%s: %w", c.Function, err))
			continue
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceFEntry})
		if err != nil {
			prog.Close()
			s.logf("fentry: %s hook %s unavailable: attaching: %v", kind, c.Function, err)
			*errs = append(*errs, fmt.Errorf("attaching fentry to %s: %w", c.Function, err))
			continue
		}
		*h = attachedHook{hook: c, prog: prog, link: l}
		return candidates, nil
	}
	return nil, nil
}

// loadHookProgram loads the program of c, attached to c.Function, sharing
// the source's maps.
func (s *fentrySource) loadHookProgram(spec *ebpf.CollectionSpec, c fentryHook) (*ebpf.Program, error) {
	ps, ok := spec.Programs[c.Program]
	if !ok {
		return nil, fmt.Errorf("program %s not in tracker object", c.Program)
	}
	ps = ps.Copy()
	ps.AttachTo = c.Function
	one := &ebpf.CollectionSpec{
		Maps:      spec.Maps,
		Programs:  map[string]*ebpf.ProgramSpec{c.Program: ps},
		Types:     spec.Types,
		ByteOrder: spec.ByteOrder,
	}
	coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{trackerMapEvents: s.events, trackerMapLost: s.lost},
		Cache:           s.cache,
	})
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	return coll.DetachProgram(c.Program), nil
}

// selfTest loads and closes a socket filter and reports whether its load
// and its release event arrived. Other events read meanwhile are kept for
// Read.
func (s *fentrySource) selfTest() (loadSeen, releaseSeen bool, err error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "trk_selftest",
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return false, false, fmt.Errorf("loading self-test program: %w", err)
	}
	id, err := programFDID(prog.FD())
	prog.Close()
	if err != nil {
		return false, false, fmt.Errorf("reading self-test program ID: %w", err)
	}

	deadline := time.Now().Add(fentrySelfTestTimeout)
	for !(loadSeen && releaseSeen) {
		ev, err := s.next(deadline)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return false, false, fmt.Errorf("reading self-test events: %w", err)
		}
		switch {
		case ev.ProgramID == id && ev.Kind == EventLoad:
			loadSeen = true
		case ev.ProgramID == id && ev.Kind == EventRelease:
			releaseSeen = true
		default:
			s.pending = append(s.pending, ev)
		}
	}
	return loadSeen, releaseSeen, nil
}

// programFDID returns the ID of the program behind fd.
func programFDID(fd int) (uint32, error) {
	info := new(sysProgInfo)
	if err := bpfObjInfo(fd, unsafe.Pointer(info), unsafe.Sizeof(*info)); err != nil {
		return 0, err
	}
	return info.ID, nil
}

// Name returns "fentry".
func (s *fentrySource) Name() string { return SourceFentry }

// Read returns the next event. An EventLost comes before the first record
// written after the loss, or within a second when no record follows.
func (s *fentrySource) Read() (ProgramEvent, error) {
	// Close waits for a Read in progress before it closes the maps.
	s.readMu.Lock()
	defer s.readMu.Unlock()
	for {
		if s.closed.Load() {
			return ProgramEvent{}, fmt.Errorf("reading fentry events: %w", ErrClosed)
		}
		if len(s.pending) > 0 {
			ev := s.pending[0]
			s.pending = s.pending[1:]
			return ev, nil
		}
		ev, err := s.next(time.Now().Add(fentryLostPollInterval))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if lost, ok := s.checkLost(); ok && !s.closed.Load() {
				return lost, nil
			}
			continue
		}
		return ev, err
	}
}

// next reads one record, or returns an EventLost and keeps the record for
// later when the lost counter grew before it was written.
func (s *fentrySource) next(deadline time.Time) (ProgramEvent, error) {
	s.reader.SetDeadline(deadline)
	if err := s.reader.ReadInto(&s.record); err != nil {
		if errors.Is(err, os.ErrClosed) || s.closed.Load() {
			return ProgramEvent{}, fmt.Errorf("reading fentry events: %w", ErrClosed)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return ProgramEvent{}, err
		}
		return ProgramEvent{}, fmt.Errorf("reading fentry ring buffer: %w", err)
	}
	ev, lost, err := decodeFentryRecord(s.record.RawSample)
	if err != nil {
		return ProgramEvent{}, err
	}
	if lost > s.seenLost {
		s.pending = append(s.pending, ev)
		n := lost - s.seenLost
		s.seenLost = lost
		return ProgramEvent{Kind: EventLost, Lost: n}, nil
	}
	return ev, nil
}

// checkLost reads the lost counter and returns an EventLost if it grew.
func (s *fentrySource) checkLost() (ProgramEvent, bool) {
	var lost uint64
	if err := s.lost.Lookup(uint32(0), &lost); err != nil || lost <= s.seenLost {
		return ProgramEvent{}, false
	}
	n := lost - s.seenLost
	s.seenLost = lost
	return ProgramEvent{Kind: EventLost, Lost: n}, true
}

// decodeFentryRecord converts a struct tracker_event and returns the lost
// counter it carries.
func decodeFentryRecord(b []byte) (ProgramEvent, uint64, error) {
	if len(b) < fentryRecordSize {
		return ProgramEvent{}, 0, fmt.Errorf("fentry record of %d bytes, want %d", len(b), fentryRecordSize)
	}
	le := binary.LittleEndian
	ev := ProgramEvent{
		KernelTime: le.Uint64(b[0:]),
		CgroupID:   le.Uint64(b[8:]),
		Kind:       EventKind(le.Uint32(b[24:])),
		ProgramID:  le.Uint32(b[28:]),
		Type:       le.Uint32(b[32:]),
		PID:        le.Uint32(b[36:]),
		TID:        le.Uint32(b[40:]),
		Name:       fentryCString(b[48:64]),
		Comm:       fentryCString(b[72:88]),
		// Nanoseconds on the boot clock; /proc counts start times in ticks.
		LoaderStartTime: le.Uint64(b[88:]),
	}
	copy(ev.Tag[:], b[64:72])
	if ev.Kind != EventLoad && ev.Kind != EventRelease {
		return ProgramEvent{}, 0, fmt.Errorf("fentry record of unknown kind %d", ev.Kind)
	}
	return ev, le.Uint64(b[16:]), nil
}

// fentryCString returns b up to its first NUL.
func fentryCString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Close detaches the hooks and frees the ring buffer. It unblocks Read.
func (s *fentrySource) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		var errs []error
		if s.reader != nil {
			errs = append(errs, s.reader.Close())
		}
		// Closing the reader unblocked a pending Read; let it return
		// before the maps it may still use go away.
		s.readMu.Lock()
		defer s.readMu.Unlock()
		errs = append(errs, s.load.detach(), s.release.detach())
		for _, m := range []*ebpf.Map{s.events, s.lost} {
			if m != nil {
				errs = append(errs, m.Close())
			}
		}
		if err := errors.Join(errs...); err != nil {
			s.closeErr = fmt.Errorf("closing fentry source: %w", err)
		}
	})
	return s.closeErr
}
