package publish

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/bpfstats/tracker/internal/state"
)

// benchSink is a sink without a connection, for encoding intervals.
func benchSink() *NATSSink {
	return &NATSSink{opts: NATSOptions{FullEvery: DefaultFullEvery}, node: "bench", prefix: DefaultSubjectPrefix,
		tokens: map[string]*tokenState{}, bufs: &EncodeBuffers{}}
}

// intervalPayloads returns the payloads of snap's interval messages.
func intervalPayloads(t *testing.T, s *NATSSink, snap *state.Snapshot, seq uint64) [][]byte {
	t.Helper()
	s.seq = seq
	msgs, err := s.encodeInterval(snap, defaultMaxPayload, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		out[i] = bytes.Clone(m.data)
	}
	return out
}

// A sink that reuses the encodings of unchanged rows publishes exactly
// what a sink encoding every row anew does, interval after interval,
// whether programs ran, were added or left, or a row's Attach changed;
// with full rows and with compact ones.
func TestRowEncodingsReusedMatchFresh(t *testing.T) {
	for _, compact := range []bool{false, true} {
		t.Run(fmt.Sprintf("compact=%v", compact), func(t *testing.T) { testRowEncodingsReused(t, compact) })
	}
}

func testRowEncodingsReused(t *testing.T, compact bool) {
	k := newBenchKernel(300)
	tr := state.New(k, state.Options{Node: "n1"})
	kept := benchSink()
	kept.opts.CompactRows = compact
	// The full rows each step encodes again (-1: any): those of the
	// programs that ran in it or in the step before (their deltas went
	// back to 0), and in step 3 the one row given a new Attach.
	steps := []func(){
		func() {},
		func() { k.runEvery(10) },
		func() { delete(k.progs, 5); k.ids = append(k.ids[:4], k.ids[5:]...) },
		func() {},
		func() { k.runEvery(7) },
		// Numbers only: compact rows, when on.
		func() { k.runEvery(3) },
		func() {},
		func() { k.runEvery(5) },
	}
	encodes := []int{-1, 30, 30, 1, 43, 128, 100, 60}
	compactSeen := 0
	for i, step := range steps {
		step()
		snap, err := tr.Sweep()
		if err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			// A new row with the same versions, as a Tracker makes when
			// a column outside them (Attach, the pod name) changes.
			r := *snap.Programs[7]
			r.Attach = []string{"cgroup /x ingress"}
			snap.Programs[7] = &r
		}
		// A sink with the same view of what was sent, but no kept
		// encodings.
		fresh := benchSink()
		fresh.opts = kept.opts
		for tok, st := range kept.tokens {
			c := *st
			fresh.tokens[tok] = &c
		}
		seq := uint64(i + 1)
		got, want := intervalPayloads(t, kept, snap, seq), intervalPayloads(t, fresh, snap, seq)
		if len(got) != len(want) {
			t.Fatalf("step %d: %d messages, want %d", i, len(got), len(want))
		}
		for j := range got {
			if !bytes.Equal(got[j], want[j]) {
				t.Fatalf("step %d, message %d differs from a fresh encoding:\n%.300s\nwant\n%.300s", i, j, got[j], want[j])
			}
			if bytes.Contains(got[j], []byte(`"rows":"compact"`)) {
				compactSeen++
			}
		}
		if n := kept.codes.encoded; !compact && encodes[i] >= 0 && n != encodes[i] {
			t.Errorf("step %d: %d rows encoded again, want %d", i, n, encodes[i])
		}
		if n := len(kept.codes.codes); n != len(snap.Programs) || !slices.IsSorted(kept.codes.ids) {
			t.Errorf("step %d: %d kept encodings, want one per program (%d)", i, n, len(snap.Programs))
		}
		checkKeptEncodings(t, kept, snap)
	}
	if compact && compactSeen < 3 || !compact && compactSeen > 0 {
		t.Errorf("%d messages with compact rows", compactSeen)
	}
}

// checkKeptEncodings checks each kept encoding, made by the hand-written
// encoders, against encoding/json's of the same row (named after the
// sink's node, labels cleaned) or CompactRow, and that they hold little
// spare room: thousands are kept.
func checkKeptEncodings(t *testing.T, s *NATSSink, snap *state.Snapshot) {
	t.Helper()
	var size, room int
	for _, c := range s.codes.codes {
		size += len(c.data) + len(c.compact)
		room += cap(c.data) + cap(c.compact)
	}
	// Size classes are at most 1/8 apart up to 32 KiB.
	if n := len(s.codes.codes); room > size+size/8+2*n*codeSlack {
		t.Errorf("%d kept encodings of %d bytes take %d bytes: more than the size class and %d spare each", n, size, room, codeSlack)
	}
	for k := range snap.Programs {
		r := snap.Programs[k]
		i, ok := slices.BinarySearch(s.codes.ids, r.ProgID)
		if !ok {
			continue
		}
		c := s.codes.codes[i]
		if c.data != nil && c.row == r {
			row := messageRows{snap: snap, idx: []int32{int32(k)}}.cleanCopy(0, s.node)
			if want, _ := json.Marshal(&row); !bytes.Equal(c.data, want) {
				t.Fatalf("program %d: kept row\n%s\nencoding/json\n%s", r.ProgID, c.data, want)
			}
		}
		if c.compact != nil && c.compactVersion == snap.RowVersion(k) {
			want, _ := json.Marshal(CompactRow{ProgID: r.ProgID, Totals: r.Totals, Cost: r.Cost})
			if !bytes.Equal(c.compact, want) {
				t.Fatalf("program %d: kept compact row\n%s\nencoding/json\n%s", r.ProgID, c.compact, want)
			}
		}
	}
}
