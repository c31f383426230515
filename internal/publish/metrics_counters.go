package publish

// seriesCounters keeps runcount_total and runtime_total of the seed's
// gadget-level series from ever going down. A series is a label set
// (gadgetImage, gadgetName, progName=""), and several gadget instances
// can share it over time (two processes labelled alike, one restarting
// after the other): when one instance goes away, or its own totals drop,
// what it had counted is kept in the series' retired sum instead of
// vanishing, so Prometheus never sees a counter reset and rate() no spike.
//
// The inventory already keeps each gadget's totals monotonic over the
// programs it loses (state.Totals of a gadget row include its released
// programs); this is the same rule one level up, across instances.
type seriesCounters struct {
	series map[string]*seriesHistory
	// seen marks the series of the snapshot being published.
	seen map[string]struct{}
}

// maxIdleSeries bounds how many label sets without a live gadget keep
// their retired sums; beyond it the oldest are forgotten (a forgotten
// series that comes back starts from its instance's own totals, which
// Prometheus reads as a counter reset of a series that was absent).
const maxIdleSeries = 10000

// seriesHistory is what one label set has counted.
type seriesHistory struct {
	// members are the last counters of each live gadget ID in the set.
	members map[string]counterPair
	// retired sums what members that left (or whose totals dropped) had
	// counted.
	retired counterPair
	// idleSince counts the publishes since the set last had a member.
	idleSince uint64
	// touched marks members seen in the snapshot being published.
	touched map[string]struct{}
}

type counterPair struct{ runcount, runtime float64 }

func (c *seriesCounters) begin() {
	if c.series == nil {
		c.series = make(map[string]*seriesHistory)
		c.seen = make(map[string]struct{})
	}
	clear(c.seen)
}

// observe records gadget id's counters in the set key.
func (c *seriesCounters) observe(key, id string, s *rowSeries) {
	h, ok := c.series[key]
	if !ok {
		h = &seriesHistory{members: make(map[string]counterPair), touched: make(map[string]struct{})}
		c.series[key] = h
	}
	if _, ok := c.seen[key]; !ok {
		c.seen[key] = struct{}{}
		clear(h.touched)
	}
	now := counterPair{runcount: s.runcount, runtime: s.runtime}
	if last, ok := h.members[id]; ok {
		// A member whose own totals went down (it should not happen: the
		// inventory keeps them monotonic) keeps the series flat.
		h.retired.runcount += max(last.runcount-now.runcount, 0)
		h.retired.runtime += max(last.runtime-now.runtime, 0)
	}
	h.members[id] = now
	h.touched[id] = struct{}{}
}

// end retires the members that left and forgets idle sets beyond the bound.
func (c *seriesCounters) end() {
	idle := 0
	for key, h := range c.series {
		if _, ok := c.seen[key]; !ok {
			clear(h.touched)
		}
		for id, last := range h.members {
			if _, ok := h.touched[id]; ok {
				continue
			}
			h.retired.runcount += last.runcount
			h.retired.runtime += last.runtime
			delete(h.members, id)
		}
		if len(h.members) == 0 {
			h.idleSince++
			idle++
		} else {
			h.idleSince = 0
		}
	}
	for idle > maxIdleSeries {
		var oldest string
		var most uint64
		for key, h := range c.series {
			if len(h.members) == 0 && h.idleSince >= most {
				oldest, most = key, h.idleSince
			}
		}
		delete(c.series, oldest)
		idle--
	}
}

// apply adds the set's retired sums to the series about to be exported.
func (c *seriesCounters) apply(key string, s *rowSeries) {
	if h, ok := c.series[key]; ok {
		s.runcount += h.retired.runcount
		s.runtime += h.retired.runtime
	}
}
