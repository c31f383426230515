package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Attribute flag bits x/sys/unix has no names for (include/uapi/linux/perf_event.h).
const (
	perfBitKsymbol  uint64 = 1 << 29 // PERF_RECORD_KSYMBOL, Linux 5.1
	perfBitBPFEvent uint64 = 1 << 30 // PERF_RECORD_BPF_EVENT, Linux 5.1
)

// defaultPerfPagesPerCPU holds a burst of about 14,500 loads per CPU.
const defaultPerfPagesPerCPU = 512

// defaultPerfCPUScan is how often the source looks for CPUs that came
// online and for events the kernel switched off when their CPU went offline.
const defaultPerfCPUScan = time.Second

// perfSource reads PERF_RECORD_BPF_EVENT and PERF_RECORD_KSYMBOL from one
// dummy software event per online CPU.
type perfSource struct {
	// mu serialises Read (which holds it while blocked in epoll_wait) with
	// the teardown in Close, so rings are never unmapped under a reader.
	mu     sync.Mutex
	closed atomic.Bool
	once   sync.Once
	err    error

	cfg     perfConfig
	attr    unix.PerfEventAttr
	rings   []*perfRing
	epollFD int
	wakeFD  int // eventfd in the epoll set; written by Close to unblock Read
	events  []unix.EpollEvent

	records  []perfRecord // read from the rings, not yet queued
	names    perfNames    // KSYMBOL names waiting for their BPF_EVENT
	lost     uint64       // records refused (or possibly missed) since the last EventLost
	nextScan time.Time
	queue    []ProgramEvent
	next     int // index of the next queued event to return
}

// perfConfig is what newPerfSource fixes and tests vary.
type perfConfig struct {
	pages int
	// lostCounter asks the kernel for its count of refused records
	// (PERF_FORMAT_LOST, Linux 6.0); turned off when the kernel refuses it.
	lostCounter bool
	scanPeriod  time.Duration
	online      func() ([]int, error)
}

// newPerfSource opens the PERF_RECORD_BPF_EVENT side-band. Requires Linux 5.1
// and CAP_PERFMON or CAP_SYS_ADMIN.
//
// The KSYMBOL record the kernel writes just before each BPF_EVENT names the
// program, so load and release events carry the name even for programs gone
// before anyone reads them. Events of different CPUs are merged by kernel
// time within one read of the rings; the release of a program may still come
// before its load when the two happen on different CPUs within microseconds.
//
// Whenever the kernel may have refused a record, Read returns an EventLost
// after the events of the same read. Its Lost is the kernel's count of
// refused records where the kernel keeps one (Linux 6.0); before that, the
// counts of PERF_RECORD_LOST plus one for each ring found too full to be
// sure (such a refusal may then be counted twice, once inferred and once
// when PERF_RECORD_LOST reports it). CPUs that come online are watched
// within about a second, each adding one to Lost: loads on them before that
// were not seen.
func newPerfSource(opts SourceOptions) (Source, error) {
	src, err := openPerf(perfConfig{
		pages:       opts.PerfPagesPerCPU,
		lostCounter: true,
		scanPeriod:  defaultPerfCPUScan,
		online:      onlineCPUs,
	})
	if err != nil {
		return nil, err
	}
	return src, nil
}

func openPerf(cfg perfConfig) (*perfSource, error) {
	if cfg.pages == 0 {
		cfg.pages = defaultPerfPagesPerCPU
	}
	if cfg.pages < 0 || bits.OnesCount(uint(cfg.pages)) != 1 {
		return nil, fmt.Errorf("%d pages per CPU is not a power of two", cfg.pages)
	}
	cpus, err := cfg.online()
	if err != nil {
		return nil, err
	}

	s := &perfSource{cfg: cfg, epollFD: -1, wakeFD: -1, names: make(perfNames)}
	s.attr = unix.PerfEventAttr{
		Type:        unix.PERF_TYPE_SOFTWARE,
		Config:      unix.PERF_COUNT_SW_DUMMY,
		Size:        uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Sample_type: unix.PERF_SAMPLE_TID | unix.PERF_SAMPLE_TIME | unix.PERF_SAMPLE_CPU,
		// Enabled time stops when the kernel switches the event off (its
		// CPU went offline): see scanCPUs.
		Read_format: unix.PERF_FORMAT_TOTAL_TIME_ENABLED,
		// A wakeup watermark of one byte wakes the reader on every record:
		// wakeup_events counts samples only, never side-band records.
		Bits: unix.PerfBitSampleIDAll | unix.PerfBitWatermark | unix.PerfBitUseClockID |
			perfBitKsymbol | perfBitBPFEvent,
		Wakeup: 1,
		// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns, so perf times
		// compare with those of the other sources.
		Clockid: unix.CLOCK_MONOTONIC,
	}
	if cfg.lostCounter {
		s.attr.Read_format |= unix.PERF_FORMAT_LOST
	}
	if err := s.open(cpus); err != nil {
		_ = s.release() // the open error says what went wrong
		return nil, err
	}
	s.nextScan = time.Now().Add(cfg.scanPeriod)
	return s, nil
}

