package publish

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// putKV writes the interval's messages to the key-value bucket through c
// and deletes the keys written in the previous interval that were not
// written now: those of gadgets that are gone and of parts no longer
// needed. The caller holds s.mu.
func (s *NATSSink) putKV(c *sinkConn, msgs []outMsg) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.KVTimeout)
	defer cancel()
	if s.kv == nil || s.kvConn != c {
		kv, err := s.openKV(ctx, c)
		if err != nil {
			s.pubErrors.Add(1)
			if !s.kvFailing {
				s.kvFailing = true
				s.log.Warn().Err(err).Str("bucket", s.opts.KVBucket).Msg("NATS key-value bucket unavailable, retrying every interval")
			}
			return err
		}
		s.kv, s.kvConn = kv, c
		s.kvFailing = false
		s.log.Info().Str("bucket", s.opts.KVBucket).Dur("ttl", s.opts.KVTTL).Msg("NATS key-value bucket ready")
	}
	var errs []error
	current := make(map[string]struct{}, len(msgs))
	for _, m := range msgs {
		current[m.key] = struct{}{}
		if _, err := s.kv.Put(ctx, m.key, m.data); err != nil {
			s.pubErrors.Add(1)
			errs = append(errs, fmt.Errorf("writing key %s to bucket %s: %w", m.key, s.opts.KVBucket, err))
		}
	}
	for key := range s.kvKeys {
		if _, ok := current[key]; ok {
			continue
		}
		if err := s.kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			s.pubErrors.Add(1)
			errs = append(errs, fmt.Errorf("deleting key %s from bucket %s: %w", key, s.opts.KVBucket, err))
		}
	}
	s.kvKeys = current
	return errors.Join(errs...)
}

func (s *NATSSink) openKV(ctx context.Context, c *sinkConn) (jetstream.KeyValue, error) {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil, fmt.Errorf("opening JetStream: %w", err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      s.opts.KVBucket,
		Description: "bpfstats: latest message per node and gadget",
		History:     1,
		TTL:         s.opts.KVTTL,
		Storage:     jetstream.MemoryStorage,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		// Another tracker created it with another TTL: share it.
		kv, err = js.KeyValue(ctx, s.opts.KVBucket)
	}
	if err != nil {
		return nil, fmt.Errorf("creating key-value bucket %s: %w", s.opts.KVBucket, err)
	}
	return kv, nil
}

// kvKey is the key-value key of part of the message on
// <prefix>.<node>.<tok>: <node>.<tok>, with ".p<part>" appended for part 2
// on. Node and subject tokens hold only [A-Za-z0-9_-], which keys allow.
func kvKey(node, tok string, part int) string {
	return node + "." + tok + partKey(part)
}
