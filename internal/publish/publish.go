// Package publish sends what the tracker knows to its consumers: the table,
// NATS subjects and Prometheus metrics.
package publish

import "github.com/bpfstats/tracker/internal/state"

// Sink receives the snapshot of every sweep. Publish must not keep snap
// after it returns; it may be called from one goroutine at a time.
type Sink interface {
	Publish(snap *state.Snapshot) error
}

// EventSink receives program loads and releases as they are applied.
type EventSink interface {
	PublishEvent(ev *state.Event) error
}
