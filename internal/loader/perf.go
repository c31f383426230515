package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Attribute flag bits x/sys/unix has no names for (include/uapi/linux/perf_event.h).
const (
	perfBitKsymbol  uint64 = 1 << 29 // PERF_RECORD_KSYMBOL, Linux 5.1
	perfBitBPFEvent uint64 = 1 << 30 // PERF_RECORD_BPF_EVENT, Linux 5.1
)

// perfSampleIDSize is the trailer sample_id_all appends to every side-band
// record with sample_type TID|TIME|CPU: {u32 pid, tid; u64 time; u32 cpu, res}.
const perfSampleIDSize = 24

// perfBPFEventBodySize is the body of PERF_RECORD_BPF_EVENT:
// u16 type, u16 flags, u32 id, u8 tag[8].
const perfBPFEventBodySize = 16

// perfBPFEventRecordSize is the size of a whole PERF_RECORD_BPF_EVENT (and
// of a PERF_RECORD_LOST): the smallest record this source's events write.
const perfBPFEventRecordSize = 8 + perfBPFEventBodySize + perfSampleIDSize

// perfLostBodySize is the body of PERF_RECORD_LOST: u64 id, u64 lost.
const perfLostBodySize = 16

// defaultPerfPagesPerCPU holds a burst of about 16000 records per CPU.
const defaultPerfPagesPerCPU = 512

// perfSource reads PERF_RECORD_BPF_EVENT from one dummy software event per
// online CPU.
type perfSource struct {
	// mu serialises Read (which holds it while blocked in epoll_wait) with
	// the teardown in Close, so rings are never unmapped under a reader.
	mu     sync.Mutex
	closed atomic.Bool
	once   sync.Once
	err    error

	rings   []*perfRing
	epollFD int
	wakeFD  int // eventfd in the epoll set; written by Close to unblock Read
	events  []unix.EpollEvent
	queue   []ProgramEvent
	next    int // index of the next queued event to return
}

// perfRing is the mmap'd ring of one CPU's event.
type perfRing struct {
	fd      int
	cpu     int
	mem     []byte
	meta    *unix.PerfEventMmapPage
	data    []byte
	tail    uint64
	scratch []byte // holds a record that wraps around the end of data
}

// newPerfSource opens the PERF_RECORD_BPF_EVENT side-band. Requires Linux 5.1
// and CAP_PERFMON or CAP_SYS_ADMIN.
//
// Events of different CPUs are merged by kernel time within one read of the
// rings; the release of a program may still come before its load when the two
// happen on different CPUs within microseconds. CPUs brought online after open
// are not watched.
func newPerfSource(opts SourceOptions) (Source, error) {
	pages := opts.PerfPagesPerCPU
	if pages == 0 {
		pages = defaultPerfPagesPerCPU
	}
	if pages < 0 || bits.OnesCount(uint(pages)) != 1 {
		return nil, fmt.Errorf("%d pages per CPU is not a power of two", pages)
	}

	cpus, err := onlineCPUs()
	if err != nil {
		return nil, err
	}

	s := &perfSource{epollFD: -1, wakeFD: -1}
	if err := s.open(cpus, pages); err != nil {
		_ = s.release() // the open error says what went wrong
		return nil, err
	}
	return s, nil
}

