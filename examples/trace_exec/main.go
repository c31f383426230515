// Command trace_exec is an example gadget that traces execve(2) and
// execveat(2) calls, giving bpfstats tracker something to measure.
//
// It loads bpf/trace_exec.bpf.c, attaches it, drains its ring buffer and
// prints counts to stderr until SIGINT or SIGTERM. Run it as root; it needs
// Linux 5.8 (ring buffer). Label it for the tracker with flags, which it
// writes into its programs (bpf_metadata_gadget_* in .rodata), or with the
// environment, which the flags default to:
//
//	trace_exec -gadget-name mytraceexec -gadget-image trace_exec:latest
//	BPFSTATS_GADGET_NAME=mytraceexec BPFSTATS_GADGET_IMAGE=trace_exec:latest trace_exec
package main

import (
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/examples/internal/gadget"
)

func main() {
	gadget.Main(gadget.Config[traceexecEvent]{
		Name:                 "trace_exec",
		Load:                 loadTraceexec,
		Probe:                "syscalls/sys_enter_execve",
		SetRawTracepointVars: setSyscallNumbers,
		EventsMap:            traceexecMapEvents,
		CountersMap:          traceexecMapCounters,
		Counters:             int(traceexecCounterCOUNTER_MAX),
		FormatEvent:          formatEvent,
		FormatCounts:         formatCounts,
	})
}

// setSyscallNumbers tells the raw_tp programs, which see every syscall,
// which ones to keep.
func setSyscallNumbers(spec *ebpf.CollectionSpec) error {
	if err := spec.Variables[traceexecVarNrExecve].Set(int64(unix.SYS_EXECVE)); err != nil {
		return fmt.Errorf("setting nr_execve: %w", err)
	}
	if err := spec.Variables[traceexecVarNrExecveat].Set(int64(unix.SYS_EXECVEAT)); err != nil {
		return fmt.Errorf("setting nr_execveat: %w", err)
	}
	return nil
}

func formatEvent(ev *traceexecEvent) string {
	return fmt.Sprintf("%d (parent %d) %s %s ret=%d exec_seen=%d %dns",
		ev.Pid, ev.Ppid, gadget.CString(ev.Comm[:]), gadget.CString(ev.Path[:]), ev.Ret, ev.ExecSeen, ev.DurationNs)
}

func formatCounts(sums []uint64) string {
	return fmt.Sprintf("enter=%d exec=%d exit=%d failed=%d dropped=%d",
		sums[traceexecCounterCOUNTER_ENTER], sums[traceexecCounterCOUNTER_EXEC], sums[traceexecCounterCOUNTER_EXIT],
		sums[traceexecCounterCOUNTER_FAILED], sums[traceexecCounterCOUNTER_DROPPED])
}
