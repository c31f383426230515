package main

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// helperGroup is the helper processes that hold one size's programs: as
// few as the fd limit allows (one up to several thousand programs).
type helperGroup []*helper

// programsPerHelper is how many programs, with their 1.5 maps on average,
// one helper can hold under the hard RLIMIT_NOFILE (which, without
// CAP_SYS_RESOURCE, it cannot raise).
func programsPerHelper() (int, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("reading RLIMIT_NOFILE: %w", err)
	}
	if lim.Max > 1<<24 {
		return 1 << 22, nil
	}
	return max(1, (int(lim.Max)-512)*2/5), nil
}

// startHelpers starts the helpers of n programs, loading in parallel, and
// waits until all are loaded.
func startHelpers(n int) (helperGroup, error) {
	per, err := programsPerHelper()
	if err != nil {
		return nil, err
	}
	count := (n + per - 1) / per
	var g helperGroup
	for i := range count {
		first, last := i*n/count, (i+1)*n/count
		h, err := startHelper(last-first, first)
		if err != nil {
			g.stop()
			return nil, err
		}
		g = append(g, h)
	}
	errs := make([]error, len(g))
	var wg sync.WaitGroup
	for i, h := range g {
		wg.Go(func() { _, errs[i] = h.answer("ready", 5*time.Minute) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			g.stop()
			return nil, fmt.Errorf("helpers of %d programs: %w", n, err)
		}
	}
	return g, nil
}

// pids returns the helpers' pids.
func (g helperGroup) pids() []int {
	pids := make([]int, len(g))
	for i, h := range g {
		pids[i] = h.pid
	}
	return pids
}

// do sends command to every helper and returns their answers' words.
func (g helperGroup) do(command, want string) ([]string, error) {
	var words []string
	for _, h := range g {
		w, err := h.do(command, want)
		if err != nil {
			return nil, err
		}
		words = append(words, w...)
	}
	return words, nil
}

func (g helperGroup) stop() {
	for _, h := range g {
		h.stop()
	}
}
