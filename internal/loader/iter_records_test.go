package loader

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// The bpf_prog iterators' output goes through parts smaller than a few
// records, so that the kernel cuts records across reads: every read
// still agrees with bpf(2), the full read with map IDs and the cached
// ones, and the buffer stays the size of a part, not of the output.
func TestIterReadRecordsInParts(t *testing.T) {
	for _, part := range []int{41, 100, 333} {
		t.Run(fmt.Sprintf("part=%d", part), func(t *testing.T) {
			iter, syscalls := iterKernels(t)
			iter.progPart = part
			progs := iterFixture(t, 30)
			var ids []uint32
			for _, p := range progs {
				ids = append(ids, programIDOf(t, p))
			}
			for round := range 3 {
				got := compareReads(t, iter, syscalls, ids)
				if len(got) != len(ids) {
					t.Fatalf("round %d: %d of %d programs read", round, len(got), len(ids))
				}
				if round == 0 && len(iter.known.progs) < len(ids) {
					t.Fatalf("%d programs cached after the full read, want at least %d", len(iter.known.progs), len(ids))
				}
				// A part grows only for a record larger than itself (at
				// most 324 bytes, with 64 maps), and allocation rounds it
				// up; the output is over 2040 bytes (30 records of 68 or
				// more with map IDs, 40 without).
				if c := cap(iter.progBuf); c > max(2*part, 1024) {
					t.Fatalf("round %d: buffer of %d bytes for parts of %d", round, c, part)
				}
			}
			listed, err := iter.ProgramIDs()
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				if !slices.Contains(listed, id) {
					t.Fatalf("program %d not listed by the iterator in parts of %d", id, part)
				}
			}
		})
	}
}

func TestEachRecord(t *testing.T) {
	// Records are a length byte and that many bytes.
	size := func(data []byte) int { return 1 + int(data[0]) }
	data := []byte{2, 'a', 'b', 0, 3, 'c', 'd', 'e', 4, 'f'}
	for n := range len(data) + 1 {
		var got [][]byte
		used, err := eachRecord(data[:n], size, func(rec []byte) error {
			got = append(got, rec)
			return nil
		})
		want := map[int]int{0: 0, 1: 0, 2: 0, 3: 3, 4: 4, 5: 4, 6: 4, 7: 4, 8: 8, 9: 8, 10: 8}[n]
		if used != want || err != nil || !bytes.Equal(bytes.Join(got, nil), data[:want]) {
			t.Errorf("%d bytes: records %q, %d bytes used, %v; want %q", n, got, used, err, data[:want])
		}
	}
	stop := errors.New("stop")
	calls := 0
	used, err := eachRecord(data, size, func([]byte) error { calls++; return stop })
	if calls != 1 || used != 3 || err != stop {
		t.Errorf("an error from fn: %d calls, %d bytes used, %v; want 1, 3, stop", calls, used, err)
	}
	if used, _ := eachRecord([]byte{1, 2, 3}, func([]byte) int { return 0 }, nil); used != 0 {
		t.Errorf("a size of 0: %d bytes used", used)
	}
}
