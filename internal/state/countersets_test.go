package state

import "testing"

func TestCounterSets(t *testing.T) {
	var c CounterSets
	round := func(members map[string]uint64) Totals {
		c.Begin()
		var live uint64
		for m, v := range members {
			c.Observe("set", m, Totals{Runtime: v, Runcount: v / 10})
			live += v
		}
		c.End()
		r := c.Retired("set")
		return Totals{Runtime: r.Runtime + live, Runcount: r.Runcount}
	}
	steps := []struct {
		members map[string]uint64
		want    uint64
	}{
		{map[string]uint64{"a": 100, "b": 50}, 150},
		{map[string]uint64{"a": 120}, 170},          // b left with 50
		{map[string]uint64{"a": 90}, 170},           // a dropped by 30: flat
		{map[string]uint64{"a": 100, "c": 5}, 185},  // both grow from there
		{map[string]uint64{}, 0},                    // nobody: only retired
		{map[string]uint64{"d": 1}, 186},            // continues
		{map[string]uint64{"d": 1, "e": 0}, 186},    // a zero member changes nothing
		{map[string]uint64{"d": 11, "e": 10}, 206},  // both grow
		{map[string]uint64{"d": 11, "e": 10}, 206},  // idle round
		{map[string]uint64{"d": 111, "e": 10}, 306}, // one grows
	}
	var last uint64
	for i, s := range steps {
		got := round(s.members)
		if len(s.members) == 0 {
			if c.Retired("set").Runtime != last {
				t.Fatalf("step %d: retired %d, want everything so far (%d)", i, c.Retired("set").Runtime, last)
			}
			continue
		}
		if got.Runtime != s.want {
			t.Fatalf("step %d: %d, want %d", i, got.Runtime, s.want)
		}
		if got.Runtime < last {
			t.Fatalf("step %d: went down from %d to %d", i, last, got.Runtime)
		}
		last = got.Runtime
	}
}

func TestCounterSetsForgetsLongestIdle(t *testing.T) {
	var c CounterSets
	c.Begin()
	for i := range MaxIdleCounterSets + 1 {
		c.Observe(string(rune('A'+i%26))+string(rune(i)), "m", Totals{Runtime: 1})
	}
	c.End()
	c.Begin()
	c.End() // every set idle now: one too many
	if n := len(c.sets); n != MaxIdleCounterSets {
		t.Fatalf("%d idle sets kept, want %d", n, MaxIdleCounterSets)
	}
}