func (s *perfSource) open(cpus []int) error {
	var err error
	s.epollFD, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("creating epoll: %w", err)
	}
	s.wakeFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("creating eventfd: %w", err)
	}
	wake := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	if err := unix.EpollCtl(s.epollFD, unix.EPOLL_CTL_ADD, s.wakeFD, &wake); err != nil {
		return fmt.Errorf("adding eventfd to epoll: %w", err)
	}
	for _, cpu := range cpus {
		ring, err := s.openRing(cpu)
		if errors.Is(err, unix.EINVAL) && s.attr.Read_format&unix.PERF_FORMAT_LOST != 0 {
			// Before Linux 6.0: no lost counter, the fill level must do.
			s.attr.Read_format &^= unix.PERF_FORMAT_LOST
			ring, err = s.openRing(cpu)
		}
		if err != nil {
			return err
		}
		s.rings = append(s.rings, ring)
	}
	s.events = make([]unix.EpollEvent, len(s.rings)+1)
	return nil
}

// openRing opens, maps and polls the event of one CPU.
func (s *perfSource) openRing(cpu int) (*perfRing, error) {
	fd, err := unix.PerfEventOpen(&s.attr, -1, cpu, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return nil, perfOpenError(cpu, err)
	}
	ring := &perfRing{fd: fd, cpu: cpu, lostCounter: s.attr.Read_format&unix.PERF_FORMAT_LOST != 0}
	if err := ring.mmap(s.cfg.pages); err != nil {
		return nil, errors.Join(err, ring.close())
	}
	if ring.enabled, ring.lost, err = ring.readCounters(); err != nil {
		return nil, errors.Join(err, ring.close())
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(cpu)}
	if err := unix.EpollCtl(s.epollFD, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return nil, errors.Join(fmt.Errorf("adding cpu %d to epoll: %w", cpu, err), ring.close())
	}
	return ring, nil
}

func perfOpenError(cpu int, err error) error {
	switch {
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("perf_event_open on cpu %d (requires CAP_PERFMON or CAP_SYS_ADMIN): %w", cpu, err)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.E2BIG):
		return fmt.Errorf("perf_event_open on cpu %d (PERF_RECORD_BPF_EVENT requires Linux 5.1): %w", cpu, err)
	}
	return fmt.Errorf("perf_event_open on cpu %d: %w", cpu, err)
}

// Name returns "perf".
func (s *perfSource) Name() string { return SourcePerf }

// Read blocks until the next load, release or loss.
func (s *perfSource) Read() (ProgramEvent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	for {
		if s.closed.Load() {
			return ProgramEvent{}, fmt.Errorf("perf source: %w", ErrClosed)
		}
		if s.next < len(s.queue) {
			ev := s.queue[s.next]
			s.next++
			return ev, nil
		}
		s.queue, s.next = s.queue[:0], 0
		var scanErr error
		if now := time.Now(); !now.Before(s.nextScan) {
			s.nextScan = now.Add(s.cfg.scanPeriod)
			scanErr = s.scanCPUs()
		}
		s.readRings()
		if scanErr != nil {
			// The caller resyncs on the error; what was read stays queued.
			return ProgramEvent{}, scanErr
		}
		if len(s.queue) > 0 {
			continue // the first of them, at the top
		}
		// The rings are drained, so any record written from here on wakes
		// us; the timeout brings the next CPU scan.
		timeout := max(time.Until(s.nextScan).Milliseconds(), 0) + 1
		if _, err := unix.EpollWait(s.epollFD, s.events, int(timeout)); err != nil && !errors.Is(err, unix.EINTR) {
			return ProgramEvent{}, fmt.Errorf("perf source: waiting for records: %w", err)
		}
	}
}

// readRings moves every available record of every ring into the queue, in
// kernel time order, with the KSYMBOL names on their events. A loss found
// in this read (or by a CPU scan) comes last, after the events that were
// read: the consumer's resync then starts from them.
func (s *perfSource) readRings() {
	for _, ring := range s.rings {
		var lost uint64
		s.records, lost = ring.read(s.records)
		s.lost += lost
	}
	slices.SortStableFunc(s.records, func(a, b perfRecord) int {
		switch {
		case a.ev.KernelTime < b.ev.KernelTime:
			return -1
		case a.ev.KernelTime > b.ev.KernelTime:
			return 1
		}
		return 0
	})
	for _, rec := range s.records {
		if rec.ev.Kind == 0 {
			s.names.put(rec)
			continue
		}
		s.queue = append(s.queue, s.names.name(rec.ev))
	}
	if n := len(s.records); n > 0 {
		s.names.expire(s.records[n-1].ev.KernelTime)
	}
	clear(s.records) // drop the name strings
	s.records = s.records[:0]
	if s.lost > 0 {
		s.queue = append(s.queue, ProgramEvent{Kind: EventLost, Lost: s.lost, KernelTime: monotonicNow()})
		s.lost = 0
	}
}

// Close stops the side-band, unblocking a pending Read, and unmaps the rings.
func (s *perfSource) Close() error {
	s.once.Do(func() {
		s.closed.Store(true)
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		if _, err := unix.Write(s.wakeFD, one[:]); err != nil {
			s.err = fmt.Errorf("perf source: waking reader: %w", err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.err = errors.Join(s.err, s.release())
	})
	return s.err
}

// release unmaps and closes everything open so far.
func (s *perfSource) release() error {
	var errs []error
	for _, ring := range s.rings {
		errs = append(errs, ring.close())
	}
	s.rings = nil
	for _, fd := range []*int{&s.epollFD, &s.wakeFD} {
		if *fd >= 0 {
			if err := unix.Close(*fd); err != nil {
				errs = append(errs, fmt.Errorf("perf source: closing fd: %w", err))
			}
			*fd = -1
		}
	}
	return errors.Join(errs...)
}
