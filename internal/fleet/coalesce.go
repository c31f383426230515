package fleet

import (
	"context"
	"sync"
)

// coalescer hands a summary view the newest message of every subject:
// the NATS callback only files the message, replacing one of the same
// subject not yet decoded, and one goroutine decodes what is filed. A
// view that falls behind (a starved CPU, a burst) then decodes each
// node's newest summary once instead of every summary queued, so it
// catches up rather than falling further behind, and what it holds is
// bounded by its subjects, not by the client's pending limits. Only for
// messages that each replace the previous one of their subject: the
// summaries (a summary in parts is shown by its newest part already).
type coalescer struct {
	ingest func(subject string, data []byte) error
	onErr  func(subject string, err error)

	mu      sync.Mutex
	filed   map[string][]byte
	spare   map[string][]byte
	wake    chan struct{}
	skipped uint64
}

// maxFiled bounds the subjects filed at once; beyond it a message is
// decoded in the callback, as without a coalescer.
const maxFiled = MaxNodes

func newCoalescer(ingest func(subject string, data []byte) error, onErr func(subject string, err error)) *coalescer {
	return &coalescer{ingest: ingest, onErr: onErr, filed: make(map[string][]byte), spare: make(map[string][]byte),
		wake: make(chan struct{}, 1)}
}

// put files data (the client's own copy) as subject's newest message.
func (c *coalescer) put(subject string, data []byte) error {
	c.mu.Lock()
	_, replaced := c.filed[subject]
	if !replaced && len(c.filed) >= maxFiled {
		c.mu.Unlock()
		return c.ingest(subject, data)
	}
	if replaced {
		c.skipped++
	}
	c.filed[subject] = data
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

// run decodes what is filed until ctx ends.
func (c *coalescer) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		}
		c.mu.Lock()
		batch := c.filed
		c.filed, c.spare = c.spare, nil
		c.mu.Unlock()
		for subject, data := range batch {
			if err := c.ingest(subject, data); err != nil {
				c.onErr(subject, err)
			}
		}
		clear(batch)
		c.mu.Lock()
		c.spare = batch
		c.mu.Unlock()
	}
}

// pending returns the messages filed and not yet decoded, and those
// replaced by a newer one of their subject before being decoded.
func (c *coalescer) pending() (filed int, skipped uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.filed), c.skipped
}
