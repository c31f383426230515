package main

import (
	"fmt"
	"runtime"
	"slices"
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
