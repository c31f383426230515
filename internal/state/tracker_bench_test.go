package state

import (
	"fmt"
	"testing"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/testgadget"
)

// benchSizes are the inventory sizes of the harness.
var benchSizes = []int{100, 1000, 5000}

// batchFakeKernel is a fakeKernel that also reads in batches, as
// loader.Kernel does where the bpf_prog iterator loads: one info buffer
// for the whole batch, valid during each call only.
type batchFakeKernel struct{ *fakeKernel }

func (k batchFakeKernel) ReadPrograms(ids []uint32, fn func(uint32, *loader.ProgramInfo, error)) error {
	info := new(loader.ProgramInfo)
	for _, id := range ids {
		var err error
		*info, err = k.ReadProgram(id)
		fn(id, info, err)
	}
	return nil
}

// benchFake fills a fake kernel with n programs of one or two maps, owned
// by n/50+1 gadget processes that hold their fds.
func benchFake(n int) *fakeKernel {
	k := newFakeKernel()
	owners := n/50 + 1
	for i := range owners {
		pid := uint32(1000 + i)
		k.procs[pid] = loader.Process{PID: pid, StartTime: 42, Comm: fmt.Sprintf("gadget%d", i), Exe: "/usr/bin/gadget",
			Labels: map[string]string{labelName: fmt.Sprintf("g%d", i)}}
	}
	for i := range n {
		id := uint32(10 + i)
		maps := []uint32{uint32(100000 + i)}
		if i%2 == 0 {
			maps = append(maps, 99999) // shared by half the programs
		}
		for _, m := range maps {
			k.maps[m] = loader.MapInfo{ID: m, Name: "m", Memlock: 4096}
		}
		k.progs[id] = loader.ProgramInfo{ID: id, Name: fmt.Sprintf("prog%d", i), Type: 2, Tag: tag(byte(i)),
			LoadTime: uint64(id), RunTime: 1000, RunCount: 10, MapIDs: maps}
		k.holders[id] = []uint32{uint32(1000 + i%owners)}
	}
	return k
}

// grow makes every program run a little between two sweeps.
func (k *fakeKernel) grow() {
	for id, p := range k.progs {
		p.RunTime += 500
		p.RunCount++
		k.progs[id] = p
	}
}

// BenchmarkSweep is one steady-state sweep (stats merge, maps from the
// cache, holders, snapshot) over a fake kernel, so that only the
// tracker's own work is timed.
func BenchmarkSweep(b *testing.B) {
	for _, batch := range []bool{false, true} {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("batch=%v/n=%d", batch, n), func(b *testing.B) {
				fk := benchFake(n)
				var k Kernel = fk
				if batch {
					k = batchFakeKernel{fk}
				}
				tr := primedTracker(b, k)
				b.ReportAllocs()
				for b.Loop() {
					b.StopTimer()
					fk.grow()
					b.StartTimer()
					snap, err := tr.Sweep()
					if err != nil {
						b.Fatal(err)
					}
					if len(snap.Programs) != n {
						b.Fatalf("%d programs in snapshot, want %d", len(snap.Programs), n)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/prog")
			})
		}
	}
}

// BenchmarkApplyLoadRelease is one load event and its release applied to
// an inventory of 5000 programs.
func BenchmarkApplyLoadRelease(b *testing.B) {
	fk := benchFake(5000)
	tr := New(fk, Options{Node: "n1", Source: "bench"})
	if _, _, err := tr.Resync(); err != nil {
		b.Fatal(err)
	}
	const id = 9
	fk.progs[id] = loader.ProgramInfo{ID: id, Name: "new", Type: 2, Tag: tag(id), LoadTime: 1}
	load := loader.ProgramEvent{Kind: loader.EventLoad, ProgramID: id, Tag: tag(id), PID: 1000, Comm: "gadget0"}
	release := loader.ProgramEvent{Kind: loader.EventRelease, ProgramID: id, Tag: tag(id)}
	b.ReportAllocs()
	for b.Loop() {
		if tr.apply(load) == nil {
			b.Fatal("load not applied")
		}
		if tr.apply(release) == nil {
			b.Fatal("release not applied")
		}
		// Forget the release, as goneSweeps sweeps later: the next load
		// is a new program, not a late event of this one.
		delete(tr.gone, id)
	}
}

// BenchmarkSweepKernel is a steady-state sweep over the running kernel
// (loader.Kernel, iterators where they load) with 1000 extra programs
// held by this process.
func BenchmarkSweepKernel(b *testing.B) {
	if err := loader.CheckPrivileges(); err != nil {
		b.Skip("loading programs: ", err)
	}
	testgadget.LoadSocketFilters(b, "tk_sweep", 1000)
	for _, iter := range []bool{true, false} {
		b.Run(fmt.Sprintf("iterators=%v", iter), func(b *testing.B) {
			k, err := loader.NewKernelWithOptions(loader.KernelOptions{NoIterators: !iter})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { k.Close() })
			if progs, holders := k.Iterators(); iter && (progs != nil || holders != nil) {
				b.Skipf("iterators: %v / %v", progs, holders)
			}
			tr := primedTracker(b, k)
			b.ReportAllocs()
			for b.Loop() {
				snap, err := tr.Sweep()
				if err != nil {
					b.Fatal(err)
				}
				// As tracker run does, once the snapshot is published.
				tr.Recycle(snap)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(tr.programs)), "ns/prog")
		})
	}
}

// primedTracker returns a Tracker over k that took its snapshot and first
// sweep, so that a benchmark measures steady-state sweeps.
func primedTracker(b *testing.B, k Kernel) *Tracker {
	b.Helper()
	tr := New(k, Options{Node: "n1", Source: "bench"})
	if _, _, err := tr.Resync(); err != nil {
		b.Fatal(err)
	}
	if _, err := tr.Sweep(); err != nil {
		b.Fatal(err)
	}
	return tr
}
