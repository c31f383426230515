package loader

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// scanCPUs keeps one live event per online CPU. Read calls it at most once
// per scan period (default a second).
//
// A CPU that went offline keeps its ring until this scan reads it dry, then
// the ring is closed: nothing runs on an offline CPU, so nothing is missed
// while it is off. A CPU that came online gets a new event. So does an
// online CPU whose event stopped: the kernel switches a CPU's events off
// when the CPU goes offline and does not switch them on again, and a
// suspend/resume does that to every CPU but the first while this process
// is frozen, so the online list alone never shows it. Such an event's
// enabled time stands still; comparing it between two scans finds it.
//
// Every CPU attached after open adds one to the loss count: loads on it
// between its coming online and now were not seen. A scan costs one read(2)
// per CPU (the kernel asks the CPU for the event's times).
func (s *perfSource) scanCPUs() error {
	online, err := s.cfg.online()
	if err != nil {
		return fmt.Errorf("perf source: %w", err)
	}
	watched := make([]int, 0, len(s.rings))
	for _, ring := range s.rings {
		watched = append(watched, ring.cpu)
	}
	added, gone := diffCPUs(watched, online)

	var errs []error
	s.rings = slices.DeleteFunc(s.rings, func(ring *perfRing) bool {
		if !slices.Contains(gone, ring.cpu) {
			if s.ringAlive(ring) {
				return false
			}
			added = append(added, ring.cpu)
		}
		errs = append(errs, s.retire(ring))
		return true
	})
	for _, cpu := range added {
		ring, err := s.openRing(cpu)
		if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
			continue // offline again: the next scan sees it
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.rings = append(s.rings, ring)
		s.lost++
	}
	if len(s.events) < len(s.rings)+1 {
		s.events = make([]unix.EpollEvent, len(s.rings)+1)
	}
	return errors.Join(errs...)
}

// ringAlive reports whether the ring's event ran since the last scan. It
// also counts records the kernel refused that no read has reported yet.
func (s *perfSource) ringAlive(ring *perfRing) bool {
	enabled, lost, err := ring.readCounters()
	if err != nil || enabled == ring.enabled {
		return false
	}
	ring.enabled = enabled
	if ring.lostCounter && lost > ring.lost {
		s.lost += lost - ring.lost
		ring.lost = lost
	}
	return true
}

// retire reads a ring dry into the pending records and closes it.
func (s *perfSource) retire(ring *perfRing) error {
	var lost uint64
	s.records, lost = ring.read(s.records)
	s.lost += lost
	return ring.close()
}

// diffCPUs returns the CPUs of online that are not watched and the watched
// CPUs that are not online.
func diffCPUs(watched, online []int) (added, gone []int) {
	for _, cpu := range online {
		if !slices.Contains(watched, cpu) {
			added = append(added, cpu)
		}
	}
	for _, cpu := range watched {
		if !slices.Contains(online, cpu) {
			gone = append(gone, cpu)
		}
	}
	return added, gone
}

// onlineCPUs parses /sys/devices/system/cpu/online ("0-3,5").
func onlineCPUs() ([]int, error) {
	raw, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return nil, fmt.Errorf("reading online CPUs: %w", err)
	}
	cpus, err := parseCPUList(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("parsing online CPUs %q: %w", raw, err)
	}
	return cpus, nil
}

// parseCPUList parses the kernel's CPU list format ("0-3,5").
func parseCPUList(list string) ([]int, error) {
	var cpus []int
	for part := range strings.SplitSeq(list, ",") {
		first, last, isRange := strings.Cut(part, "-")
		lo, err := strconv.Atoi(first)
		if err != nil {
			return nil, err
		}
		hi := lo
		if isRange {
			if hi, err = strconv.Atoi(last); err != nil {
				return nil, err
			}
		}
		if lo < 0 || hi < lo {
			return nil, fmt.Errorf("bad range %q", part)
		}
		for cpu := lo; cpu <= hi; cpu++ {
			cpus = append(cpus, cpu)
		}
	}
	if len(cpus) == 0 {
		return nil, errors.New("no CPUs")
	}
	return cpus, nil
}