func (s *perfSource) open(cpus []int, pages int) error {
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

	attr := unix.PerfEventAttr{
		Type:        unix.PERF_TYPE_SOFTWARE,
		Config:      unix.PERF_COUNT_SW_DUMMY,
		Size:        uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Sample_type: unix.PERF_SAMPLE_TID | unix.PERF_SAMPLE_TIME | unix.PERF_SAMPLE_CPU,
		// A wakeup watermark of one byte wakes the reader on every record:
		// wakeup_events counts samples only, never side-band records.
		Bits: unix.PerfBitSampleIDAll | unix.PerfBitWatermark | unix.PerfBitUseClockID |
			perfBitKsymbol | perfBitBPFEvent,
		Wakeup: 1,
		// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns, so perf times
		// compare with those of the other sources.
		Clockid: unix.CLOCK_MONOTONIC,
	}
	size := (1 + pages) * os.Getpagesize()

	for _, cpu := range cpus {
		fd, err := unix.PerfEventOpen(&attr, -1, cpu, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if err != nil {
			return perfOpenError(cpu, err)
		}
		ring := &perfRing{fd: fd, cpu: cpu}
		s.rings = append(s.rings, ring)

		ring.mem, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("mapping %d pages for cpu %d (perf_event_mlock_kb or RLIMIT_MEMLOCK?): %w",
				pages, cpu, err)
		}
		ring.meta = (*unix.PerfEventMmapPage)(unsafe.Pointer(&ring.mem[0]))
		offset, length := uint64(os.Getpagesize()), uint64(pages*os.Getpagesize())
		if ring.meta.Data_offset != 0 { // Linux 4.1 and later say where the data is
			offset, length = ring.meta.Data_offset, ring.meta.Data_size
		}
		ring.data = ring.mem[offset : offset+length]
		ring.tail = atomic.LoadUint64(&ring.meta.Data_tail)

		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(len(s.rings) - 1)}
		if err := unix.EpollCtl(s.epollFD, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return fmt.Errorf("adding cpu %d to epoll: %w", cpu, err)
		}
	}
	s.events = make([]unix.EpollEvent, len(s.rings)+1)
	return nil
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
		if s.readRings(); len(s.queue) > 0 {
			continue
		}
		// The rings are drained, so any record written from here on wakes us.
		if _, err := unix.EpollWait(s.epollFD, s.events, -1); err != nil && !errors.Is(err, unix.EINTR) {
			return ProgramEvent{}, fmt.Errorf("perf source: waiting for records: %w", err)
		}
	}
}

// readRings moves every available record of every ring into the queue, in
// kernel time order.
func (s *perfSource) readRings() {
	for _, ring := range s.rings {
		s.queue = ring.read(s.queue)
	}
	slices.SortStableFunc(s.queue, func(a, b ProgramEvent) int {
		switch {
		case a.KernelTime < b.KernelTime:
			return -1
		case a.KernelTime > b.KernelTime:
			return 1
		}
		return 0
	})
}

// read appends the events of all records between the ring's tail and head
// to events and hands the space back to the kernel.
//
// The kernel reports refused records with PERF_RECORD_LOST only once a later
// record fits, which after a burst may be never. read therefore also reports
// a loss (with an unknown count) as soon as it sees the ring with less room
// than a PERF_RECORD_BPF_EVENT needs: a refused record leaves the ring that
// full until the reader frees it, since nothing smaller is ever written.
func (r *perfRing) read(events []ProgramEvent) []ProgramEvent {
	size := uint64(len(r.data))
	kernelTail := r.tail // the tail the kernel last saw
	// The load pairs with the kernel's store-release of data_head: record
	// contents written before it are visible after it.
	head := atomic.LoadUint64(&r.meta.Data_head)
	full := head-kernelTail > size-perfBPFEventRecordSize

	for r.tail < head {
		var hdr [8]byte
		r.copyAt(hdr[:], r.tail)
		recType := binary.NativeEndian.Uint32(hdr[0:4])
		recSize := uint64(binary.NativeEndian.Uint16(hdr[6:8]))
		if recSize < uint64(len(hdr)) || recSize > head-r.tail {
			// A record that does not fit between tail and head means we lost
			// our place; skip everything and ask for a resync.
			full = true
			r.tail = head
			break
		}

		var rec []byte
		if start := r.tail % size; start+recSize <= size {
			rec = r.data[start : start+recSize]
		} else {
			r.scratch = slices.Grow(r.scratch[:0], int(recSize))[:recSize]
			r.copyAt(r.scratch, r.tail)
			rec = r.scratch
		}
		if ev, ok := parsePerfRecord(recType, rec); ok {
			events = append(events, ev)
		}
		r.tail += recSize
	}
	// The store-release tells the kernel it may overwrite what we parsed.
	atomic.StoreUint64(&r.meta.Data_tail, r.tail)

	// The ring may have filled up against the old tail while we parsed.
	if head = atomic.LoadUint64(&r.meta.Data_head); head-kernelTail > size-perfBPFEventRecordSize {
		full = true
	}
	if full {
		events = append(events, ProgramEvent{Kind: EventLost})
	}
	return events
}

