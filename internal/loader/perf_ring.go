package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// perfSampleIDSize is the trailer sample_id_all appends to every side-band
// record with sample_type TID|TIME|CPU: {u32 pid, tid; u64 time; u32 cpu, res}.
const perfSampleIDSize = 24

// perfBPFEventBodySize is the body of PERF_RECORD_BPF_EVENT:
// u16 type, u16 flags, u32 id, u8 tag[8].
const perfBPFEventBodySize = 16

// perfLostBodySize is the body of PERF_RECORD_LOST: u64 id, u64 lost.
const perfLostBodySize = 16

// perfLostRecordSize is a whole PERF_RECORD_LOST.
const perfLostRecordSize = 8 + perfLostBodySize + perfSampleIDSize

// perfKsymbolHeadSize is the body of PERF_RECORD_KSYMBOL before the name:
// u64 addr, u32 len, u16 ksym_type, u16 flags.
const perfKsymbolHeadSize = 16

// perfKsymbolNameMax is KSYM_NAME_LEN (512 since Linux 6.1, 128 before):
// the longest NUL-padded name of a KSYMBOL record.
const perfKsymbolNameMax = 512

// perfRecordMax is the largest record this source's events receive, a
// KSYMBOL with the longest name. BPF_EVENT and LOST records are 48 bytes.
const perfRecordMax = 8 + perfKsymbolHeadSize + perfKsymbolNameMax + perfSampleIDSize

// perfRefusalRoom is the free space below which the kernel may refuse a
// record: the largest record plus the PERF_RECORD_LOST it puts in front once
// it owes one. The kernel refuses a record when free space minus one byte is
// less than what it writes (ring_buffer_has_space), so a ring that never had
// less than perfRefusalRoom+1 bytes free refused nothing.
const perfRefusalRoom = perfRecordMax + perfLostRecordSize

// perfRing is the mmap'd ring of one CPU's event.
type perfRing struct {
	fd      int
	cpu     int
	mem     []byte
	meta    *unix.PerfEventMmapPage
	data    []byte
	tail    uint64
	scratch []byte // holds a record that wraps around the end of data

	// lostCounter: the event's read_format has PERF_FORMAT_LOST, the
	// kernel's own count of refused records; lost is its last value.
	lostCounter bool
	lost        uint64
	// enabled is the event's enabled time at the last CPU scan.
	enabled uint64
}

// perfRecord is one record read from a ring: an event, or (Kind 0) the
// KSYMBOL of a BPF program.
type perfRecord struct {
	ev   ProgramEvent
	ksym perfKsymbol
}

func (r *perfRing) mmap(pages int) error {
	page := os.Getpagesize()
	var err error
	r.mem, err = unix.Mmap(r.fd, 0, (1+pages)*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mapping %d pages for cpu %d (perf_event_mlock_kb or RLIMIT_MEMLOCK?): %w",
			pages, r.cpu, err)
	}
	r.meta = (*unix.PerfEventMmapPage)(unsafe.Pointer(&r.mem[0]))
	offset, length := uint64(page), uint64(pages*page)
	if r.meta.Data_offset != 0 { // Linux 4.1 and later say where the data is
		offset, length = r.meta.Data_offset, r.meta.Data_size
	}
	r.data = r.mem[offset : offset+length]
	r.tail = atomic.LoadUint64(&r.meta.Data_tail)
	return nil
}

// close unmaps the ring and closes its event, which also takes it out of
// the epoll set.
func (r *perfRing) close() error {
	var errs []error
	if r.mem != nil {
		if err := unix.Munmap(r.mem); err != nil {
			errs = append(errs, fmt.Errorf("perf source: unmapping cpu %d: %w", r.cpu, err))
		}
		r.mem, r.meta, r.data = nil, nil, nil
	}
	if r.fd >= 0 {
		if err := unix.Close(r.fd); err != nil {
			errs = append(errs, fmt.Errorf("perf source: closing cpu %d: %w", r.cpu, err))
		}
		r.fd = -1
	}
	return errors.Join(errs...)
}

// readCounters reads the event's enabled time and, with lostCounter, the
// kernel's count of refused records (read_format order: value,
// time_enabled, lost).
func (r *perfRing) readCounters() (enabled, lost uint64, err error) {
	var buf [3]uint64
	want := 2
	if r.lostCounter {
		want = 3
	}
	n, err := unix.Read(r.fd, unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), want*8))
	if err != nil {
		return 0, 0, fmt.Errorf("perf source: reading counters of cpu %d: %w", r.cpu, err)
	}
	if n != want*8 {
		return 0, 0, fmt.Errorf("perf source: reading counters of cpu %d: %d bytes, want %d", r.cpu, n, want*8)
	}
	return buf[1], buf[2], nil
}

