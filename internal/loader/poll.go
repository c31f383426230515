package loader

import (
	"fmt"
	"sync"
)

// programWalker is what the poll source needs from the kernel; *Kernel
// implements it.
type programWalker interface {
	appendProgramIDs(dst []uint32) ([]uint32, error)
}

// pollSource is the event source that reports nothing: the tracker's
// sweeps audit the inventory against the kernel's program list, so without
// events it still matches the kernel at the end of every sweep.
type pollSource struct {
	done chan struct{}
	once sync.Once
}

// newPollSource checks that the program IDs can be listed (it needs only
// BPF_PROG_GET_NEXT_ID: Linux 4.13, CAP_SYS_ADMIN) and returns a source
// whose Read blocks until Close. It works where no other source does: the
// inventory is then the sweep's audit alone, so a program is listed (and
// released) at the next sweep after its load (release), and programs that
// live shorter than the interval are never seen. opts is not used.
func newPollSource(opts SourceOptions) (Source, error) {
	kernel, err := NewKernel("")
	if err != nil {
		return nil, err
	}
	return newPollSourceWith(kernel, opts)
}

func newPollSourceWith(kernel programWalker, _ SourceOptions) (*pollSource, error) {
	if _, err := kernel.appendProgramIDs(nil); err != nil {
		return nil, fmt.Errorf("walking program IDs: %w", err)
	}
	return &pollSource{done: make(chan struct{})}, nil
}

// Name returns "poll".
func (s *pollSource) Name() string { return SourcePoll }

// Read blocks until Close: the poll source has no events, the sweep's
// audit finds every load and release.
func (s *pollSource) Read() (ProgramEvent, error) {
	<-s.done
	return ProgramEvent{}, fmt.Errorf("poll source: %w", ErrClosed)
}

// Close unblocks a pending Read. It is idempotent.
func (s *pollSource) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}
