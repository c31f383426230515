package loader

import (
	"encoding/binary"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

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

// perfTestKsymbol builds the body of a KSYMBOL record for symbol, NUL-padded
// to 8 bytes as the kernel does.
func perfTestKsymbol(ksymType uint16, symbol string, unregister bool) []byte {
	body := binary.NativeEndian.AppendUint64(nil, 0xffffffffc0001000)
	body = binary.NativeEndian.AppendUint32(body, 64)
	body = binary.NativeEndian.AppendUint16(body, ksymType)
	var flags uint16
	if unregister {
		flags = unix.PERF_RECORD_KSYMBOL_FLAGS_UNREGISTER
	}
	body = binary.NativeEndian.AppendUint16(body, flags)
	body = append(body, symbol...)
	return append(body, make([]byte, 8-len(symbol)%8)...)
}

// perfTestRing is a fake ring of size bytes holding stream from start on.
func perfTestRing(size int, start uint64, stream []byte) (*perfRing, *unix.PerfEventMmapPage) {
	meta := new(unix.PerfEventMmapPage)
	ring := &perfRing{meta: meta, data: make([]byte, size)}
	for i, b := range stream {
		ring.data[(start+uint64(i))%uint64(size)] = b
	}
	ring.tail = start
	meta.Data_tail = start
	meta.Data_head = start + uint64(len(stream))
	return ring, meta
}

// TestPerfRingWrapAround feeds a fake ring whose records cross the end of
// the data area: a KSYMBOL, the load it names, and a PERF_RECORD_LOST.
func TestPerfRingWrapAround(t *testing.T) {
	tag := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	ksym := perfTestRecord(unix.PERF_RECORD_KSYMBOL,
		perfTestKsymbol(unix.PERF_RECORD_KSYMBOL_TYPE_BPF, "bpf_prog_0102030405060708_wrapped", false), 10, 11, 5)
	load := perfTestRecord(unix.PERF_RECORD_BPF_EVENT, perfTestBPFEvent(unix.PERF_BPF_EVENT_PROG_LOAD, 42, tag), 10, 11, 6)
	lost := perfTestRecord(unix.PERF_RECORD_LOST, binary.NativeEndian.AppendUint64(make([]byte, 8), 7), 0, 0, 7)
	stream := append(append(append([]byte{}, ksym...), load...), lost...)

	// 4 KiB with 608 bytes of room: the fill level alone is no loss. The
	// load record wraps around the end.
	const size = 4096
	ring, meta := perfTestRing(size, uint64(size*3-len(ksym)-8), stream)
	got, refused := ring.read(nil)
	want := []perfRecord{
		{ev: ProgramEvent{Tag: tag, PID: 10, TID: 11, KernelTime: 5}, ksym: perfKsymbol{tag: tag, name: "wrapped"}},
		{ev: ProgramEvent{Kind: EventLoad, ProgramID: 42, Tag: tag, PID: 10, TID: 11, KernelTime: 6}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || refused != 7 {
		t.Errorf("read = %+v, %d refused; want %+v, 7", got, refused, want)
	}
	if meta.Data_tail != meta.Data_head {
		t.Errorf("data_tail = %d, want %d", meta.Data_tail, meta.Data_head)
	}

	// A header claiming more than head-tail is a lost place: resync.
	meta.Data_head += 8
	binary.NativeEndian.PutUint16(ring.data[ring.tail%size+6:], 64)
	got, refused = ring.read(nil)
	if len(got) != 0 || refused != 1 || meta.Data_tail != meta.Data_head {
		t.Errorf("corrupt ring: read = %+v, %d refused, tail %d head %d", got, refused, meta.Data_tail, meta.Data_head)
	}
}

// TestPerfRingFullReportsLoss: a ring with no more room than the largest
// record plus a PERF_RECORD_LOST may have refused one, and says so at once;
// one with more room refused nothing. Room for a BPF_EVENT but not for a
// KSYMBOL is the gap that used to go unnoticed.
func TestPerfRingFullReportsLoss(t *testing.T) {
	rec := perfTestRecord(unix.PERF_RECORD_BPF_EVENT, perfTestBPFEvent(unix.PERF_BPF_EVENT_PROG_UNLOAD, 9, [8]byte{1}), 1, 1, 3)
	const size = 4096
	for _, tc := range []struct {
		records int // of 48 bytes
		loss    bool
	}{
		{records: 72, loss: false}, // 640 bytes free
		{records: 73, loss: true},  // 592 free
		{records: 84, loss: true},  // 64 free: a BPF_EVENT fits, a KSYMBOL may not
		{records: 85, loss: true},  // 16 free
	} {
		var stream []byte
		for range tc.records {
			stream = append(stream, rec...)
		}
		ring, _ := perfTestRing(size, 0, stream)
		got, refused := ring.read(nil)
		if len(got) != tc.records {
			t.Errorf("%d records: read %d", tc.records, len(got))
		}
		if (refused > 0) != tc.loss || refused > 1 {
			t.Errorf("%d records (%d bytes free): %d refused, want loss %v counted 1",
				tc.records, size-tc.records*len(rec), refused, tc.loss)
		}
	}
}

func TestParseKsymbol(t *testing.T) {
	tag := [8]byte{0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3}
	for _, tc := range []struct {
		ksymType   uint16
		symbol     string
		unregister bool
		want       perfKsymbol
		ok         bool
	}{
		{1, "bpf_prog_deadbeef00010203_gapload_0000001", false, perfKsymbol{tag: tag, name: "gapload_0000001"}, true},
		{1, "bpf_prog_deadbeef00010203_x", true, perfKsymbol{tag: tag, name: "x", unregister: true}, true},
		{1, "bpf_prog_deadbeef00010203", false, perfKsymbol{tag: tag}, true},
		// A BTF function name longer than bpf_prog_info keeps.
		{1, "bpf_prog_deadbeef00010203_handle_sys_enter_execve", false, perfKsymbol{tag: tag, name: "handle_sys_ente"}, true},
		{1, "bpf_trampoline_6442491234", false, perfKsymbol{}, false},
		{1, "bpf_prog_deadbeef0001020x_bad", false, perfKsymbol{}, false},
		{1, "bpf_prog_deadbeef00010203-odd", false, perfKsymbol{}, false},
		{2, "bpf_prog_deadbeef00010203_ool", false, perfKsymbol{}, false}, // not TYPE_BPF
	} {
		got, ok := parseKsymbol(perfTestKsymbol(tc.ksymType, tc.symbol, tc.unregister))
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("parseKsymbol(%q) = %+v, %v; want %+v, %v", tc.symbol, got, ok, tc.want, tc.ok)
		}
	}
	if _, ok := parseKsymbol(make([]byte, 8)); ok {
		t.Error("parsed a truncated KSYMBOL body")
	}
}

// TestPerfSourceNamesAcrossRings: the KSYMBOL and the BPF_EVENT of one load
// on two CPU rings (the thread migrated in between), records of another
// thread in between and a subprogram's KSYMBOL; the merge by time names
// every event, releases too, and a loss comes after the events.
func TestPerfSourceNamesAcrossRings(t *testing.T) {
	tagA, tagB, tagSub := [8]byte{0xa}, [8]byte{0xb}, [8]byte{0xc}
	ksym := func(tid uint32, time uint64, symbol string, unregister bool) []byte {
		return perfTestRecord(unix.PERF_RECORD_KSYMBOL, perfTestKsymbol(1, symbol, unregister), 1, tid, time)
	}
	bpf := func(tid uint32, time uint64, kind uint16, id uint32, tag [8]byte) []byte {
		return perfTestRecord(unix.PERF_RECORD_BPF_EVENT, perfTestBPFEvent(kind, id, tag), 1, tid, time)
	}
	cpu0 := perfConcat(
		ksym(100, 10, "bpf_prog_0a00000000000000_first", false),
		ksym(100, 11, "bpf_prog_0c00000000000000_F", false),
		bpf(200, 12, unix.PERF_BPF_EVENT_PROG_LOAD, 2, tagB),
		ksym(100, 30, "bpf_prog_0a00000000000000_first", true),
		bpf(100, 31, unix.PERF_BPF_EVENT_PROG_UNLOAD, 1, tagA),
	)
	cpu1 := perfConcat(
		ksym(200, 9, "bpf_prog_0b00000000000000_second", false),
		bpf(100, 20, unix.PERF_BPF_EVENT_PROG_LOAD, 1, tagA),
		perfTestRecord(unix.PERF_RECORD_LOST, binary.NativeEndian.AppendUint64(make([]byte, 8), 3), 0, 0, 21),
	)
	ring0, _ := perfTestRing(4096, 0, cpu0)
	ring1, _ := perfTestRing(4096, 0, cpu1)
	s := &perfSource{rings: []*perfRing{ring0, ring1}, names: make(perfNames)}
	s.readRings()

	want := []ProgramEvent{
		{Kind: EventLoad, ProgramID: 2, Tag: tagB, Name: "second", PID: 1, TID: 200, KernelTime: 12},
		{Kind: EventLoad, ProgramID: 1, Tag: tagA, Name: "first", PID: 1, TID: 100, KernelTime: 20},
		{Kind: EventRelease, ProgramID: 1, Tag: tagA, Name: "first", PID: 1, TID: 100, KernelTime: 31},
	}
	if len(s.queue) != len(want)+1 {
		t.Fatalf("queue %+v, want %+v and a loss", s.queue, want)
	}
	for i, ev := range want {
		if s.queue[i] != ev {
			t.Errorf("event %d = %+v, want %+v", i, s.queue[i], ev)
		}
	}
	if last := s.queue[len(want)]; last.Kind != EventLost || last.Lost != 3 {
		t.Errorf("last event %+v, want a loss of 3", last)
	}
	// The subprogram's name waits; nothing else does.
	if len(s.names) != 1 || s.names[perfNameKey{tid: 100, tag: tagSub}].name != "F" {
		t.Errorf("names left waiting: %+v", s.names)
	}
}

func perfConcat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// TestPerfNamesExpire: names wait at most perfNameTTL once many wait.
func TestPerfNamesExpire(t *testing.T) {
	names := make(perfNames)
	for i := range perfNamesKept + 1 {
		names.put(perfRecord{ev: ProgramEvent{TID: uint32(i), KernelTime: 1}, ksym: perfKsymbol{name: "old"}})
	}
	names.put(perfRecord{ev: ProgramEvent{TID: 1_000_000, KernelTime: perfNameTTL}, ksym: perfKsymbol{name: "new"}})
	names.expire(perfNameTTL + 2)
	if len(names) != 1 {
		t.Errorf("%d names left, want the new one", len(names))
	}
	// Few names wait however old they are.
	names.put(perfRecord{ev: ProgramEvent{TID: 1, KernelTime: 1}, ksym: perfKsymbol{name: "old"}})
	names.expire(10 * perfNameTTL)
	if len(names) != 2 {
		t.Errorf("%d names left, want 2", len(names))
	}
}
