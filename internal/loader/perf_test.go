package loader

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

// srcDeadline bounds every wait for an event; generous, since other tests
// may load programs on this machine at the same time.
const srcDeadline = 30 * time.Second

// srcLoadProgram loads a two-instruction socket filter.
func srcLoadProgram(tb testing.TB) *ebpf.Program {
	tb.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "srctest",
		Type: ebpf.SocketFilter,
		Instructions: asm.Instructions{
			asm.LoadImm(asm.R0, 0, asm.DWord),
			asm.Return(),
		},
		License: "MIT",
	})
	if err != nil {
		tb.Fatalf("loading socket filter: %v", err)
	}
	tb.Cleanup(func() { prog.Close() })
	return prog
}

// srcProgramIDTag returns the kernel's ID and tag of prog.
func srcProgramIDTag(tb testing.TB, prog *ebpf.Program) (uint32, [8]byte) {
	tb.Helper()
	info, err := prog.Info()
	if err != nil {
		tb.Fatalf("reading program info: %v", err)
	}
	id, ok := info.ID()
	if !ok {
		tb.Fatal("program info has no ID")
	}
	var tag [8]byte
	if _, err := hex.Decode(tag[:], []byte(info.Tag)); err != nil {
		tb.Fatalf("decoding tag %q: %v", info.Tag, err)
	}
	return uint32(id), tag
}

// srcPump reads src in a goroutine until Read fails; the cleanup closes src
// and checks that the failure was ErrClosed.
func srcPump(tb testing.TB, src Source) <-chan ProgramEvent {
	tb.Helper()
	events := make(chan ProgramEvent, 1024)
	done := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		for {
			ev, err := src.Read()
			if err != nil {
				readErr <- err
				return
			}
			if ev.Kind == 0 {
				// Every Read without an error is a load, a release or a
				// loss: an empty one costs its caller a wake-up.
				tb.Errorf("%s source: Read returned an event of no kind: %+v", src.Name(), ev)
			}
			select {
			case events <- ev:
			case <-done:
				readErr <- nil
				return
			}
		}
	}()
	tb.Cleanup(func() {
		close(done)
		if err := src.Close(); err != nil {
			tb.Errorf("closing %s source: %v", src.Name(), err)
		}
		select {
		case err := <-readErr:
			if err != nil && !errors.Is(err, ErrClosed) {
				tb.Errorf("%s source: Read failed: %v", src.Name(), err)
			}
		case <-time.After(srcDeadline):
			tb.Errorf("%s source: Read still blocked after Close", src.Name())
		}
	})
	return events
}

// srcWaitFor returns the first event matching match, failing the test at
// the deadline.
func srcWaitFor(tb testing.TB, events <-chan ProgramEvent, what string, match func(ProgramEvent) bool) ProgramEvent {
	tb.Helper()
	timeout := time.After(srcDeadline)
	for {
		select {
		case ev := <-events:
			if match(ev) {
				return ev
			}
		case <-timeout:
			tb.Fatalf("no %s within %v", what, srcDeadline)
		}
	}
}

func srcOpenPerf(tb testing.TB, opts SourceOptions) Source {
	tb.Helper()
	src, err := newPerfSource(opts)
	if err != nil {
		tb.Fatalf("opening perf source: %v", err)
	}
	tb.Cleanup(func() { src.Close() })
	return src
}

// perfOpen opens the perf source with cfg (online CPUs and a scan period of
// an hour unless cfg says otherwise) and closes it when tb ends.
func perfOpen(tb testing.TB, cfg perfConfig) *perfSource {
	tb.Helper()
	if cfg.online == nil {
		cfg.online = onlineCPUs
	}
	if cfg.scanPeriod == 0 {
		cfg.scanPeriod = time.Hour
	}
	src, err := openPerf(cfg)
	if err != nil {
		tb.Fatalf("opening perf source: %v", err)
	}
	tb.Cleanup(func() { src.Close() })
	return src
}

// perfFirstCPU returns the first online CPU.
func perfFirstCPU(tb testing.TB) int {
	tb.Helper()
	cpus, err := onlineCPUs()
	if err != nil {
		tb.Fatal(err)
	}
	return cpus[0]
}

// perfPinCPU runs the calling goroutine on cpu alone until tb ends, so the
// programs it loads write their records to that CPU's ring.
func perfPinCPU(tb testing.TB, cpu int) {
	tb.Helper()
	runtime.LockOSThread()
	var oldMask, oneCPU unix.CPUSet
	if err := unix.SchedGetaffinity(0, &oldMask); err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	oneCPU.Set(cpu)
	if err := unix.SchedSetaffinity(0, &oneCPU); err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("pinning to cpu %d: %v", cpu, err)
	}
	tb.Cleanup(func() {
		if err := unix.SchedSetaffinity(0, &oldMask); err != nil {
			tb.Errorf("restoring CPU affinity: %v", err)
		}
		runtime.UnlockOSThread()
	})
}

