package state

import (
	"fmt"
	"runtime"
	"testing"
)

// allocsSizes are the inventory sizes of the allocation benchmark: the
// allocations per program of a sweep should not grow with them.
var allocsSizes = []int{100, 1000, 5000, 20000}

// growEvery makes every k-th program run a little between two sweeps.
func (k *fakeKernel) growEvery(every int) {
	i := 0
	for id, p := range k.progs {
		if i%every == 0 {
			p.RunTime += 500
			p.RunCount++
			k.progs[id] = p
		}
		i++
	}
}

// BenchmarkSweepAllocs is one steady-state sweep over a fake kernel (the
// tracker's own work only) with a share of the programs changed since the
// last one, reported as allocations (and bytes) per program. The
// "recycled" variant builds each snapshot's rows in the storage of the
// previous one, as Run does with RunConfig.RecycleSnapshots.
func BenchmarkSweepAllocs(b *testing.B) {
	variants := []struct {
		name    string
		every   int
		recycle bool
	}{{"changed=10%", 10, false}, {"changed=100%", 1, false}, {"changed=10%,recycled", 10, true}}
	for _, v := range variants {
		for _, n := range allocsSizes {
			b.Run(fmt.Sprintf("%s/n=%d", v.name, n), func(b *testing.B) {
				fk := benchFake(n)
				tr := primedTracker(b, batchFakeKernel{fk})
				b.ReportAllocs()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				for b.Loop() {
					b.StopTimer()
					fk.growEvery(v.every)
					b.StartTimer()
					snap, err := tr.Sweep()
					if err != nil {
						b.Fatal(err)
					}
					if len(snap.Programs) != n {
						b.Fatalf("%d programs in snapshot, want %d", len(snap.Programs), n)
					}
					if v.recycle {
						tr.Recycle(snap)
					}
				}
				runtime.ReadMemStats(&after)
				ops := float64(b.N) * float64(n)
				b.ReportMetric(float64(after.Mallocs-before.Mallocs)/ops, "allocs/prog")
				b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/ops, "B/prog")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/ops, "ns/prog")
			})
		}
	}
}

// BenchmarkFirstSweep is a one-shot's work in internal/state: a new
// Tracker's Resync and first Sweep of n programs (fake kernel), the
// inventory, maps and rows all built from nothing.
func BenchmarkFirstSweep(b *testing.B) {
	for _, n := range allocsSizes {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			k := batchFakeKernel{benchFake(n)}
			b.ReportAllocs()
			for b.Loop() {
				primedTracker(b, k)
			}
			ops := float64(b.N) * float64(n)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/ops, "ns/prog")
		})
	}
}