// copyAt copies len(dst) bytes of the ring starting at the free-running
// offset pos, wrapping around the end of the data area.
func (r *perfRing) copyAt(dst []byte, pos uint64) {
	start := pos % uint64(len(r.data))
	n := copy(dst, r.data[start:])
	copy(dst[n:], r.data)
}

// parsePerfRecord turns one record (header included) into an event. It
// reports false for records that are not about programs.
func parsePerfRecord(recType uint32, rec []byte) (ProgramEvent, bool) {
	const hdrSize = 8
	var ev ProgramEvent
	switch recType {
	case unix.PERF_RECORD_BPF_EVENT:
		if len(rec) < hdrSize+perfBPFEventBodySize+perfSampleIDSize {
			return ev, false
		}
		body := rec[hdrSize:]
		switch binary.NativeEndian.Uint16(body[0:2]) {
		case unix.PERF_BPF_EVENT_PROG_LOAD:
			ev.Kind = EventLoad
		case unix.PERF_BPF_EVENT_PROG_UNLOAD:
			ev.Kind = EventRelease
		default:
			return ev, false
		}
		ev.ProgramID = binary.NativeEndian.Uint32(body[4:8])
		copy(ev.Tag[:], body[8:16])
	case unix.PERF_RECORD_LOST:
		if len(rec) < hdrSize+perfLostBodySize+perfSampleIDSize {
			return ev, false
		}
		ev.Kind = EventLost
		ev.Lost = binary.NativeEndian.Uint64(rec[hdrSize+8 : hdrSize+16])
	default:
		// PERF_RECORD_KSYMBOL and anything else: not about program IDs.
		return ev, false
	}

	// sample_id_all puts the trailer at the end of the record.
	id := rec[len(rec)-perfSampleIDSize:]
	ev.PID = binary.NativeEndian.Uint32(id[0:4])
	ev.TID = binary.NativeEndian.Uint32(id[4:8])
	ev.KernelTime = binary.NativeEndian.Uint64(id[8:16])
	return ev, true
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
		if ring.mem != nil {
			if err := unix.Munmap(ring.mem); err != nil {
				errs = append(errs, fmt.Errorf("perf source: unmapping cpu %d: %w", ring.cpu, err))
			}
			ring.mem, ring.meta, ring.data = nil, nil, nil
		}
		if err := unix.Close(ring.fd); err != nil {
			errs = append(errs, fmt.Errorf("perf source: closing cpu %d: %w", ring.cpu, err))
		}
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

// onlineCPUs parses /sys/devices/system/cpu/online ("0-3,5").
func onlineCPUs() ([]int, error) {
	raw, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return nil, fmt.Errorf("reading online CPUs: %w", err)
	}
	cpus, err := parseCPUList(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("parsing online CPUs %q: %w", raw, err)
	}
	return cpus, nil
}

// parseCPUList parses the kernel's CPU list format ("0-3,5").
func parseCPUList(list string) ([]int, error) {
	var cpus []int
	for part := range strings.SplitSeq(list, ",") {
		first, last, isRange := strings.Cut(part, "-")
		lo, err := strconv.Atoi(first)
		if err != nil {
			return nil, err
		}
		hi := lo
		if isRange {
			if hi, err = strconv.Atoi(last); err != nil {
				return nil, err
			}
		}
		if lo < 0 || hi < lo {
			return nil, fmt.Errorf("bad range %q", part)
		}
		for cpu := lo; cpu <= hi; cpu++ {
			cpus = append(cpus, cpu)
		}
	}
	if len(cpus) == 0 {
		return nil, errors.New("no CPUs")
	}
	return cpus, nil
}