func TestPerfSourceLoadRelease(t *testing.T) {
	src := srcOpenPerf(t, SourceOptions{})
	if src.Name() != SourcePerf {
		t.Errorf("Name() = %q, want %q", src.Name(), SourcePerf)
	}
	events := srcPump(t, src)

	before := monotonicNow()
	prog := srcLoadProgram(t)
	after := monotonicNow()
	id, tag := srcProgramIDTag(t, prog)

	load := srcWaitFor(t, events, fmt.Sprintf("load of program %d", id), func(ev ProgramEvent) bool {
		return ev.Kind == EventLoad && ev.ProgramID == id
	})
	if load.Tag != tag {
		t.Errorf("load tag = %x, want %x", load.Tag, tag)
	}
	if load.Name != "srctest" {
		t.Errorf("load name = %q, want %q (from KSYMBOL)", load.Name, "srctest")
	}
	if load.PID != uint32(os.Getpid()) {
		t.Errorf("load PID = %d, want %d", load.PID, os.Getpid())
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", load.TID)); err != nil {
		t.Errorf("load TID %d is not a thread of this process: %v", load.TID, err)
	}
	if load.KernelTime < before || load.KernelTime > after {
		t.Errorf("load time %d outside [%d, %d] (CLOCK_MONOTONIC)", load.KernelTime, before, after)
	}

	if err := prog.Close(); err != nil {
		t.Fatal(err)
	}
	release := srcWaitFor(t, events, fmt.Sprintf("release of program %d", id), func(ev ProgramEvent) bool {
		return ev.Kind == EventRelease && ev.ProgramID == id
	})
	if release.Tag != tag {
		t.Errorf("release tag = %x, want %x", release.Tag, tag)
	}
	if release.Name != "srctest" {
		t.Errorf("release name = %q, want %q (from KSYMBOL)", release.Name, "srctest")
	}
}

// TestPerfSourceBurst proves the default ring holds a burst of 2000 loads
// and releases even when nobody reads during the burst: nothing is lost.
func TestPerfSourceBurst(t *testing.T) {
	const n = 2000
	src := srcOpenPerf(t, SourceOptions{})

	ours := make(map[uint32]bool, n)
	for range n {
		prog := srcLoadProgram(t)
		id, _ := srcProgramIDTag(t, prog)
		if err := prog.Close(); err != nil {
			t.Fatal(err)
		}
		ours[id] = true
	}

	events := srcPump(t, src)
	// Loads and releases are counted apart: records of different CPUs may
	// come out of order.
	loaded := make(map[uint32]bool, n)
	released := make(map[uint32]bool, n)
	timeout := time.After(srcDeadline)
	for len(loaded) < n || len(released) < n {
		select {
		case ev := <-events:
			switch {
			case ev.Kind == EventLost:
				t.Fatalf("lost %d records with the default ring after %d loads and %d releases",
					ev.Lost, len(loaded), len(released))
			case !ours[ev.ProgramID]:
			case ev.Kind == EventLoad:
				loaded[ev.ProgramID] = true
			case ev.Kind == EventRelease:
				released[ev.ProgramID] = true
			}
		case <-timeout:
			t.Fatalf("after %v: %d of %d loads and %d of %d releases seen",
				srcDeadline, len(loaded), n, len(released), n)
		}
	}
}

// TestPerfSourceLossDetected fills a one-page ring on one CPU without
// reading and proves the overflow is reported after the events that were
// read: with the kernel's exact count where it keeps one (Linux 6.0), else
// at once from the ring's fill level and then with the count of
// PERF_RECORD_LOST once another record fits.
func TestPerfSourceLossDetected(t *testing.T) {
	const burst = 200 // 800 records, about 56 KiB: a dozen times the ring

	for _, counter := range []bool{true, false} {
		t.Run(fmt.Sprintf("lost counter %v", counter), func(t *testing.T) {
			perfPinCPU(t, perfFirstCPU(t))
			src := perfOpen(t, perfConfig{pages: 1, lostCounter: counter})
			if counter && src.attr.Read_format&unix.PERF_FORMAT_LOST == 0 {
				t.Skip("perf: no PERF_FORMAT_LOST before Linux 6.0")
			}
			for range burst {
				prog := srcLoadProgram(t)
				if err := prog.Close(); err != nil {
					t.Fatal(err)
				}
			}

			pid := uint32(os.Getpid())
			ours := 0 // our loads and releases read before the loss
			events := srcPump(t, src)
			lost := srcWaitFor(t, events, "loss reported", func(ev ProgramEvent) bool {
				if ev.PID == pid && ev.Kind != EventLost {
					ours++
				}
				return ev.Kind == EventLost
			})
			t.Logf("%d of %d loads and releases read, then a loss of %d records", ours, 2*burst, lost.Lost)
			if ours >= 2*burst {
				t.Fatalf("all %d events read from a one-page ring", ours)
			}
			missing := uint64(2*burst - ours)
			if counter {
				// Each load and release writes a KSYMBOL and a BPF_EVENT;
				// once one is refused, all later ones are. Records of other
				// processes on this CPU may add a few.
				if lost.Lost < 2*missing-1 || lost.Lost > 2*missing+16 {
					t.Errorf("lost %d records, want %d or %d", lost.Lost, 2*missing-1, 2*missing)
				}
				// The PERF_RECORD_LOST the kernel writes now is in that
				// count already: no second loss.
				prog := srcLoadProgram(t)
				id := testgadget.ProgramID(t, prog)
				srcWaitFor(t, events, "the next load", func(ev ProgramEvent) bool {
					if ev.Kind == EventLost {
						t.Errorf("the loss was reported again: %+v", ev)
					}
					return ev.Kind == EventLoad && ev.ProgramID == id
				})
				return
			}
			if lost.Lost != 1 {
				t.Errorf("inferred loss counts %d, want 1", lost.Lost)
			}
			// That read emptied the rings: the next record on the full
			// CPU fits and the kernel puts PERF_RECORD_LOST before it.
			srcLoadProgram(t).Close()
			recorded := srcWaitFor(t, events, "PERF_RECORD_LOST", func(ev ProgramEvent) bool {
				return ev.Kind == EventLost
			})
			if recorded.Lost < 2*missing-1 {
				t.Errorf("PERF_RECORD_LOST counts %d, want at least %d", recorded.Lost, 2*missing-1)
			}
		})
	}
}

