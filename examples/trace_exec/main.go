// Command trace_exec is an example gadget that traces execve(2) and
// execveat(2) calls, giving bpfstats tracker something to measure.
//
// It loads bpf/trace_exec.bpf.c, attaches it, drains its ring buffer and
// prints counts to stderr until SIGINT or SIGTERM. Run it as root; it needs
// Linux 5.8 (ring buffer). Label it for the tracker with the environment:
//
//	BPFSTATS_GADGET_NAME=mytraceexec BPFSTATS_GADGET_IMAGE=trace_exec:latest trace_exec
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

func main() {
	var opts options
	flag.BoolVar(&opts.quiet, "quiet", false, "print nothing but errors")
	flag.BoolVar(&opts.verbose, "v", false, "print every event")
	flag.DurationVar(&opts.interval, "interval", 5*time.Second, "how often to print the counts")
	flag.StringVar(&opts.attach, "attach", "auto", `"tracepoint", "raw_tp", or "auto": tracepoint if tracefs is mounted`)
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts); err != nil {
		fmt.Fprintf(os.Stderr, "trace_exec: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	quiet, verbose bool
	interval       time.Duration
	attach         string
}

func run(ctx context.Context, opts options) error {
	spec, err := loadTraceexec()
	if err != nil {
		return err
	}
	progType, err := chooseAttach(opts.attach, "syscalls/sys_enter_execve")
	if err != nil {
		return err
	}
	for name, p := range spec.Programs {
		if p.Type != progType {
			delete(spec.Programs, name)
		}
	}
	if progType == ebpf.RawTracepoint {
		if err := spec.Variables[traceexecVarNrExecve].Set(int64(unix.SYS_EXECVE)); err != nil {
			return fmt.Errorf("setting nr_execve: %w", err)
		}
		if err := spec.Variables[traceexecVarNrExecveat].Set(int64(unix.SYS_EXECVEAT)); err != nil {
			return fmt.Errorf("setting nr_execveat: %w", err)
		}
	}

	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return fmt.Errorf("loading trace_exec: %w", err)
	}
	defer coll.Close()

	links, err := attachAll(spec, coll, opts.quiet)
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	if err != nil {
		return err
	}
	if !opts.quiet {
		fmt.Fprintf(os.Stderr, "trace_exec: pid %d, %d programs attached (%s)\n", os.Getpid(), len(links), modeName(progType))
	}

	rd, err := ringbuf.NewReader(coll.Maps[traceexecMapEvents])
	if err != nil {
		return fmt.Errorf("opening ring buffer: %w", err)
	}
	defer rd.Close()

	var events atomic.Uint64
	drained := make(chan error, 1)
	go func() { drained <- drain(rd, &events, opts.verbose) }()

	tick := time.NewTicker(opts.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			rd.Close() // unblocks drain
			return <-drained
		case err := <-drained:
			return err
		case <-tick.C:
			if !opts.quiet {
				printCounts(coll.Maps[traceexecMapCounters], events.Load())
			}
		}
	}
}

// chooseAttach picks the program type to load: tracepoints need the event ID
// from tracefs, raw tracepoints do not.
func chooseAttach(mode, probe string) (ebpf.ProgramType, error) {
	switch mode {
	case "tracepoint":
		return ebpf.TracePoint, nil
	case "raw_tp":
		return ebpf.RawTracepoint, nil
	case "auto":
		for _, root := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
			if _, err := os.ReadFile(root + "/events/" + probe + "/id"); err == nil {
				return ebpf.TracePoint, nil
			}
		}
		return ebpf.RawTracepoint, nil
	}
	return 0, fmt.Errorf("unknown attach mode %q", mode)
}

func modeName(t ebpf.ProgramType) string {
	if t == ebpf.RawTracepoint {
		return "raw_tp"
	}
	return "tracepoint"
}

// attachAll attaches every loaded program where its section says. A missing
// tracepoint (an older kernel) is skipped; any other failure is returned
// with the links made so far.
func attachAll(spec *ebpf.CollectionSpec, coll *ebpf.Collection, quiet bool) ([]link.Link, error) {
	var links []link.Link
	for _, name := range slices.Sorted(maps.Keys(coll.Programs)) {
		prog, ps := coll.Programs[name], spec.Programs[name]
		var l link.Link
		var err error
		switch ps.Type {
		case ebpf.TracePoint:
			group, event, _ := strings.Cut(ps.AttachTo, "/")
			l, err = link.Tracepoint(group, event, prog, nil)
		case ebpf.RawTracepoint:
			l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: ps.AttachTo, Program: prog})
		default:
			err = fmt.Errorf("unexpected program type %s", ps.Type)
		}
		if errors.Is(err, os.ErrNotExist) {
			if !quiet {
				fmt.Fprintf(os.Stderr, "trace_exec: skipping %s: %v\n", name, err)
			}
			continue
		}
		if err != nil {
			return links, fmt.Errorf("attaching %s to %s: %w", name, ps.AttachTo, err)
		}
		links = append(links, l)
	}
	return links, nil
}

// drain reads the ring buffer until it is closed.
func drain(rd *ringbuf.Reader, events *atomic.Uint64, verbose bool) error {
	var rec ringbuf.Record
	var ev traceexecEvent
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			return fmt.Errorf("reading ring buffer: %w", err)
		}
		events.Add(1)
		if !verbose {
			continue
		}
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
			return fmt.Errorf("decoding event: %w", err)
		}
		fmt.Fprintf(os.Stderr, "%d (parent %d) %s %s ret=%d exec_seen=%d %dns\n",
			ev.Pid, ev.Ppid, cString(ev.Comm[:]), cString(ev.Path[:]), ev.Ret, ev.ExecSeen, ev.DurationNs)
	}
}

// printCounts sums the per-CPU counters.
func printCounts(counters *ebpf.Map, events uint64) {
	var sums [traceexecCounterCOUNTER_MAX]uint64
	var perCPU []uint64
	for i := range sums {
		if err := counters.Lookup(uint32(i), &perCPU); err != nil {
			fmt.Fprintf(os.Stderr, "trace_exec: reading counter %d: %v\n", i, err)
			return
		}
		for _, n := range perCPU {
			sums[i] += n
		}
	}
	fmt.Fprintf(os.Stderr, "trace_exec: events=%d enter=%d exec=%d exit=%d failed=%d dropped=%d\n", events,
		sums[traceexecCounterCOUNTER_ENTER], sums[traceexecCounterCOUNTER_EXEC], sums[traceexecCounterCOUNTER_EXIT],
		sums[traceexecCounterCOUNTER_FAILED], sums[traceexecCounterCOUNTER_DROPPED])
}

func cString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}
