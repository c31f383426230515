package state

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"

	"github.com/bpfstats/tracker/internal/loader"
)

// listsTracker is a Tracker holding n programs, each with its own map
// (every other one sharing one more) and one of a few holders, summed
// into s as one gadget's members.
func listsTracker(n int) (*Tracker, *rowSum) {
	tr := New(newFakeKernel(), Options{Node: "n1", Source: "test"})
	s := &rowSum{}
	for i := range n {
		p := &program{id: uint32(10 + i), row: new(Row)}
		p.row.MapIDs = []uint32{uint32(100000 + i)}
		if i%2 == 0 {
			p.row.MapIDs = append(p.row.MapIDs, 99999)
		}
		p.row.PIDs = []uint32{uint32(1000 + i/50)}
		for _, m := range p.row.MapIDs {
			tr.maps[m] = &mapEntry{info: loader.MapInfo{ID: m, Memlock: 4096}}
		}
		s.add(p, runStats{})
	}
	return tr, s
}

// BenchmarkSumLists is the distinct maps, PIDs and comms of one gadget
// whose members changed since its last row (a load storm's sweeps).
func BenchmarkSumLists(b *testing.B) {
	for _, n := range []int{1000, 5000, 20000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			tr, s := listsTracker(n)
			tr.pace = inline{}
			for b.Loop() {
				s.listsOK = false
				tr.sumLists(s)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/prog")
		})
	}
}

// distinctIDs returns what sorting and compacting return, through its
// bitmap (dense IDs) or not (sparse ones, few ones), and pauses in every
// pass of the bitmap.
func TestDistinctIDs(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var scratch []uint64
	cases := []struct {
		name   string
		n      int
		lo     uint32
		spread uint32
	}{
		{"empty", 0, 0, 1},
		{"few", 40, 7, 100},
		{"dense", 3 * pauseEvery, 1000, 2 * pauseEvery},
		{"dense with repeats", 3 * pauseEvery, 1, pauseEvery / 4},
		{"from zero", 2 * pauseEvery, 0, 3 * pauseEvery},
		{"to the top", 2 * pauseEvery, math.MaxUint32 - (3*pauseEvery - 1), 3 * pauseEvery},
		{"sparse", 2 * pauseEvery, 1, math.MaxUint32 - 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ids := make([]uint32, c.n)
			for i := range ids {
				ids[i] = c.lo + rng.Uint32N(c.spread)
			}
			want := slices.Clone(ids)
			slices.Sort(want)
			want = slices.Compact(want)
			pauses := 0
			got := distinctIDs(ids, &scratch, func() { pauses++ })
			if !slices.Equal(got, want) {
				t.Fatalf("got %d IDs %v..., want %d %v...", len(got), head(got), len(want), head(want))
			}
			if c.name == "dense" && pauses < c.n/pauseEvery {
				t.Fatalf("%d pauses over %d IDs, want at least %d", pauses, c.n, c.n/pauseEvery)
			}
		})
	}
}

func head(ids []uint32) []uint32 { return ids[:min(len(ids), 5)] }

// The distinct lists of a gadget of thousands of programs, recomputed
// when its members changed, take milliseconds: the passes yield to loads
// of new programs every pauseEvery items, as the rows' loop does, and
// their result is the same.
func TestSumListsYieldsToLoads(t *testing.T) {
	const n = 4 * pauseEvery
	tr, s := listsTracker(n)
	c := &yieldCounter{}
	tr.pace = c
	tr.sumLists(s)
	// Gathering (n members), the bitmap's two passes over 1.5 n map IDs,
	// the memory of n+1 maps.
	if want := 4 + 6 + 4; c.loads < want {
		t.Fatalf("%d yields summing %d programs, want at least %d", c.loads, n, want)
	}
	if len(s.mapIDs) != n+1 || s.mapIDs[0] != 99999 || s.mapIDs[n] != 100000+n-1 {
		t.Fatalf("%d distinct maps %v..., want %d from 99999", len(s.mapIDs), head(s.mapIDs), n+1)
	}
	if want := uint64(n+1) * 4096; s.mapMemory != want {
		t.Fatalf("map memory %d, want %d", s.mapMemory, want)
	}
	wantPIDs := (n-1)/50 + 1
	if len(s.pids) != wantPIDs || s.pids[0] != 1000 {
		t.Fatalf("%d distinct PIDs %v..., want %d from 1000", len(s.pids), head(s.pids), wantPIDs)
	}
}

// A program's record and its row are kept for each of thousands of
// programs: the record stays within the 288-byte size class, the row
// within 480 (objects of 512 bytes or less carry no malloc header). The
// two took 1024 bytes, plus a 464-byte copy of the row in the snapshot,
// until the row was shared with the snapshot (and 1024 alone before the
// placement, tag, name and type were kept once). A field that grows
// either past its class costs 32 more bytes per program.
func TestProgramSize(t *testing.T) {
	for _, c := range []struct {
		name        string
		size, class uintptr
	}{{"program", unsafe.Sizeof(program{}), 288}, {"Row", unsafe.Sizeof(Row{}), 480}} {
		if c.size > c.class {
			t.Errorf("%s is %d bytes, over the %d-byte size class", c.name, c.size, c.class)
		}
	}
}