func TestPerfSourceCloseUnblocksRead(t *testing.T) {
	src, err := newPerfSource(SourceOptions{})
	if err != nil {
		t.Fatalf("opening perf source: %v", err)
	}
	srcCheckCloseUnblocksRead(t, src)
}

// srcCheckCloseUnblocksRead closes src while a Read is pending and checks
// that Read returns ErrClosed, then and afterwards, and that Close is
// idempotent.
func srcCheckCloseUnblocksRead(t *testing.T, src Source) {
	t.Helper()
	reading := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		close(reading)
		for {
			if _, err := src.Read(); err != nil {
				readErr <- err
				return
			}
		}
	}()
	<-reading
	if err := src.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-readErr:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("pending Read returned %v, want ErrClosed", err)
		}
	case <-time.After(srcDeadline):
		t.Fatal("Close did not unblock Read")
	}
	if _, err := src.Read(); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close returned %v, want ErrClosed", err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestPerfSourceUnprivileged drops CAP_PERFMON and CAP_SYS_ADMIN on one
// thread (credentials are per thread) and checks the refusal names them.
func TestPerfSourceUnprivileged(t *testing.T) {
	raw, err := os.ReadFile("/proc/sys/kernel/perf_event_paranoid")
	if err != nil {
		t.Fatal(err)
	}
	if level, err := strconv.Atoi(strings.TrimSpace(string(raw))); err != nil || level < 1 {
		t.Skipf("perf: perf_event_paranoid %q lets anyone open CPU-wide events", raw)
	}
	result := make(chan error, 1)
	go func() {
		// No UnlockOSThread: the thread with the dropped capabilities
		// exits with this goroutine instead of serving others.
		runtime.LockOSThread()
		if err := testutil.DropCapability(unix.CAP_PERFMON, unix.CAP_SYS_ADMIN); err != nil {
			result <- fmt.Errorf("dropping CAP_PERFMON and CAP_SYS_ADMIN: %w", err)
			return
		}
		src, err := newPerfSource(SourceOptions{})
		if err == nil {
			src.Close()
			result <- errors.New("opened without CAP_PERFMON and CAP_SYS_ADMIN")
			return
		}
		result <- err
	}()
	err = <-result
	t.Logf("refused: %v", err)
	if !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
		t.Fatalf("error %v, want EACCES or EPERM", err)
	}
	if !strings.Contains(err.Error(), "CAP_PERFMON") {
		t.Errorf("error %q does not name the missing capability", err)
	}
}

func TestPerfSourceBadRingSize(t *testing.T) {
	if src, err := newPerfSource(SourceOptions{PerfPagesPerCPU: 3}); err == nil {
		src.Close()
		t.Fatal("3 pages per CPU accepted")
	}
}

// BenchmarkPerfSourceLoadToEvent measures a load and close of a program until
// both records are read back.
func BenchmarkPerfSourceLoadToEvent(b *testing.B) {
	src := srcOpenPerf(b, SourceOptions{})
	events := srcPump(b, src)
	spec := &ebpf.ProgramSpec{
		Type:         ebpf.SocketFilter,
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, 0, asm.DWord), asm.Return()},
		License:      "MIT",
	}
	pid := uint32(os.Getpid())
	for b.Loop() {
		prog, err := ebpf.NewProgram(spec)
		if err != nil {
			b.Fatal(err)
		}
		load := srcWaitFor(b, events, "load", func(ev ProgramEvent) bool {
			return ev.Kind == EventLoad && ev.PID == pid
		})
		prog.Close()
		srcWaitFor(b, events, "release", func(ev ProgramEvent) bool {
			return ev.Kind == EventRelease && ev.ProgramID == load.ProgramID
		})
	}
}
