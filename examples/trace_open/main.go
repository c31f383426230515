// Command trace_open is an example gadget that traces openat(2) and openat2(2)
// calls, giving bpfstats tracker something to measure.
//
// It loads bpf/trace_open.bpf.c, attaches it, drains its ring buffer and
// prints counts to stderr until SIGINT or SIGTERM. Run it as root; it needs
// Linux 5.8 (ring buffer). Label it for the tracker with flags, which it
// writes into its programs (bpf_metadata_gadget_* in .rodata), or with the
// environment, which the flags default to:
//
//	trace_open -gadget-name mytraceopen -gadget-image trace_open:latest
//	BPFSTATS_GADGET_NAME=mytraceopen BPFSTATS_GADGET_IMAGE=trace_open:latest trace_open
package main

import (
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/examples/internal/gadget"
)

func main() {
	gadget.Main(gadget.Config[traceopenEvent]{
		Name:                 "trace_open",
		Load:                 loadTraceopen,
		Probe:                "syscalls/sys_enter_openat",
		SetRawTracepointVars: setSyscallNumbers,
		EventsMap:            traceopenMapEvents,
		CountersMap:          traceopenMapCounters,
		Counters:             int(traceopenCounterCOUNTER_MAX),
		FormatEvent:          formatEvent,
		FormatCounts:         formatCounts,
	})
}

// setSyscallNumbers tells the raw_tp programs, which see every syscall,
// which ones to keep.
func setSyscallNumbers(spec *ebpf.CollectionSpec) error {
	if err := spec.Variables[traceopenVarNrOpenat].Set(int64(unix.SYS_OPENAT)); err != nil {
		return fmt.Errorf("setting nr_openat: %w", err)
	}
	if err := spec.Variables[traceopenVarNrOpenat2].Set(int64(unix.SYS_OPENAT2)); err != nil {
		return fmt.Errorf("setting nr_openat2: %w", err)
	}
	return nil
}

func formatEvent(ev *traceopenEvent) string {
	return fmt.Sprintf("%d %s %s flags=%#x ret=%d %dns",
		ev.Pid, gadget.CString(ev.Comm[:]), gadget.CString(ev.Path[:]), ev.Flags, ev.Ret, ev.DurationNs)
}

func formatCounts(sums []uint64) string {
	return fmt.Sprintf("enter=%d exit=%d failed=%d dropped=%d",
		sums[traceopenCounterCOUNTER_ENTER], sums[traceopenCounterCOUNTER_EXIT],
		sums[traceopenCounterCOUNTER_FAILED], sums[traceopenCounterCOUNTER_DROPPED])
}
