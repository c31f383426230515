package fleet

import (
	"time"
)

// BehindIntervals is how many of its intervals a node's newest message
// may be old before the node counts as behind: a current node's newest
// message is at most one interval old, plus the time it took to arrive.
const BehindIntervals = 1.5

// Consumer is how well the view keeps up, at a print.
type Consumer struct {
	// Lag is the largest age, by the consumer's clock, of a node's newest
	// message time (the publisher's clock; a time ahead counts as 0):
	// within the node's interval while the view keeps up.
	Lag time.Duration `json:"lag"`
	// LagIntervals is the largest such age in the node's own intervals.
	LagIntervals float64 `json:"lagIntervals"`
	// Behind counts the nodes whose newest message is more than
	// BehindIntervals of their intervals old.
	Behind int `json:"behind"`
	// Pending counts the messages received but not yet read.
	Pending int `json:"pending"`
	// Dropped counts the messages the NATS client dropped because the
	// view read them too slowly (slow consumer), since the start.
	Dropped uint64 `json:"dropped"`
	// Skipped counts the summaries replaced by a newer one of their node
	// before the view decoded them (it was behind, and caught up with the
	// newest), since the start.
	Skipped uint64 `json:"skipped"`
}

// Consumer returns the view's lag now and its subscriptions' pending and
// dropped messages.
func (f *Fleet) Consumer() Consumer {
	var c Consumer
	if f.consumer != nil {
		c.Pending, c.Dropped, c.Skipped = f.consumer()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	for _, n := range f.nodes {
		age := max(0, now.Sub(n.newest))
		iv := n.interval
		if iv <= 0 {
			iv = f.defaultInterval
		}
		c.Lag = max(c.Lag, age)
		ratio := float64(age) / float64(iv)
		c.LagIntervals = max(c.LagIntervals, ratio)
		if ratio > BehindIntervals {
			c.Behind++
		}
	}
	return c
}
