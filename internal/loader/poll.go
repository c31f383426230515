package loader

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// defaultPollInterval is the poll source's walk period when none is set.
const defaultPollInterval = time.Second

// programWalker is what the poll source needs from the kernel; *Kernel
// implements it. appendProgramIDs returns the IDs in ascending order.
type programWalker interface {
	appendProgramIDs(dst []uint32) ([]uint32, error)
}

// pollSource diffs successive walks of the program IDs.
type pollSource struct {
	// mu serialises Reads; Close does not take it, it closes done.
	mu     sync.Mutex
	kernel programWalker
	ticker *time.Ticker
	done   chan struct{}
	once   sync.Once
	known  []uint32 // IDs of the last walk, ascending
	spare  []uint32 // storage for the next walk
	queue  []ProgramEvent
	next   int
}

// newPollSource diffs the kernel's program IDs every opts.PollInterval
// (default 1s). It needs only BPF_PROG_GET_NEXT_ID (Linux 4.13,
// CAP_SYS_ADMIN) and works where no other source does, but it misses
// programs that live shorter than the interval. Program IDs are allocated
// cyclically up to 2^31, so an ID coming back between two walks is not a
// practical concern.
func newPollSource(opts SourceOptions) (Source, error) {
	kernel, err := NewKernel("")
	if err != nil {
		return nil, err
	}
	return newPollSourceWith(kernel, opts)
}

func newPollSourceWith(kernel programWalker, opts SourceOptions) (*pollSource, error) {
	interval := opts.PollInterval
	if interval == 0 {
		interval = defaultPollInterval
	}
	if interval < 0 {
		return nil, fmt.Errorf("negative interval %v", interval)
	}

	// The first walk is the baseline: the consumer takes its own snapshot,
	// so nothing is reported for it.
	known, err := kernel.appendProgramIDs(nil)
	if err != nil {
		return nil, fmt.Errorf("walking program IDs: %w", err)
	}
	return &pollSource{
		kernel: kernel,
		ticker: time.NewTicker(interval),
		done:   make(chan struct{}),
		known:  known,
	}, nil
}

// Name returns "poll".
func (s *pollSource) Name() string { return SourcePoll }

// Read blocks until a walk finds a new or vanished program ID.
func (s *pollSource) Read() (ProgramEvent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	for {
		select {
		case <-s.done:
			return ProgramEvent{}, fmt.Errorf("poll source: %w", ErrClosed)
		default:
		}
		if s.next < len(s.queue) {
			ev := s.queue[s.next]
			s.next++
			return ev, nil
		}
		s.queue, s.next = s.queue[:0], 0

		select {
		case <-s.done:
			return ProgramEvent{}, fmt.Errorf("poll source: %w", ErrClosed)
		case <-s.ticker.C:
		}
		if err := s.walk(); err != nil {
			return ProgramEvent{}, err
		}
	}
}

// walk queues a release for every known ID that is gone and a load for
// every ID that is new, and makes the walk the new baseline. Both walks are
// ascending, so one merge pass finds the differences.
func (s *pollSource) walk() error {
	ids, err := s.kernel.appendProgramIDs(s.spare[:0])
	if err != nil {
		return fmt.Errorf("poll source: walking program IDs: %w", err)
	}
	now := monotonicNow()

	old := s.known
	for i, j := 0, 0; i < len(old) || j < len(ids); {
		switch {
		case j == len(ids) || (i < len(old) && old[i] < ids[j]):
			s.queue = append(s.queue, ProgramEvent{Kind: EventRelease, ProgramID: old[i], KernelTime: now})
			i++
		case i == len(old) || ids[j] < old[i]:
			s.queue = append(s.queue, s.loadEvent(ids[j], now))
			j++
		default:
			i++
			j++
		}
	}
	s.known, s.spare = ids, old
	return nil
}

// loadEvent describes a new program by its ID only. The source opens no
// program fd: one opened here, on the reader's goroutine, could be seen by
// the consumer's holder scan and make the tracker look like the owner. The
// consumer reads the program's name, type and tag itself.
func (s *pollSource) loadEvent(id uint32, now uint64) ProgramEvent {
	return ProgramEvent{Kind: EventLoad, ProgramID: id, KernelTime: now}
}

// Close stops the walks and unblocks a pending Read.
func (s *pollSource) Close() error {
	s.once.Do(func() {
		s.ticker.Stop()
		close(s.done)
	})
	return nil
}

// monotonicNow is CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns.
func monotonicNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}
