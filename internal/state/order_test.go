package state

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// The inventory's ID order, brought up to date by merging the programs
// inserted and leaving out those dropped, is the sorted inventory after
// any mix of loads, releases, ID reuse and resyncs, and t.ids follows it.
func TestSortedProgramsFollowsInventory(t *testing.T) {
	k := newFakeKernel()
	for id := uint32(1); id <= 200; id += 2 {
		k.progs[id] = progStats(id, 1, 1)
	}
	tr := New(k, Options{Node: "n1", Source: "test"})
	if _, _, err := tr.Resync(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(step int) {
		t.Helper()
		order := tr.sortedPrograms()
		var want []uint32
		for id := range tr.programs {
			want = append(want, id)
		}
		slices.Sort(want)
		got := make([]uint32, len(order))
		for i, p := range order {
			got[i] = p.id
			if tr.programs[p.id] != p {
				t.Fatalf("step %d: order holds program %d, not the inventory's", step, p.id)
			}
		}
		if !slices.Equal(got, want) || !slices.Equal(tr.ids, want) {
			t.Fatalf("step %d: order %v, ids %v; inventory %v", step, got, tr.ids, want)
		}
	}
	check(0)
	for step := 1; step <= 300; step++ {
		for range rng.IntN(8) {
			id := uint32(rng.IntN(400) + 1)
			switch rng.IntN(3) {
			case 0:
				k.progs[id] = progStats(id, 1, 1)
				tr.applyEvent(load(id, 0))
			case 1:
				tr.applyEvent(release(id))
				delete(k.progs, id)
			default:
				// The ID reused by another program: its load drops the old one.
				ev := load(id, 0)
				ev.Tag[7] ^= byte(step)
				info := progStats(id, 1, 1)
				info.Tag = ev.Tag
				k.progs[id] = info
				tr.applyEvent(ev)
			}
		}
		if step%50 == 0 {
			if _, _, err := tr.Resync(); err != nil {
				t.Fatal(err)
			}
		}
		if rng.IntN(2) == 0 {
			check(step)
		}
	}
	check(301)
}
