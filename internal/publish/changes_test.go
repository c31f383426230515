package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testutil"
)

// gadgetIDs are n plain gadget IDs.
func gadgetIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("g%04d", i)
	}
	return ids
}

// grow makes every counter of snap grow as over one more interval.
func grow(snap *state.Snapshot) {
	snap.Time = snap.Time.Add(time.Second)
	for i := range snap.Programs {
		snap.Programs[i].Runtime += 100
		snap.Programs[i].Runcount++
	}
	for i := range snap.Gadgets {
		snap.Gadgets[i].Runtime += 100 * uint64(snap.Gadgets[i].ProgramCount)
		snap.Gadgets[i].Runcount += uint64(snap.Gadgets[i].ProgramCount)
	}
}

// messagesOf returns the encoded messages of tok among msgs, by part.
func messagesOf(msgs []outMsg, tok string) [][]byte {
	var out [][]byte
	for _, m := range msgs {
		if m.tok == tok {
			out = append(out, m.data)
		}
	}
	return out
}

// The summary of 20 gadgets of 5 programs is a fraction of the interval's
// bytes, and 2000 gadgets against a small max_payload come in parts that
// each fit, every gadget once, in order, each part with the node's fields.
func TestSummaryParts(t *testing.T) {
	sink := offlineSink("node_a", 1, "i")
	snap := bigSnapshot("node_a", gadgetIDs(20), 5, 30, testTime)
	msgs, err := sink.encodeInterval(snap, defaultMaxPayload, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, m := range msgs {
		total += len(m.data)
	}
	sum := messagesOf(msgs, TokenSummary)
	if len(sum) != 1 || msgs[len(msgs)-1].tok != TokenSummary || msgs[len(msgs)-2].tok != TokenNode {
		t.Fatalf("summary is not the one last message: %d parts", len(sum))
	}
	t.Logf("20 gadgets x 5 programs, 30 unowned: %d messages, %d bytes; summary %d bytes", len(msgs), total, len(sum[0]))
	if len(sum[0])*5 > total {
		t.Errorf("summary of %d bytes is over a fifth of the interval's %d", len(sum[0]), total)
	}

	sink = offlineSink("node_a", 1, "i")
	ids := gadgetIDs(2000)
	snap = bigSnapshot("node_a", ids, 1, 3, testTime)
	const limit = 16 << 10
	msgs, err = sink.encodeInterval(snap, limit, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	parts := messagesOf(msgs, TokenSummary)
	for i, data := range parts {
		if len(data) > limit {
			t.Errorf("summary part %d: %d bytes", i+1, len(data))
		}
		s := decode[SummaryMessage](t, &nats.Msg{Subject: "summary", Data: data})
		if s.Part != i+1 || s.Parts != len(parts) || s.Type != TypeSummary || s.Counts.Gadgets != 2000 ||
			s.Unowned.ProgramCount != 3 || s.Seq != 1 {
			t.Fatalf("summary part %d of %d: %+v", i+1, len(parts), s.NodeMessage)
		}
		for _, g := range s.Gadgets {
			got = append(got, g.Gadget.ID)
			if g.Totals.ProgramCount != 1 || g.OwnerPID == 0 {
				t.Errorf("gadget %+v", g)
			}
		}
	}
	if len(parts) < 2 || !slices.Equal(got, ids) {
		t.Errorf("%d parts with %d gadgets, want all %d in order", len(parts), len(got), len(ids))
	}
}

// rowsOf decodes a gadget or _unowned message's rows mode and program
// rows, refusing fields a compact row does not have when compact.
func rowsOf(t *testing.T, data []byte) (string, []map[string]any) {
	t.Helper()
	var m struct {
		Rows     string           `json:"rows"`
		Programs []map[string]any `json:"programs"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	if m.Rows == RowsCompact {
		for _, p := range m.Programs {
			b, _ := json.Marshal(p)
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			var r CompactRow
			if err := dec.Decode(&r); err != nil || r.ProgID == 0 || r.Runtime == 0 {
				t.Fatalf("compact row %s: %v", b, err)
			}
		}
	}
	return m.Rows, m.Programs
}

// With CompactRows a gadget's full rows go out when it is new, when a
// slow field or its program set changes, on a resync and on its turn of
// every FullEvery intervals; compact rows the other intervals.
func TestCompactRows(t *testing.T) {
	sink := offlineSink("node_a", 0, "i")
	sink.opts.CompactRows = true
	sink.opts.FullEvery = 1000
	snap := bigSnapshot("node_a", []string{"g1", "g2"}, 3, 2, testTime)
	interval := func(resync bool) map[string]string {
		t.Helper()
		sink.seq++
		for _, tok := range []string{"g1", "g2", TokenUnowned} {
			if sink.due(tok) {
				t.Fatalf("seq %d is %s's turn: pick another node name", sink.seq, tok)
			}
		}
		msgs, err := sink.encodeInterval(snap, defaultMaxPayload, resync, nil)
		if err != nil {
			t.Fatal(err)
		}
		modes := map[string]string{}
		for _, tok := range []string{"g1", "g2", TokenUnowned} {
			data := messagesOf(msgs, tok)
			mode, rows := rowsOf(t, data[0])
			modes[tok] = mode
			if mode == RowsFull && rows[0]["progName"] == nil {
				t.Errorf("seq %d: full %s row %v", sink.seq, tok, rows[0])
			}
		}
		grow(snap)
		return modes
	}
	want := func(got map[string]string, g1, g2, unowned string) {
		t.Helper()
		if w := map[string]string{"g1": g1, "g2": g2, TokenUnowned: unowned}; !maps.Equal(got, w) {
			t.Errorf("seq %d: rows %v, want %v", sink.seq, got, w)
		}
	}
	want(interval(false), RowsFull, RowsFull, RowsFull)
	want(interval(false), RowsCompact, RowsCompact, RowsCompact)
	snap.Programs[1].ProgName = "renamed" // g1's second program
	want(interval(false), RowsFull, RowsCompact, RowsCompact)
	want(interval(false), RowsCompact, RowsCompact, RowsCompact)
	snap.Programs = slices.Delete(snap.Programs, 3, 4) // g2's first program ends
	want(interval(false), RowsCompact, RowsFull, RowsCompact)
	snap.Programs[len(snap.Programs)-1].PIDs = []uint32{7} // an unowned program gets a holder
	want(interval(false), RowsCompact, RowsCompact, RowsFull)
	want(interval(true), RowsFull, RowsFull, RowsFull)

	// Every FullEvery intervals, each token on its own turn.
	sink.opts.FullEvery = 3
	fulls := map[string]int{}
	for range 9 {
		sink.seq++
		due := map[string]bool{"g1": sink.due("g1"), "g2": sink.due("g2")}
		msgs, err := sink.encodeInterval(snap, defaultMaxPayload, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for tok, d := range due {
			if mode, _ := rowsOf(t, messagesOf(msgs, tok)[0]); (mode == RowsFull) != d {
				t.Errorf("seq %d: %s rows %s, due %v", sink.seq, tok, mode, d)
			} else if d {
				fulls[tok]++
			}
		}
	}
	if fulls["g1"] != 3 || fulls["g2"] != 3 {
		t.Errorf("full messages in 9 intervals: %v, want 3 each", fulls)
	}
}

// kvRevisions returns every key of the bucket with its revision.
func kvRevisions(t *testing.T, kv jetstream.KeyValue) map[string]uint64 {
	t.Helper()
	lister, err := kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	revs := map[string]uint64{}
	for k := range lister.Keys() {
		e, err := kv.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		revs[k] = e.Revision()
	}
	return revs
}

// The bucket gets what changed: every entry the first interval, only the
// summary when nothing but the numbers changed, and a gadget's entry when
// one of its rows' slow fields did.
func TestNATSKVWritesOnlyChanges(t *testing.T) {
	srv := testutil.StartNATS(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	sub := testutil.Subscribe(t, srv.ClientURL(), "bpfstats.kvc._node")
	sink := newTestSink(t, srv.ClientURL(), "kvc", testutil.NewLogWatch(t).Logger(), func(o *NATSOptions) {
		o.KV = true
		o.FullEvery = 1000
	})
	snap := bigSnapshot("kvc", []string{"g1", "g2"}, 3, 2, testTime)
	nc, err := ConnectNATS(ConnOptions{URLs: srv.ClientURL(), FailFast: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	publish := func() map[string]uint64 {
		t.Helper()
		sink.seq++
		for _, tok := range []string{"g1", "g2", TokenUnowned} {
			if sink.due(tok) {
				t.Fatalf("seq %d is %s's turn: pick another node name", sink.seq, tok)
			}
		}
		sink.seq--
		if err := sink.Publish(snap); err != nil {
			t.Fatal(err)
		}
		waitKV(t, sink)
		grow(snap)
		kv, err := js.KeyValue(context.Background(), DefaultKVBucket)
		if err != nil {
			t.Fatal(err)
		}
		return kvRevisions(t, kv)
	}
	first := publish()
	keys := slices.Sorted(maps.Keys(first))
	if want := []string{"kvc._summary", "kvc._unowned", "kvc.g1", "kvc.g2"}; !slices.Equal(keys, want) {
		t.Fatalf("keys %v, want %v", keys, want)
	}
	if st := sink.Stats(); st.KVWrites != 4 || st.KVSkipped != 0 || st.KVErrors != 0 {
		t.Errorf("after the first interval: %+v", st)
	}
	second := publish()
	changed := func(a, b map[string]uint64) []string {
		var out []string
		for k, rev := range b {
			if a[k] != rev {
				out = append(out, k)
			}
		}
		slices.Sort(out)
		return out
	}
	if got := changed(first, second); !slices.Equal(got, []string{"kvc._summary"}) {
		t.Errorf("second identical interval rewrote %v, want the summary only", got)
	}
	snap.Programs[4].Tag = "ffffffffffffffff" // g2's second program
	third := publish()
	if got := changed(second, third); !slices.Equal(got, []string{"kvc._summary", "kvc.g2"}) {
		t.Errorf("a changed gadget rewrote %v, want the summary and g2", got)
	}
	// The _node message reports the writes: 4 + 1 + 2 before the fourth.
	publish()
	for {
		n := decode[NodeMessage](t, sub.Next(t, "_node", nil))
		if n.Seq == 4 {
			if n.Publisher.KVWrites != 7 || n.Publisher.KVSkipped != 0 || n.Publisher.KVErrors != 0 {
				t.Errorf("publisher stats %+v", n.Publisher)
			}
			break
		}
	}
}

// Writes beyond KVMaxPending are skipped, writes the server does not
// acknowledge in time fail; both are counted, and their entries written
// again the next interval.
func TestNATSKVSkipsAndRetries(t *testing.T) {
	srv := testutil.StartNATS(t, &server.Options{})
	// A subscriber that takes the bucket's writes and never answers.
	blackhole := testutil.Subscribe(t, srv.ClientURL(), "$KV.bpfstats.>")
	watch := testutil.NewLogWatch(t)
	sink := newTestSink(t, srv.ClientURL(), "kvs", watch.Logger(), func(o *NATSOptions) {
		o.KV = true
		o.KVMaxPending = 2
		o.KVTimeout = 200 * time.Millisecond
	})
	js, err := jetstream.New(sink.conn.Load().nc,
		jetstream.WithPublishAsyncMaxPending(2),
		jetstream.WithPublishAsyncTimeout(200*time.Millisecond),
		jetstream.WithPublishAsyncErrHandler(sink.kvWriteFailed))
	if err != nil {
		t.Fatal(err)
	}
	sink.kv = &kvWriter{conn: sink.conn.Load(), js: js, prefix: "$KV.bpfstats."}
	snap := bigSnapshot("kvs", []string{"g1", "g2", "g3"}, 1, 1, testTime)
	// Five entries: three gadgets, _unowned, _summary.
	for i := range 2 {
		if err := sink.Publish(snap); err != nil {
			t.Fatal(err)
		}
		waitKV(t, sink)
		st := sink.Stats()
		if n := uint64(i + 1); st.KVWrites != 2*n || st.KVSkipped != 3*n || st.KVErrors != 2*n || st.PublishErrors != 2*n {
			t.Errorf("after interval %d: %+v", i+1, st)
		}
		grow(snap)
	}
	blackhole.Next(t, "a write", nil)
	watch.WaitMessage(t, 0, "NATS key-value write failed, writing the entry again next interval")
	// The skipped entries are marked, the failed ones will be when the
	// next interval takes the failures.
	var again []string
	for tok, st := range sink.tokens {
		if st.kvDirty {
			again = append(again, tok)
		}
	}
	for key := range sink.kvFailed {
		again = append(again, strings.TrimPrefix(key, "kvs."))
	}
	slices.Sort(again)
	if want := []string{TokenSummary, TokenUnowned, "g1", "g2", "g3"}; !slices.Equal(again, want) {
		t.Errorf("entries to write again %v, want %v", again, want)
	}
}
