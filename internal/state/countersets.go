package state

// CounterSets keeps cumulative counters of sets of members from ever going
// down while members come and go. A set is what a consumer shows as one
// counter (a Prometheus label set, an image rolled up across a fleet); its
// members are what feed it (gadget instances). When a member goes away, or
// its own cumulative value drops (a publisher restarted, an ID came back),
// what it had counted is kept in the set's retired sum instead of vanishing,
// so a consumer never sees a counter reset and a rate no spike.
//
// Each round of observations is Begin, Observe for every live member, End;
// then Retired gives what to add to each set's live sum. The zero value is
// ready to use. Only Runtime, Runcount and RecursionMisses are kept: the
// other fields of Totals are gauges or deltas.
type CounterSets struct {
	sets map[string]*counterSet
	// seen marks the sets observed in the current round.
	seen map[string]struct{}
}

// MaxIdleCounterSets bounds how many sets without a live member keep their
// retired sums; beyond it the longest idle are forgotten (a forgotten set
// that comes back starts from its members' own values, as after a restart
// of the consumer).
const MaxIdleCounterSets = 10000

type counterSet struct {
	// members are the last cumulative values of each live member.
	members map[string]Totals
	retired Totals
	// idle counts the rounds since the set last had a member.
	idle uint64
	// touched marks the members observed in the current round.
	touched map[string]struct{}
}

// Begin starts a round of observations.
func (c *CounterSets) Begin() {
	if c.sets == nil {
		c.sets = make(map[string]*counterSet)
		c.seen = make(map[string]struct{})
	}
	clear(c.seen)
}

// Observe records member's cumulative values t in set.
func (c *CounterSets) Observe(set, member string, t Totals) {
	s, ok := c.sets[set]
	if !ok {
		s = &counterSet{members: make(map[string]Totals), touched: make(map[string]struct{})}
		c.sets[set] = s
	}
	if _, ok := c.seen[set]; !ok {
		c.seen[set] = struct{}{}
		clear(s.touched)
	}
	if last, ok := s.members[member]; ok {
		// A member whose own value went down keeps the set flat.
		s.retired.Runtime += last.Runtime - min(last.Runtime, t.Runtime)
		s.retired.Runcount += last.Runcount - min(last.Runcount, t.Runcount)
		s.retired.RecursionMisses += last.RecursionMisses - min(last.RecursionMisses, t.RecursionMisses)
	}
	s.members[member] = Totals{Runtime: t.Runtime, Runcount: t.Runcount, RecursionMisses: t.RecursionMisses}
	s.touched[member] = struct{}{}
}

// End ends a round: members not observed in it retire with their last
// values, and idle sets beyond MaxIdleCounterSets are forgotten.
func (c *CounterSets) End() {
	idle := 0
	for key, s := range c.sets {
		if _, ok := c.seen[key]; !ok {
			clear(s.touched)
		}
		for member, last := range s.members {
			if _, ok := s.touched[member]; ok {
				continue
			}
			s.retired.Runtime += last.Runtime
			s.retired.Runcount += last.Runcount
			s.retired.RecursionMisses += last.RecursionMisses
			delete(s.members, member)
		}
		if len(s.members) > 0 {
			s.idle = 0
			continue
		}
		s.idle++
		idle++
	}
	for ; idle > MaxIdleCounterSets; idle-- {
		var oldest string
		var most uint64
		for key, s := range c.sets {
			if len(s.members) == 0 && s.idle >= most {
				oldest, most = key, s.idle
			}
		}
		delete(c.sets, oldest)
	}
}

// Retired returns what the members that left set had counted: add it to
// the set's live sum.
func (c *CounterSets) Retired(set string) Totals {
	if s, ok := c.sets[set]; ok {
		return s.retired
	}
	return Totals{}
}
