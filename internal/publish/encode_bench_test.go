package publish

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
)

// benchKernel is a state.Kernel of n programs held by one process, each
// with a map of its own.
type benchKernel struct {
	progs map[uint32]loader.ProgramInfo
	ids   []uint32
}

func newBenchKernel(n int) *benchKernel {
	k := &benchKernel{progs: make(map[uint32]loader.ProgramInfo, n)}
	for i := range n {
		id := uint32(i + 1)
		k.progs[id] = loader.ProgramInfo{ID: id, Name: fmt.Sprintf("prog_%d", id), Type: 1,
			Tag: [8]byte{byte(id), 1, 2, 3, 4, 5, 6, 7}, LoadTime: uint64(id), RunTime: 1000, RunCount: 10,
			MapIDs: []uint32{id}}
		k.ids = append(k.ids, id)
	}
	return k
}

func (k *benchKernel) ProgramIDs() ([]uint32, error) { return k.ids, nil }

func (k *benchKernel) ReadProgram(id uint32) (loader.ProgramInfo, error) {
	if p, ok := k.progs[id]; ok {
		return p, nil
	}
	return loader.ProgramInfo{}, os.ErrNotExist
}

func (k *benchKernel) ReadMap(id uint32) (loader.MapInfo, error) {
	return loader.MapInfo{ID: id, Name: "m", Type: 2, Memlock: 4096}, nil
}

func (k *benchKernel) ReadProcess(pid uint32) (loader.Process, error) {
	return loader.Process{PID: pid, Comm: "holder", Exe: "/usr/bin/holder", StartTime: 1}, nil
}

func (k *benchKernel) Holders() (map[uint32][]uint32, error) {
	h := make(map[uint32][]uint32, len(k.ids))
	for _, id := range k.ids {
		h[id] = []uint32{1000}
	}
	return h, nil
}

// runEvery makes every k-th program run between two sweeps.
func (k *benchKernel) runEvery(every int) {
	for i, id := range k.ids {
		if i%every == 0 {
			p := k.progs[id]
			p.RunTime += 500
			p.RunCount++
			k.progs[id] = p
		}
	}
}

// BenchmarkIntervalMessages encodes the messages of one interval (full
// rows, the default) of a steady-state Tracker's snapshot in which every
// 10th program ran, reported per program: with unchanged rows' encodings
// reused, it should stay flat from 100 to 20000 programs.
func BenchmarkIntervalMessages(b *testing.B) {
	for _, n := range []int{100, 1000, 5000, 20000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			k := newBenchKernel(n)
			tr := state.New(k, state.Options{Node: "bench"})
			s := benchSink()
			publishOnce := func() {
				k.runEvery(10)
				snap, err := tr.Sweep()
				if err != nil {
					b.Fatal(err)
				}
				s.seq++
				if _, err := s.encodeInterval(snap, defaultMaxPayload, false, nil); err != nil {
					b.Fatal(err)
				}
			}
			publishOnce()
			b.ReportAllocs()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			var encode int64
			for b.Loop() {
				b.StopTimer()
				k.runEvery(10)
				snap, err := tr.Sweep()
				if err != nil {
					b.Fatal(err)
				}
				s.seq++
				runtime.ReadMemStats(&before)
				b.StartTimer()
				if _, err := s.encodeInterval(snap, defaultMaxPayload, false, nil); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				runtime.ReadMemStats(&after)
				encode += int64(after.Mallocs - before.Mallocs)
				b.StartTimer()
			}
			ops := float64(b.N) * float64(n)
			b.ReportMetric(float64(encode)/ops, "allocs/prog")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/ops, "ns/prog")
		})
	}
}
