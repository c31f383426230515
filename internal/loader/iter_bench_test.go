package loader

import (
	"os"
	"strconv"
	"testing"

	"github.com/bpfstats/tracker/internal/testgadget"

	"github.com/bpfstats/tracker/internal/testutil"
)

// benchPrograms is how many programs the read benchmarks load
// (BENCH_PROGRAMS overrides it).
func benchPrograms(b *testing.B) int {
	if v, err := strconv.Atoi(os.Getenv("BENCH_PROGRAMS")); err == nil && v > 0 {
		return v
	}
	return 1000
}

// benchLoad loads n socket filters with one map each and returns every
// program ID on the machine.
func benchLoad(b *testing.B, n int) []uint32 {
	b.Helper()
	testutil.RequireRoot(b)
	testgadget.LoadSocketFilters(b, "tk_bench", n)
	k, err := NewKernelWithOptions(KernelOptions{NoIterators: true})
	if err != nil {
		b.Fatal(err)
	}
	ids, err := k.ProgramIDs()
	if err != nil {
		b.Fatal(err)
	}
	return ids
}

func benchKernel(b *testing.B, iter bool) *Kernel {
	b.Helper()
	k, err := NewKernelWithOptions(KernelOptions{NoIterators: !iter})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { k.Close() })
	if iter {
		progs, holders := k.Iterators()
		testutil.SkipIfUnsupported(b, progs, "iter/bpf_prog")
		testutil.SkipIfUnsupported(b, holders, "iter/task_file")
	}
	return k
}

// BenchmarkReadPrograms is the stats part of a sweep: every program on
// the machine, through the iterator and through bpf(2).
func BenchmarkReadPrograms(b *testing.B) {
	ids := benchLoad(b, benchPrograms(b))
	for _, iter := range []bool{true, false} {
		name := map[bool]string{true: "iter", false: "syscall"}[iter]
		b.Run(name, func(b *testing.B) {
			k := benchKernel(b, iter)
			b.ReportAllocs()
			for b.Loop() {
				n := 0
				k.ReadPrograms(ids, func(id uint32, info *ProgramInfo, err error) {
					if err == nil {
						n++
					}
				})
				if n < len(ids)-10 {
					b.Fatalf("read %d of %d programs", n, len(ids))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(ids)), "ns/prog")
		})
	}
}

// BenchmarkHoldersMany compares the task_file iterator with the /proc walk.
func BenchmarkHoldersMany(b *testing.B) {
	ids := benchLoad(b, benchPrograms(b))
	for _, iter := range []bool{true, false} {
		name := map[bool]string{true: "iter", false: "proc"}[iter]
		b.Run(name, func(b *testing.B) {
			k := benchKernel(b, iter)
			b.ReportAllocs()
			for b.Loop() {
				h, err := k.Holders()
				if err != nil {
					b.Fatal(err)
				}
				if len(h) < len(ids)-10 {
					b.Fatalf("%d programs held, %d loaded", len(h), len(ids))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(ids)), "ns/prog")
		})
	}
}