// read appends the records between the ring's tail and head to recs and
// hands the space back to the kernel. It returns how many records the
// kernel refused since the last read: the kernel's count (lost counter,
// Linux 6.0), or else the counts of PERF_RECORD_LOST plus one when the ring
// was full enough to have refused one; at least one when it skipped
// records it could not parse.
//
// The kernel writes PERF_RECORD_LOST only in front of a later record that
// fits with it, which after a burst may be never; the lost counter is read
// only when the ring was that full or a PERF_RECORD_LOST arrived.
func (r *perfRing) read(recs []perfRecord) ([]perfRecord, uint64) {
	size := uint64(len(r.data))
	kernelTail := r.tail // the tail the kernel last saw
	// The load pairs with the kernel's store-release of data_head: record
	// contents written before it are visible after it.
	head := atomic.LoadUint64(&r.meta.Data_head)
	suspect := perfMayHaveRefused(head-kernelTail, size)
	var recorded uint64 // counts of PERF_RECORD_LOST
	skipped := false

	for r.tail < head {
		var hdr [8]byte
		r.copyAt(hdr[:], r.tail)
		recType := binary.NativeEndian.Uint32(hdr[0:4])
		recSize := uint64(binary.NativeEndian.Uint16(hdr[6:8]))
		if recSize < uint64(len(hdr)) || recSize > head-r.tail {
			// A record that does not fit between tail and head means we lost
			// our place; skip everything and ask for a resync.
			skipped = true
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
		if parsed, ok := parsePerfRecord(recType, rec); ok {
			if parsed.ev.Kind == EventLost {
				recorded += max(parsed.ev.Lost, 1)
			} else {
				recs = append(recs, parsed)
			}
		}
		r.tail += recSize
	}
	// The store-release tells the kernel it may overwrite what we parsed.
	atomic.StoreUint64(&r.meta.Data_tail, r.tail)

	// The ring may have filled up against the old tail while we parsed.
	if head = atomic.LoadUint64(&r.meta.Data_head); perfMayHaveRefused(head-kernelTail, size) {
		suspect = true
	}
	lost := r.refused(suspect, recorded)
	if skipped {
		lost = max(lost, 1)
	}
	return recs, lost
}

// perfMayHaveRefused reports whether a ring of size bytes holding used
// bytes has too little room for every record the kernel may write.
func perfMayHaveRefused(used, size uint64) bool {
	return used >= size || size-used <= perfRefusalRoom
}

// refused turns what read saw into a count of refused records.
func (r *perfRing) refused(suspect bool, recorded uint64) uint64 {
	if !suspect && recorded == 0 {
		return 0
	}
	if r.lostCounter {
		// The counter includes what PERF_RECORD_LOST reports, now and
		// later: only its growth counts.
		if _, total, err := r.readCounters(); err == nil {
			n := total - r.lost
			r.lost = total
			return n
		}
	}
	if suspect {
		recorded++ // inferred: at least one record may be gone
	}
	return recorded
}

// copyAt copies len(dst) bytes of the ring starting at the free-running
// offset pos, wrapping around the end of the data area.
func (r *perfRing) copyAt(dst []byte, pos uint64) {
	start := pos % uint64(len(r.data))
	n := copy(dst, r.data[start:])
	copy(dst[n:], r.data)
}

// parsePerfRecord turns one record (header included) into an event or a
// KSYMBOL. It reports false for records that are not about programs.
func parsePerfRecord(recType uint32, rec []byte) (perfRecord, bool) {
	const hdrSize = 8
	var out perfRecord
	ev := &out.ev
	switch recType {
	case unix.PERF_RECORD_BPF_EVENT:
		if len(rec) < hdrSize+perfBPFEventBodySize+perfSampleIDSize {
			return out, false
		}
		body := rec[hdrSize:]
		switch binary.NativeEndian.Uint16(body[0:2]) {
		case unix.PERF_BPF_EVENT_PROG_LOAD:
			ev.Kind = EventLoad
		case unix.PERF_BPF_EVENT_PROG_UNLOAD:
			ev.Kind = EventRelease
		default:
			return out, false
		}
		ev.ProgramID = binary.NativeEndian.Uint32(body[4:8])
		copy(ev.Tag[:], body[8:16])
	case unix.PERF_RECORD_KSYMBOL:
		if len(rec) < hdrSize+perfKsymbolHeadSize+perfSampleIDSize {
			return out, false
		}
		ksym, ok := parseKsymbol(rec[hdrSize : len(rec)-perfSampleIDSize])
		if !ok {
			return out, false
		}
		out.ksym = ksym
		ev.Tag = ksym.tag
	case unix.PERF_RECORD_LOST:
		if len(rec) < hdrSize+perfLostBodySize+perfSampleIDSize {
			return out, false
		}
		ev.Kind = EventLost
		ev.Lost = binary.NativeEndian.Uint64(rec[hdrSize+8 : hdrSize+16])
	default:
		return out, false
	}

	// sample_id_all puts the trailer at the end of the record.
	id := rec[len(rec)-perfSampleIDSize:]
	ev.PID = binary.NativeEndian.Uint32(id[0:4])
	ev.TID = binary.NativeEndian.Uint32(id[4:8])
	ev.KernelTime = binary.NativeEndian.Uint64(id[8:16])
	return out, true
}
