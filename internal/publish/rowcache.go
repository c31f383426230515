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
// The sink keeps each program's last full-row encoding with the
// snapshot's RowVersion it was made from, and copies it when the version
// (and the Attach and pod columns, which every snapshot fills anew) did
// not change. With CompactRows the same holds for its compact encoding,
// whose fields the version covers alone. Rows of snapshots without
// versions (RowVersion 0) are encoded every time. An encoding not used in
// an interval is dropped.

// rowCode is the kept encoding of one program's full row, and of its
// compact row.
type rowCode struct {
	version uint64
	// attach, podName and podNamespace are the columns the version does
	// not cover, as encoded.
	attach                []string
	podName, podNamespace string
	// seq is the last interval that used it.
	seq  uint64
	data []byte
	// compact is the CompactRow encoding of the row of compactVersion.
	compactVersion uint64
	compact        []byte
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
		c := s.rowCodes[r.ProgID]
		if compact {
			return s.compactRow(e, c, r, ver)
		}
		if c != nil && c.version == ver && slices.Equal(c.attach, r.Attach) &&
			c.podName == r.PodName && c.podNamespace == r.PodNamespace {
			c.seq = s.seq
			s.rowCodesUsed++
			e.refer(c.data)
			return nil
		}
		one[0] = m.cleanCopy(i, s.node)
		if c == nil {
			c = &rowCode{}
			s.rowCodes[r.ProgID] = c
		}
		// The hand-written encoder: encoding/json's bytes, several times
		// cheaper (see AppendRowJSON).
		data, err := AppendRowJSON(e.b.code[:0], &one[0], "")
		e.b.code = data[:0]
		if err != nil {
			return fmt.Errorf("encoding program %d: %w", r.ProgID, err)
		}
		c.data = keepCode(c.data, data)
		c.version, c.attach, c.podName, c.podNamespace = ver, r.Attach, r.PodName, r.PodNamespace
		c.seq = s.seq
		s.rowCodesUsed++
		e.refer(c.data)
		return nil
	}
}

// compactRow makes r's CompactRow encoding e's element: the kept one when
// c holds it for version ver, else a new one, kept.
func (s *NATSSink) compactRow(e *intervalEncoder, c *rowCode, r *state.Row, ver uint64) error {
	if c == nil {
		c = &rowCode{}
		s.rowCodes[r.ProgID] = c
	}
	if c.seq != s.seq {
		c.seq = s.seq
		s.rowCodesUsed++
	}
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

// forgetRowCodes drops the encodings this interval did not use (programs
// gone, or no longer sent in full).
func (s *NATSSink) forgetRowCodes() {
	if len(s.rowCodes) > s.rowCodesUsed {
		for id, c := range s.rowCodes {
			if c.seq != s.seq {
				delete(s.rowCodes, id)
			}
		}
	}
	s.rowCodesUsed = 0
}
