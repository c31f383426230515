package tui

// DefaultHistory is how many intervals a row's history keeps by default
// (--history): four minutes at the default 2s interval.
const DefaultHistory = 120

// DefaultMaxSeries caps the rows a History tracks: 10000 rows of 120
// intervals take about 10 MiB.
const DefaultMaxSeries = 10000

// Sample is one interval of a row: its CPU% (of one core) and runs per
// second.
type Sample struct {
	CPU  float32
	Runs float32
}

// series is one row's ring of samples; the sample of interval last is at
// ring[(next-1) mod len].
type series struct {
	ring []Sample
	// next is where the next sample goes; filled counts the valid samples.
	next, filled int
	// last is the interval of the newest sample.
	last uint64
}

// History keeps the last N intervals of every row it is told about, in a
// fixed budget: one ring of N samples per row, at most MaxSeries rows,
// and a row not seen for N intervals is dropped. Intervals in which a row
// was absent count as zero. It is not safe for concurrent use (the model
// owns it).
type History struct {
	size      int
	maxSeries int
	// tick is the current interval, counted from 1; 0 before the first.
	tick   uint64
	series map[string]*series
	// Refused counts rows not tracked because MaxSeries rows were.
	Refused uint64
}

// NewHistory returns a History of size intervals per row, tracking at most
// maxSeries rows. Values below 1 take the defaults.
func NewHistory(size, maxSeries int) *History {
	if size < 1 {
		size = DefaultHistory
	}
	if maxSeries < 1 {
		maxSeries = DefaultMaxSeries
	}
	return &History{size: size, maxSeries: maxSeries, series: make(map[string]*series)}
}

// Size is the number of intervals kept per row.
func (h *History) Size() int { return h.size }

// Len is the number of rows tracked.
func (h *History) Len() int { return len(h.series) }

// Tick is the current interval: the number of Begin calls.
func (h *History) Tick() uint64 { return h.tick }

// Begin starts a new interval and drops the rows not recorded in the last
// Size intervals.
func (h *History) Begin() {
	h.tick++
	for key, s := range h.series {
		if h.tick-s.last > uint64(h.size) {
			delete(h.series, key)
		}
	}
}

// Record sets key's sample of the current interval (a second call in the
// same interval replaces it). A new key beyond MaxSeries is not tracked.
func (h *History) Record(key string, v Sample) {
	if h.tick == 0 {
		h.tick = 1
	}
	s, ok := h.series[key]
	if !ok {
		if len(h.series) >= h.maxSeries {
			h.Refused++
			return
		}
		s = &series{ring: make([]Sample, h.size), last: h.tick - 1}
		h.series[key] = s
	}
	if s.last == h.tick && s.filled > 0 {
		s.ring[(s.next+h.size-1)%h.size] = v
		return
	}
	// Intervals the row missed are zeros, at most a whole ring of them.
	if s.filled > 0 {
		for gap := min(h.tick-s.last-1, uint64(h.size)); gap > 0; gap-- {
			s.push(Sample{})
		}
	}
	s.push(v)
	s.last = h.tick
}

func (s *series) push(v Sample) {
	s.ring[s.next] = v
	s.next = (s.next + 1) % len(s.ring)
	s.filled = min(s.filled+1, len(s.ring))
}

// Samples returns key's samples up to and including interval at, oldest
// first, one per interval, the last for interval at (zero when the row was
// absent then). Intervals before the row's first sample or more than Size
// back are left out. nil when key is not tracked.
func (h *History) Samples(key string, at uint64) []Sample {
	s, ok := h.series[key]
	if !ok || s.filled == 0 || at == 0 {
		return nil
	}
	first := s.last - uint64(s.filled) + 1
	if at < first {
		return nil
	}
	// Window: intervals (at-size, at] that the ring holds; after s.last the
	// row was absent (zeros).
	from := first
	if at >= uint64(h.size) && at-uint64(h.size)+1 > from {
		from = at - uint64(h.size) + 1
	}
	out := make([]Sample, 0, at-from+1)
	for i := from; i <= at; i++ {
		if i > s.last {
			out = append(out, Sample{})
			continue
		}
		back := int(s.last - i) // 0 is the newest
		out = append(out, s.ring[(s.next-1-back+2*h.size)%h.size])
	}
	return out
}
