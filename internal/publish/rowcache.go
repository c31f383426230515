package publish

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/bpfstats/tracker/internal/state"
)

// Encoding a program row as JSON was most of what publishing cost: at
// thousands of programs, every interval encoded every row again although
// most had not changed (a program that did not run keeps its numbers).
// The sink keeps each program's last full-row encoding with the row it
// was made from, and copies it when the snapshot has the same row: a
// Tracker's snapshot shares each row that did not change, read only, and
// replaces one that did (see state.Snapshot.Programs). With CompactRows
// its compact encoding is kept with the snapshot's RowVersion, which
// covers all of its fields. Rows of snapshots without versions
// (RowVersion 0) are encoded every time. An encoding not used in an
// interval is dropped.

// rowCode is the kept encoding of one program's full row, and of its
// compact row.
type rowCode struct {
	// row is the row data encodes. Holding it keeps its address from
	// being reused by another row.
	row *state.Row
	// seq is the last interval that used it.
	seq  uint64
	data []byte
	// compact is the CompactRow encoding of the row of compactVersion.
	compactVersion uint64
	compact        []byte
}

// rowCodes are the programs' kept row encodings: those the last interval
// used, by program ID in ascending order, and this interval's, aligned
// with its snapshot's program rows (see align).
type rowCodes struct {
	ids   []uint32
	codes []*rowCode
	cur   []*rowCode
	// encoded counts the rows this interval encoded rather than reused.
	encoded int
}

// align lines the kept encodings up with snap's program rows, which a
// Tracker sorts by ID as they were kept: one merge of the two, where a
// map lookup per row was a tenth of what publishing cost. A row out of
// order only misses its encoding.
func (rc *rowCodes) align(snap *state.Snapshot) {
	cur := slices.Grow(rc.cur[:0], len(snap.Programs))[:len(snap.Programs)]
	j := 0
	for i, r := range snap.Programs {
		for j < len(rc.ids) && rc.ids[j] < r.ProgID {
			j++
		}
		cur[i] = nil
		if j < len(rc.ids) && rc.ids[j] == r.ProgID {
			cur[i] = rc.codes[j]
			j++
		}
	}
	rc.cur, rc.encoded = cur, 0
}

// keep keeps the encodings of snap's rows used in interval seq, for the
// next; the others (programs gone, or not sent in full) are dropped.
func (rc *rowCodes) keep(snap *state.Snapshot, seq uint64) {
	rc.ids, rc.codes = rc.ids[:0], rc.codes[:0]
	for i, c := range rc.cur {
		if c != nil && c.seq == seq {
			rc.ids = append(rc.ids, snap.Programs[i].ProgID)
			rc.codes = append(rc.codes, c)
		}
	}
	clear(rc.codes[len(rc.codes):cap(rc.codes)])
	clear(rc.cur)
	rc.cur = rc.cur[:0]
}

// messageRows are the program rows of one gadget or _unowned message:
// indexes into snap.Programs.
type messageRows struct {
	snap *state.Snapshot
	idx  []int32
}

// cleanCopy is row i of m named after node, with clean labels.
func (m messageRows) cleanCopy(i int, node string) state.Row {
	r := *m.snap.Programs[m.idx[i]]
	r.NodeName = node
	cleanRow(&r)
	return r
}

// rowEncoder encodes the rows of m, whole or as CompactRow: a kept
// encoding is referred to (see intervalEncoder.refer), a new one encoded
// by the hand-written encoders and kept. Rows without a version go through
// rowItems and e's row buffer.
func (s *NATSSink) rowEncoder(e *intervalEncoder, m messageRows, compact bool) itemEncoder {
	var one [1]state.Row
	encodeOne := rowItems(one[:], compact)
	return func(enc *json.Encoder, i int) error {
		k := int(m.idx[i])
		r := m.snap.Programs[k]
		ver := m.snap.RowVersion(k)
		if ver == 0 {
			one[0] = m.cleanCopy(i, s.node)
			return encodeOne(enc, 0)
		}
		c := s.codes.cur[k]
		if c == nil {
			c = &rowCode{}
			s.codes.cur[k] = c
		}
		c.seq = s.seq
		if compact {
			return s.compactRow(e, c, r, ver)
		}
		if c.row == r {
			e.refer(c.data)
			return nil
		}
		one[0] = m.cleanCopy(i, s.node)
		// The hand-written encoder: encoding/json's bytes, several times
		// cheaper (see AppendRowJSON).
		data, err := AppendRowJSON(e.b.code[:0], &one[0], "")
		e.b.code = data[:0]
		if err != nil {
			return fmt.Errorf("encoding program %d: %w", r.ProgID, err)
		}
		c.data, c.row = keepCode(c.data, data), r
		s.codes.encoded++
		e.refer(c.data)
		return nil
	}
}

// compactRow makes r's CompactRow encoding e's element: the kept one when
// c holds it for version ver, else a new one, kept.
func (s *NATSSink) compactRow(e *intervalEncoder, c *rowCode, r *state.Row, ver uint64) error {
	if c.compact != nil && c.compactVersion == ver {
		e.refer(c.compact)
		return nil
	}
	data, err := appendCompactRowJSON(e.b.code[:0], r)
	e.b.code = data[:0]
	if err != nil {
		return fmt.Errorf("encoding program %d: %w", r.ProgID, err)
	}
	c.compact, c.compactVersion = keepCode(c.compact, data), ver
	s.codes.encoded++
	e.refer(c.compact)
	return nil
}

// codeSlack is the least room a kept encoding gets beyond its length: a
// row's numbers grow a digit now and then, and its next encoding should
// still fit. The allocation's size class usually adds more.
const codeSlack = 8

// keepCode copies data, a new encoding, into dst, the row's kept one, and
// returns it: in place when it fits and dst is not more than twice as
// large, else in a new slice of the size class that holds
// len(data)+codeSlack. Encodings are made in a scratch buffer and copied
// because append grows a slice to up to twice what it holds: kept
// encodings grown in place held up to three quarters of their length
// spare, and their growth left garbage each time.
func keepCode(dst, data []byte) []byte {
	if cap(dst) < len(data) || cap(dst) > 2*len(data)+codeSlack {
		dst = slices.Grow([]byte(nil), len(data)+codeSlack)
	}
	return append(dst[:0], data...)
}
