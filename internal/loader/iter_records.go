package loader

import (
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// iterPart is the size of the buffer a streamed iterator run
// (readRecords) goes through. A read(2) returns at most one seq_file
// buffer (8 pages), so a record is cut across two reads only when less
// room is asked for.
const iterPart = 64 << 10

// readRecords runs the iterator once and calls fn with each record of its
// output, read through buf's storage, which it returns: part bytes (0:
// iterPart) whatever the output's size, where read keeps it all (at 5000
// programs, 0.9 MiB the daemon held for good); a record larger than a
// part grows it. size returns the size of the record data starts with,
// or 0 when data is too short to tell. A record is valid until fn
// returns. An error means the output was cut (a failed read, a record cut
// short at the end, or fn's error): the records before it were handed,
// and started says whether there were any. A kept output (see kept) is
// handed as it is.
func (it *bpfIter) readRecords(buf []byte, part int, size func(data []byte) int, fn func(rec []byte) error) (_ []byte, started bool, err error) {
	if it.kept != nil {
		n, err := eachRecord(it.kept, size, fn)
		if err == nil && n < len(it.kept) {
			err = fmt.Errorf("iterator output: %d trailing bytes", len(it.kept)-n)
		}
		return buf, n > 0, err
	}
	fd, err := it.open()
	if err != nil {
		return buf, false, err
	}
	defer unix.Close(fd)
	if part <= 0 {
		part = iterPart
	}
	if cap(buf) < part {
		buf = make([]byte, 0, part)
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf)) // a record larger than a part
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return buf[:0], started, fmt.Errorf("reading iterator: %w", err)
		}
		if n == 0 {
			if len(buf) > 0 {
				return buf[:0], started, fmt.Errorf("iterator output: %d trailing bytes", len(buf))
			}
			return buf, started, nil
		}
		buf = buf[:len(buf)+n]
		used, err := eachRecord(buf, size, fn)
		started = started || used > 0
		if err != nil {
			return buf[:0], started, err
		}
		// The start of a record cut by this read, for the next one.
		buf = buf[:copy(buf, buf[used:])]
	}
}

// eachRecord calls fn with each whole record at the start of data, as
// size tells them apart, and returns how many bytes they take; it stops
// at fn's first error.
func eachRecord(data []byte, size func(data []byte) int, fn func(rec []byte) error) (int, error) {
	off := 0
	for off < len(data) {
		n := size(data[off:])
		if n <= 0 || off+n > len(data) {
			break
		}
		if err := fn(data[off : off+n]); err != nil {
			return off + n, err
		}
		off += n
	}
	return off, nil
}

// walkIterProgs calls fn with each record of an iter/bpf_prog output;
// withMaps says whether its records carry map IDs.
func walkIterProgs(data []byte, withMaps bool, fn func(rec []byte)) error {
	n, _ := eachRecord(data, iterRecordSize(withMaps), func(rec []byte) error {
		fn(rec)
		return nil
	})
	if n < len(data) {
		return fmt.Errorf("iterator output: %d trailing bytes", len(data)-n)
	}
	return nil
}

// iterRecordSize is iterProgSize, or iterStatsSize when the records carry
// no map IDs.
func iterRecordSize(withMaps bool) func([]byte) int {
	if withMaps {
		return iterProgSize
	}
	return iterStatsSize
}

// iterProgSize is the size of the iter/bpf_prog record (with map IDs)
// data starts with; 0 when data is too short to tell.
func iterProgSize(data []byte) int {
	if len(data) < iterProgHeaderSize {
		return 0
	}
	return iterProgHeaderSize + 4*int(min(iterRecMaps(data), iterMaxMapIDs))
}

// iterStatsSize is the size of a dump_prog_stats record, whatever data
// holds.
func iterStatsSize([]byte) int { return iterStatsRecordSize }
