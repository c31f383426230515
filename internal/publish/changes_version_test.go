package publish

import (
	"slices"
	"testing"

	"github.com/bpfstats/tracker/internal/state"
)

// The fingerprint of what rarely changes, taken from the rows'
// SlowVersion, changes exactly when the one taken from their encodings
// does: not when only numbers change, but when a row's maps, the program
// list or a column filled per snapshot (Attach) changes.
func TestSlowFingerprintFollowsVersions(t *testing.T) {
	k := newBenchKernel(50)
	tr := state.New(k, state.Options{Node: "n1"})
	steps := []struct {
		name   string
		step   func()
		attach bool
		change bool
	}{
		{"first", func() {}, false, true},
		{"runs", func() { k.runEvery(3) }, false, false},
		{"idle", func() {}, false, false},
		{"maps", func() { p := k.progs[9]; p.MapIDs = []uint32{9, 999}; k.progs[9] = p }, false, true},
		{"runs again", func() { k.runEvery(2) }, false, false},
		{"gone", func() {
			delete(k.progs, 5)
			k.ids = slices.DeleteFunc(k.ids, func(id uint32) bool { return id == 5 })
		}, false, true},
		{"attach", func() {}, true, true},
		{"attach kept", func() { k.runEvery(4) }, true, false},
		{"attach gone", func() {}, false, true},
	}
	var lastVersions, lastEncoded uint64
	for i, s := range steps {
		s.step()
		snap, err := tr.Sweep()
		if err != nil {
			t.Fatal(err)
		}
		if s.attach {
			snap.Programs[3].Attach = []string{"xdp eth0"}
		}
		idx := make([]int32, len(snap.Programs))
		for j := range idx {
			idx[j] = int32(j)
			if snap.SlowVersion(j) == 0 {
				t.Fatalf("%s: row %d has no SlowVersion", s.name, j)
			}
		}
		versions := slowFingerprint(GadgetIdentity{}, state.ProcessRef{}, messageRows{snap: snap, idx: idx})
		// The same rows in a snapshot without versions: hashed encoded.
		plain := &state.Snapshot{Programs: snap.Programs}
		encoded := slowFingerprint(GadgetIdentity{}, state.ProcessRef{}, messageRows{snap: plain, idx: idx})
		if i > 0 {
			if got := versions != lastVersions; got != s.change {
				t.Errorf("%s: fingerprint from versions changed: %v, want %v", s.name, got, s.change)
			}
			if got := encoded != lastEncoded; got != s.change {
				t.Errorf("%s: fingerprint from encodings changed: %v, want %v", s.name, got, s.change)
			}
		}
		lastVersions, lastEncoded = versions, encoded
	}
}
