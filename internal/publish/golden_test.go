package publish

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/internal/testutil"
)

// checkGoldenJSON compares data with testdata/name as canonical JSON, or
// rewrites the file with -update.
func checkGoldenJSON(t *testing.T, name string, data []byte) {
	t.Helper()
	testutil.CheckGoldenJSON(t, filepath.Join("testdata", name), data, updateMetricsGolden())
}

// intervalMessage returns the encoded message of the interval for token.
func intervalMessage(t *testing.T, snap *state.Snapshot, token string) []byte {
	t.Helper()
	sink := offlineSink("node_a", 3, "5f0c2a9e4b7d1e38")
	sink.opts.Interval = time.Second
	msgs, err := sink.encodeInterval(snap, defaultMaxPayload, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.subject == sink.Subject(token) {
			return m.data
		}
	}
	t.Fatalf("no message for %s among %d", token, len(msgs))
	return nil
}

// TestMessageGolden pins the wire format of the gadget and _unowned
// messages, the one with no unowned programs included.
func TestMessageGolden(t *testing.T) {
	snap := testSnapshot("node_a", "6bcfcca7a12", testTime)
	// Every number distinct from zero, so that a dropped field shows.
	for i := range snap.Programs {
		snap.Programs[i].RecursionMisses = uint64(i + 1)
	}
	snap.Unowned.RecursionMisses = 1
	snap.Gadgets[0].RecursionMisses = 5
	snap.Unowned.Runtime, snap.Unowned.Runcount = 11, 1
	checkGoldenJSON(t, "message_gadget.golden", intervalMessage(t, snap, "6bcfcca7a12"))
	checkGoldenJSON(t, "message_unowned.golden", intervalMessage(t, snap, TokenUnowned))

	empty := &state.Snapshot{
		Time:       testTime,
		Source:     "perf",
		Unowned:    state.Row{NodeName: "node_a", PIDs: []uint32{}, Comms: []string{}},
		GadgetInfo: map[string]state.Gadget{},
	}
	checkGoldenJSON(t, "message_unowned_empty.golden", intervalMessage(t, empty, TokenUnowned))
}

// offlineSink is a sink without a connection, for encoding only, about to
// publish interval seq.
func offlineSink(node string, seq uint64, instance string) *NATSSink {
	return &NATSSink{node: node, prefix: DefaultSubjectPrefix, seq: seq, instance: instance,
		opts: NATSOptions{FullEvery: DefaultFullEvery}, tokens: map[string]*tokenState{}, bufs: &EncodeBuffers{}}
}
