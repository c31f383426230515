package main

import (
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// median returns the median of xs (0 when empty).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile returns the p-th percentile (nearest rank) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// method is one way of doing a measured job; run returns how many
// programs it covered.
type method struct {
	name string
	run  func() (int, error)
}

// timeMethods runs each method reps times, interleaved so that machine
// noise hits all alike, and returns the median time per program in
// microseconds, by method name.
func timeMethods(reps int, methods []method) (map[string]float64, map[string]int, error) {
	per := make(map[string][]float64)
	counts := make(map[string]int)
	for _, m := range methods { // warm-up: caches, cilium's feature probes
		if _, err := m.run(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", m.name, err)
		}
	}
	for range reps {
		for _, m := range methods {
			runtime.GC() // the previous method's garbage is not this one's cost
			start := time.Now()
			n, err := m.run()
			d := time.Since(start)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", m.name, err)
			}
			if n == 0 {
				return nil, nil, fmt.Errorf("%s covered no program", m.name)
			}
			per[m.name] = append(per[m.name], float64(d.Nanoseconds())/1000/float64(n))
			counts[m.name] = n
		}
	}
	out := make(map[string]float64)
	for name, xs := range per {
		out[name] = median(xs)
	}
	return out, counts, nil
}

// linearFit returns the least-squares line y = a + slope·x through the
// points.
func linearFit(xs, ys []float64) (a, slope float64) {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return sy / n, 0
	}
	slope = (n*sxy - sx*sy) / den
	return (sy - slope*sx) / n, slope
}

// allocsRow is one variant of BenchmarkSweepAllocs: allocations per
// program by N.
type allocsRow struct {
	name string
	perN map[int]float64
}

// allocsTable reads the allocs/prog metric of BenchmarkSweepAllocs out of
// go test -bench output, by variant and N.
func allocsTable(out string) ([]allocsRow, []int) {
	var rows []allocsRow
	var sizes []int
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], "BenchmarkSweepAllocs/") {
			continue
		}
		name := strings.TrimPrefix(f[0], "BenchmarkSweepAllocs/")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			name = name[:i] // the GOMAXPROCS suffix
		}
		variant, nText, ok := strings.Cut(name, "/n=")
		n, err := strconv.Atoi(nText)
		if !ok || err != nil {
			continue
		}
		i := slices.Index(f, "allocs/prog")
		if i < 1 {
			continue
		}
		v, err := strconv.ParseFloat(f[i-1], 64)
		if err != nil {
			continue
		}
		j := slices.IndexFunc(rows, func(r allocsRow) bool { return r.name == variant })
		if j < 0 {
			rows = append(rows, allocsRow{name: variant, perN: make(map[int]float64)})
			j = len(rows) - 1
		}
		rows[j].perN[n] = v
		if !slices.Contains(sizes, n) {
			sizes = append(sizes, n)
		}
	}
	slices.Sort(sizes)
	return rows, sizes
}
