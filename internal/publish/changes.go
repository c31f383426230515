package publish

import (
	"encoding/binary"
	"encoding/json"
	"hash/fnv"
	"strings"

	"github.com/bpfstats/tracker/internal/state"
)

// DefaultFullEvery is NATSOptions.FullEvery's default: with compact rows a
// gadget's full rows go out at least every 30 intervals, and an unchanged
// key-value entry is rewritten as often.
const DefaultFullEvery = 30

// tokenState is what the sink remembers of one subject token (a gadget,
// _unowned, _summary) between intervals, to send and write what changed.
type tokenState struct {
	// slow is the fingerprint of the fields that rarely change, as last
	// sent in a full message.
	slow uint64
	// seen is the last seq the token was published in.
	seen uint64
	// kvParts are the parts of the token's key-value entry written (or
	// being written); kvDirty marks an entry whose last write was skipped
	// or failed, rewritten the next interval.
	kvParts int
	kvDirty bool
	// kvOK is whether every write of the entry this interval was sent.
	kvOK bool
}

// tracking tells whether the sink follows what changed: for compact rows
// or for key-value writes.
func (s *NATSSink) tracking() bool { return s.opts.CompactRows || s.opts.KV }

// plan decides whether the token's message of this interval carries full
// rows and whether it is written to the key-value bucket: when the token
// is new, its slow fields changed, after a reconnect (resync), on the
// token's turn of every FullEvery intervals, or (for the bucket) when its
// last write did not make it. Without CompactRows every message is full.
func (s *NATSSink) plan(tok string, slow uint64, resync bool) (full, kv bool) {
	st, ok := s.tokens[tok]
	if !ok {
		st = &tokenState{}
		s.tokens[tok] = st
	}
	isNew := !ok || st.seen+1 != s.seq
	st.seen = s.seq
	changed := isNew || resync || st.slow != slow || s.due(tok)
	kv = s.kv != nil && (changed || st.kvDirty)
	full = !s.opts.CompactRows || changed || kv
	if full {
		st.slow = slow
	}
	return full, kv
}

// due tells whether this interval is the token's turn to be refreshed:
// once every FullEvery intervals, at an offset hashed from node and token
// so that the refreshes of a node's gadgets, and of a fleet, spread out.
func (s *NATSSink) due(tok string) bool {
	n := uint64(s.opts.FullEvery)
	h := fnv.New64a()
	h.Write([]byte(s.node))
	h.Write([]byte{'.'})
	h.Write([]byte(tok))
	return (s.seq+h.Sum64())%n == 0
}

// slowFingerprint hashes what of a gadget or _unowned message rarely
// changes: the identity, the owner and every program row without its
// numbers (name, tag, type, maps, loader, holders, labels, placement).
// A row with a SlowVersion is hashed as that version and the columns the
// version does not cover (Attach and the pod name): encoding every row
// each interval to hash it was most of what compact rows cost at
// thousands of programs. A row without one is hashed as its encoding.
func slowFingerprint(id GadgetIdentity, owner state.ProcessRef, rows messageRows) uint64 {
	h := fnv.New64a()
	enc := json.NewEncoder(h)
	// Encoding these types does not fail, and a hash.Hash does not either.
	_ = enc.Encode(id)
	_ = enc.Encode(owner)
	var b []byte
	for _, k := range rows.idx {
		r := rows.snap.Programs[k]
		if v := rows.snap.SlowVersion(int(k)); v != 0 {
			b = binary.LittleEndian.AppendUint64(b[:0], v)
			b = appendHashed(b, r.PodName)
			b = appendHashed(b, r.PodNamespace)
			b = append(b, 0) // Attach null, not []
			if r.Attach != nil {
				b[len(b)-1] = 1
			}
			for _, a := range r.Attach {
				b = appendHashed(b, a)
			}
			h.Write(b)
			continue
		}
		c := *r
		c.Totals, c.Cost = state.Totals{}, state.Cost{}
		_ = enc.Encode(&c)
	}
	return h.Sum64()
}

// appendHashed appends s to b as its length and bytes, so that
// consecutive strings cannot run into each other.
func appendHashed(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

// addProgramMessage encodes a gadget or _unowned message (msg, with
// header h, Rows field rowsMode and program rows rows) with full or
// compact rows as plan decides, marking its parts for the bucket.
func (s *NATSSink) addProgramMessage(e *intervalEncoder, tok string, h *Header, msg any, rowsMode *string,
	id GadgetIdentity, owner state.ProcessRef, rows messageRows, resync bool) error {
	full, kv := true, false
	if s.tracking() {
		full, kv = s.plan(tok, slowFingerprint(id, owner, rows), resync)
	}
	if s.opts.CompactRows {
		*rowsMode = RowsFull
		if !full {
			*rowsMode = RowsCompact
		}
	}
	first := len(e.msgs)
	err := e.addArray(tok, h, msg, "programs", len(rows.idx), s.rowEncoder(e, rows, !full))
	for i := first; i < len(e.msgs); i++ {
		e.msgs[i].kv = kv
	}
	return err
}

// addSummary encodes the _summary message closing the interval: node's
// fields with the gadgets' identities and totals, in parts when they do
// not fit one message. It is written to the bucket every interval.
func (s *NATSSink) addSummary(e *intervalEncoder, node NodeMessage, gadgets []GadgetSummary, unowned MessageTotals) error {
	sum := SummaryMessage{NodeMessage: node, Gadgets: []GadgetSummary{}, Unowned: unowned}
	sum.Type = TypeSummary
	if s.tracking() {
		// For its key-value parts; the summary is written every interval.
		s.plan(TokenSummary, 0, false)
	}
	kv := s.kv != nil
	first := len(e.msgs)
	err := e.addArray(TokenSummary, &sum.Header, &sum, "gadgets", len(gadgets), func(enc *json.Encoder, i int) error {
		return enc.Encode(&gadgets[i])
	})
	for i := first; i < len(e.msgs); i++ {
		e.msgs[i].kv = kv
	}
	return err
}

// tokenOfKey is the subject token of one of this node's key-value keys
// (<node>.<token>[.p<N>]), "" for another node's.
func (s *NATSSink) tokenOfKey(key string) string {
	rest, ok := strings.CutPrefix(key, s.node+".")
	if !ok {
		return ""
	}
	tok, _, _ := strings.Cut(rest, ".")
	return tok
}
