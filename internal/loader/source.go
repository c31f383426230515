package loader

import (
	"errors"
	"fmt"
	"time"
)

// EventKind says what happened to a program.
type EventKind uint8

const (
	// EventLoad: a program was loaded and has its ID.
	EventLoad EventKind = iota + 1
	// EventRelease: the last reference to a program was dropped; its ID is about to be freed.
	EventRelease
	// EventLost: the source may have dropped events (ring full, PERF_RECORD_LOST);
	// the consumer must resync its inventory from the kernel.
	EventLost
)

// String returns "load", "release" or "lost".
func (k EventKind) String() string {
	switch k {
	case EventLoad:
		return "load"
	case EventRelease:
		return "release"
	case EventLost:
		return "lost"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ProgramEvent is one load or release of a BPF program as an event source saw it.
//
// Fields a source cannot know are zero: the perf side-band carries no
// program type, comm or cgroup, and its release PID is whoever dropped the
// last reference, not the owner.
type ProgramEvent struct {
	Kind      EventKind
	ProgramID uint32
	// Type is the BPF_PROG_TYPE_* value, 0 when unknown.
	Type uint32
	// Name is the program name (at most 15 bytes), empty when unknown.
	Name string
	// Tag is the program's tag (hash of its instructions), zero when unknown.
	Tag [8]byte
	// PID and TID are the thread group and thread that caused the event.
	PID, TID uint32
	// Comm is the task's command name, empty when unknown.
	Comm     string
	CgroupID uint64
	// LoaderStartTime is when the thread group of PID started, in
	// nanoseconds since boot (the boot clock, suspend included: what
	// /proc/<pid>/stat's start time counts in ticks). With PID it names one
	// process instance. Set by the fentry source; 0 when unknown.
	LoaderStartTime uint64
	// KernelTime is the kernel's CLOCK_MONOTONIC timestamp of the event in
	// nanoseconds (for poll: when the walk noticed it).
	KernelTime uint64
	// Lost counts dropped records for EventLost, when the source knows it.
	Lost uint64
}

// Source is one way of learning about program loads and releases without
// walking every program ID.
type Source interface {
	// Name is the source's SourceSpec.Name ("fentry", "perf", "poll").
	Name() string
	// Read blocks until the next event. After Close it returns an error
	// wrapping ErrClosed.
	Read() (ProgramEvent, error)
	// Close detaches the source and releases its kernel objects. It is
	// idempotent and unblocks a pending Read.
	Close() error
}

// ErrClosed is returned by Source.Read after Close.
var ErrClosed = errors.New("event source closed")

// Source names accepted by OpenSource: auto, and one per entry of Sources.
const (
	SourceAuto   = "auto"
	SourceFentry = "fentry"
	SourcePerf   = "perf"
	SourcePoll   = "poll"
)

// SourceOptions configures OpenSource.
type SourceOptions struct {
	// PollInterval is how often the poll source walks program IDs.
	PollInterval time.Duration
	// PerfPagesPerCPU is the ring size of the perf source, a power of two
	// (default 512: a burst of 5000 loads fits).
	PerfPagesPerCPU int
	// Logf, when set, receives one line per decision taken while opening
	// (hook chosen, source chosen).
	Logf func(format string, args ...any)
	// Warnf, when set, receives why auto skipped a source; Logf does
	// when it is not set.
	Warnf func(format string, args ...any)
}
