package state

import (
	"maps"
	"reflect"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// A Tracker whose caller recycles each snapshot builds the next one in its
// storage, with rows equal to those of a Tracker that allocates anew,
// while programs run, leave and come.
func TestRecycleReusesStorage(t *testing.T) {
	k := benchFake(300)
	c := newClock()
	kept := New(batchFakeKernel{k}, Options{Node: "n1", now: c.now})
	fresh := New(batchFakeKernel{k}, Options{Node: "n1", now: c.now})
	for _, tr := range []*Tracker{kept, fresh} {
		if _, _, err := tr.Resync(); err != nil {
			t.Fatal(err)
		}
	}
	// The two lowest IDs leave and two new programs come before them: the
	// rows behind move down two places and back, unchanged, while the
	// storage's last rows were cleared in between.
	low := map[uint32]loader.ProgramInfo{}
	for _, id := range []uint32{5, 6} {
		p := k.progs[10]
		p.ID = id
		low[id] = p
	}
	steps := []func(){
		func() {},
		func() {}, // unchanged rows are kept, not copied
		k.grow,
		func() { delete(k.progs, 12); delete(k.holders, 12) },
		k.grow,
		func() { k.progs[9000] = k.progs[13]; p := k.progs[9000]; p.ID = 9000; k.progs[9000] = p },
		func() {},
		func() { delete(k.progs, 10); delete(k.progs, 11) },
		func() { maps.Copy(k.progs, low) },
		func() {},
	}
	var last *Snapshot
	for i, step := range steps {
		step()
		c.advance(time.Second)
		got, err := kept.Sweep()
		if err != nil {
			t.Fatal(err)
		}
		want, err := fresh.Sweep()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Programs, want.Programs) {
			t.Fatalf("step %d: rows built in recycled storage differ from fresh ones", i)
		}
		if last != nil && len(got.Programs) <= cap(last.Programs) && &got.Programs[:1][0] != &last.Programs[:1][0] {
			t.Errorf("step %d: the recycled storage was not used", i)
		}
		kept.Recycle(got)
		last = got
	}
}
