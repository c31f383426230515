package state

import "github.com/bpfstats/tracker/internal/loader"

// apply updates the inventory with one event and returns the first event
// it queued for consumers (taking them off the queue), or nil when the
// event changed nothing (a duplicate load, the release of an unknown
// program). EventLost is counted only: the caller must call Resync (Run
// does). Run uses applyEvent and flush; the tests use this.
func (t *Tracker) apply(ev loader.ProgramEvent) *Event {
	n := len(t.outbox)
	t.applyEvent(ev)
	var first *Event
	if len(t.outbox) > n {
		first = t.outbox[n]
	}
	clear(t.outbox[n:])
	t.outbox = t.outbox[:n]
	return first
}
