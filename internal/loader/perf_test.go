package loader

import (
	"encoding/binary"
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
// reading and proves the overflow is reported twice: at once, from the
// ring's fill level, and with the kernel's count (PERF_RECORD_LOST) once
// another record fits.
func TestPerfSourceLossDetected(t *testing.T) {
	const burst = 200 // about 50 KiB of records, a dozen times the ring

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var oldMask, oneCPU unix.CPUSet
	if err := unix.SchedGetaffinity(0, &oldMask); err != nil {
		t.Fatal(err)
	}
	cpus, err := onlineCPUs()
	if err != nil {
		t.Fatal(err)
	}
	oneCPU.Set(cpus[0])
	if err := unix.SchedSetaffinity(0, &oneCPU); err != nil {
		t.Fatalf("pinning to cpu %d: %v", cpus[0], err)
	}
	defer unix.SchedSetaffinity(0, &oldMask)

	src := srcOpenPerf(t, SourceOptions{PerfPagesPerCPU: 1})
	for range burst {
		prog := srcLoadProgram(t)
		if err := prog.Close(); err != nil {
			t.Fatal(err)
		}
	}

	delivered := 0
	events := srcPump(t, src)
	srcWaitFor(t, events, "loss reported from the full ring", func(ev ProgramEvent) bool {
		delivered++
		return ev.Kind == EventLost
	})
	// That read emptied the rings: the next record on the full CPU fits
	// and the kernel puts PERF_RECORD_LOST before it.
	srcLoadProgram(t).Close()
	lost := srcWaitFor(t, events, "PERF_RECORD_LOST", func(ev ProgramEvent) bool {
		delivered++
		return ev.Kind == EventLost && ev.Lost > 0
	})
	t.Logf("%d events delivered, %d records lost", delivered-2, lost.Lost)
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
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			result <- fmt.Errorf("capget: %w", err)
			return
		}
		data[unix.CAP_PERFMON/32].Effective &^= 1 << (unix.CAP_PERFMON % 32)
		data[unix.CAP_SYS_ADMIN/32].Effective &^= 1 << (unix.CAP_SYS_ADMIN % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			result <- fmt.Errorf("capset: %w", err)
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

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"0", []int{0}},
		{"0-3", []int{0, 1, 2, 3}},
		{"0-1,4,6-7", []int{0, 1, 4, 6, 7}},
	} {
		got, err := parseCPUList(tc.in)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("parseCPUList(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "a", "3-1", "1-"} {
		if got, err := parseCPUList(bad); err == nil {
			t.Errorf("parseCPUList(%q) = %v, want an error", bad, got)
		}
	}
}

// perfTestRecord builds a record with the sample_id trailer of this source.
func perfTestRecord(recType uint32, body []byte, pid, tid uint32, time uint64) []byte {
	size := 8 + len(body) + perfSampleIDSize
	rec := make([]byte, 0, size)
	rec = binary.NativeEndian.AppendUint32(rec, recType)
	rec = binary.NativeEndian.AppendUint16(rec, 0)
	rec = binary.NativeEndian.AppendUint16(rec, uint16(size))
	rec = append(rec, body...)
	rec = binary.NativeEndian.AppendUint32(rec, pid)
	rec = binary.NativeEndian.AppendUint32(rec, tid)
	rec = binary.NativeEndian.AppendUint64(rec, time)
	rec = binary.NativeEndian.AppendUint64(rec, 1) // cpu, res
	return rec
}

func perfTestBPFEvent(kind uint16, id uint32, tag [8]byte) []byte {
	body := binary.NativeEndian.AppendUint16(nil, kind)
	body = binary.NativeEndian.AppendUint16(body, 0)
	body = binary.NativeEndian.AppendUint32(body, id)
	return append(body, tag[:]...)
}

// TestPerfRingWrapAround feeds a fake ring whose records cross the end of
// the data area, and a KSYMBOL record that must be skipped.
func TestPerfRingWrapAround(t *testing.T) {
	tag := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	ksym := perfTestRecord(unix.PERF_RECORD_KSYMBOL, make([]byte, 32), 1, 1, 5)
	load := perfTestRecord(unix.PERF_RECORD_BPF_EVENT, perfTestBPFEvent(unix.PERF_BPF_EVENT_PROG_LOAD, 42, tag), 10, 11, 6)
	lost := perfTestRecord(unix.PERF_RECORD_LOST, binary.NativeEndian.AppendUint64(make([]byte, 8), 7), 0, 0, 7)
	stream := append(append(append([]byte{}, ksym...), load...), lost...)

	var meta unix.PerfEventMmapPage
	ring := &perfRing{meta: &meta, data: make([]byte, 256)}
	// Start so that the load record wraps around the end.
	start := uint64(len(ring.data)*3 - len(ksym) - 8)
	for i, b := range stream {
		ring.data[(start+uint64(i))%uint64(len(ring.data))] = b
	}
	ring.tail = start
	meta.Data_tail = start
	meta.Data_head = start + uint64(len(stream))

	got := ring.read(nil)
	want := []ProgramEvent{
		{Kind: EventLoad, ProgramID: 42, Tag: tag, PID: 10, TID: 11, KernelTime: 6},
		{Kind: EventLost, Lost: 7, KernelTime: 7},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("read = %+v, want %+v", got, want)
	}
	if meta.Data_tail != meta.Data_head {
		t.Errorf("data_tail = %d, want %d", meta.Data_tail, meta.Data_head)
	}

	// A header claiming more than head-tail is a lost place: resync.
	meta.Data_head += 8
	binary.NativeEndian.PutUint16(ring.data[ring.tail%256+6:], 64)
	got = ring.read(nil)
	if len(got) != 1 || got[0].Kind != EventLost || meta.Data_tail != meta.Data_head {
		t.Errorf("corrupt ring: read = %+v, tail %d head %d", got, meta.Data_tail, meta.Data_head)
	}
}

// TestPerfRingFullReportsLoss: a ring with less room left than a BPF_EVENT
// record needs may have refused one, and says so at once.
func TestPerfRingFullReportsLoss(t *testing.T) {
	tag := [8]byte{1}
	rec := perfTestRecord(unix.PERF_RECORD_BPF_EVENT, perfTestBPFEvent(unix.PERF_BPF_EVENT_PROG_UNLOAD, 9, tag), 1, 1, 3)
	for _, tc := range []struct {
		records int
		full    bool
	}{{5, true}, {4, false}} {
		var meta unix.PerfEventMmapPage
		ring := &perfRing{meta: &meta, data: make([]byte, 256)} // 5 records of 48 bytes leave 16
		for i := range tc.records {
			copy(ring.data[i*len(rec):], rec)
		}
		meta.Data_head = uint64(tc.records * len(rec))
		got := ring.read(nil)
		if len(got) != tc.records+btoi(tc.full) {
			t.Fatalf("%d records: read %d events %+v", tc.records, len(got), got)
		}
		if last := got[len(got)-1]; (last.Kind == EventLost) != tc.full {
			t.Errorf("%d records: last event %+v, want loss reported = %v", tc.records, last, tc.full)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
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
