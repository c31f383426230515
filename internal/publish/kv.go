package publish

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// kvWriter writes to the key-value bucket with JetStream's asynchronous
// publish: a put is a message on $KV.<bucket>.<key>, a delete one with
// the KV-Operation: DEL header (what the jetstream package's Put and
// Delete send), without waiting for the acknowledgements, at most
// KVMaxPending in flight.
type kvWriter struct {
	// conn is the connection js was opened on.
	conn *sinkConn
	js   jetstream.JetStream
	// prefix is $KV.<bucket>.
	prefix string
}

// openKV opens (creating it if needed) the bucket on c unless it is open
// there already, and tells whether it opened it now: every entry is then
// written again. The caller holds s.mu.
func (s *NATSSink) openKV(c *sinkConn) (bool, error) {
	if s.kv != nil && s.kv.conn == c {
		return false, nil
	}
	s.kv = nil
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.KVTimeout)
	defer cancel()
	w, err := s.newKVWriter(ctx, c)
	if err != nil {
		s.pubErrors.Add(1)
		if !s.kvFailing {
			s.kvFailing = true
			s.log.Warn().Err(err).Str("bucket", s.opts.KVBucket).Msg("NATS key-value bucket unavailable, retrying every interval")
		}
		return false, err
	}
	s.kv = w
	s.kvFailing = false
	s.log.Info().Str("bucket", s.opts.KVBucket).Dur("ttl", s.opts.KVTTL).Msg("NATS key-value bucket ready")
	return true, nil
}

func (s *NATSSink) newKVWriter(ctx context.Context, c *sinkConn) (*kvWriter, error) {
	js, err := jetstream.New(c.nc,
		jetstream.WithPublishAsyncMaxPending(s.opts.KVMaxPending),
		jetstream.WithPublishAsyncTimeout(s.opts.KVTimeout),
		jetstream.WithPublishAsyncErrHandler(s.kvWriteFailed))
	if err != nil {
		return nil, fmt.Errorf("opening JetStream: %w", err)
	}
	_, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      s.opts.KVBucket,
		Description: "bpfstats: latest full message per gadget, latest summary per node",
		History:     1,
		TTL:         s.opts.KVTTL,
		Storage:     jetstream.MemoryStorage,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		// Another tracker created it with another TTL: share it.
		_, err = js.KeyValue(ctx, s.opts.KVBucket)
	}
	if err != nil {
		return nil, fmt.Errorf("creating key-value bucket %s: %w", s.opts.KVBucket, err)
	}
	return &kvWriter{conn: c, js: js, prefix: "$KV." + s.opts.KVBucket + "."}, nil
}

// kvWriteFailed counts a write the server refused or did not acknowledge
// in time, and marks its entry to be written again. It runs on the
// connection's goroutine.
func (s *NATSSink) kvWriteFailed(_ jetstream.JetStream, m *nats.Msg, err error) {
	s.kvErrors.Add(1)
	s.pubErrors.Add(1)
	key := strings.TrimPrefix(m.Subject, "$KV."+s.opts.KVBucket+".")
	s.kvFailedMu.Lock()
	s.kvFailed[key] = struct{}{}
	s.kvFailedMu.Unlock()
	// At most one warning a minute: a failing bucket fails every write.
	now := time.Now().UnixNano()
	if last := s.kvWarned.Load(); now-last > int64(time.Minute) && s.kvWarned.CompareAndSwap(last, now) {
		s.log.Warn().Err(err).Str("key", key).Uint64("failed", s.kvErrors.Load()).
			Msg("NATS key-value write failed, writing the entry again next interval")
	}
}

// takeFailedKeys marks the entries whose writes failed since the last
// interval to be written again. The caller holds s.mu.
func (s *NATSSink) takeFailedKeys() {
	s.kvFailedMu.Lock()
	failed := s.kvFailed
	if len(failed) > 0 {
		s.kvFailed = make(map[string]struct{})
	}
	s.kvFailedMu.Unlock()
	for key := range failed {
		if st, ok := s.tokens[s.tokenOfKey(key)]; ok {
			st.kvDirty = true
		}
	}
}

// writeKV sends the key-value writes of the interval's messages marked
// for the bucket, and deletes the parts a token no longer has. A write
// that cannot be sent (too many in flight) is skipped, counted, and its
// entry written again next interval. The caller holds s.mu.
func (s *NATSSink) writeKV(msgs []outMsg) {
	for _, m := range msgs {
		if !m.kv {
			continue
		}
		st := s.tokens[m.tok]
		if m.part == 1 {
			st.kvOK = true
		}
		st.kvOK = s.kvSend(kvKey(s.node, m.tok, m.part), m.data) && st.kvOK
		if m.part < m.parts {
			continue
		}
		for p := m.parts + 1; p <= st.kvParts; p++ {
			st.kvOK = s.kvSend(kvKey(s.node, m.tok, p), nil) && st.kvOK
		}
		st.kvDirty = !st.kvOK
		if st.kvOK {
			st.kvParts = m.parts
		} else {
			st.kvParts = max(st.kvParts, m.parts)
		}
	}
}

// forgetGone forgets the tokens not published this interval (gadgets that
// ended), deleting their key-value entries; a token whose deletes could
// not all be sent is kept until they are. The caller holds s.mu.
func (s *NATSSink) forgetGone() {
	for tok, st := range s.tokens {
		if st.seen == s.seq {
			continue
		}
		ok := true
		if s.kv != nil {
			for p := 1; p <= st.kvParts; p++ {
				ok = s.kvSend(kvKey(s.node, tok, p), nil) && ok
			}
		}
		if ok {
			delete(s.tokens, tok)
		}
	}
}

// kvSend sends one put of data to key (a delete when data is nil) unless
// KVMaxPending writes are in flight, and tells whether it did. data is
// copied: a write may be sent again after its acknowledgement timed out.
func (s *NATSSink) kvSend(key string, data []byte) bool {
	w := s.kv
	if w.js.PublishAsyncPending() >= s.opts.KVMaxPending {
		s.kvSkipped.Add(1)
		return false
	}
	m := &nats.Msg{Subject: w.prefix + key}
	if data == nil {
		m.Header = nats.Header{"KV-Operation": []string{"DEL"}}
	} else {
		m.Data = bytes.Clone(data)
	}
	if _, err := w.js.PublishMsgAsync(m, jetstream.WithStallWait(time.Millisecond)); err != nil {
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			s.kvSkipped.Add(1)
		} else {
			s.kvErrors.Add(1)
			s.pubErrors.Add(1)
		}
		return false
	}
	s.kvWrites.Add(1)
	return true
}

// kvKey is the key-value key of part of the message on
// <prefix>.<node>.<tok>: <node>.<tok>, with ".p<part>" appended for part 2
// on. Node and subject tokens hold only [A-Za-z0-9_-], which keys allow.
func kvKey(node, tok string, part int) string {
	if part <= 1 {
		return node + "." + tok
	}
	return node + "." + tok + ".p" + strconv.Itoa(part)
}
