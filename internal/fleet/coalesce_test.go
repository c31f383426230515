package fleet

import (
	"context"
	"testing"

	"github.com/bpfstats/tracker/internal/testutil"
)

// A coalescer decodes only the newest message filed for each subject, and
// counts those it skipped.
func TestCoalescerDecodesNewestPerSubject(t *testing.T) {
	type decoded struct{ subject, data string }
	got := make(chan decoded, 10)
	c := newCoalescer(func(subject string, data []byte) error {
		got <- decoded{subject, string(data)}
		return nil
	}, func(string, error) {})
	for _, m := range []decoded{{"a", "a1"}, {"b", "b1"}, {"a", "a2"}, {"a", "a3"}} {
		if err := c.put(m.subject, []byte(m.data)); err != nil {
			t.Fatal(err)
		}
	}
	if filed, skipped := c.pending(); filed != 2 || skipped != 2 {
		t.Fatalf("filed %d skipped %d, want 2 and 2", filed, skipped)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Wait)
	defer cancel()
	go c.run(ctx)
	seen := map[string]string{}
	for len(seen) < 2 {
		select {
		case d := <-got:
			if _, twice := seen[d.subject]; twice {
				t.Fatalf("%s decoded twice", d.subject)
			}
			seen[d.subject] = d.data
		case <-ctx.Done():
			t.Fatalf("decoded %v, want a and b", seen)
		}
	}
	if seen["a"] != "a3" || seen["b"] != "b1" {
		t.Fatalf("decoded %v, want a's newest (a3) and b1", seen)
	}
	// Filed again after the batch: decoded again.
	if err := c.put("a", []byte("a4")); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if d != (decoded{"a", "a4"}) {
			t.Fatalf("decoded %v, want a4", d)
		}
	case <-ctx.Done():
		t.Fatal("a4 never decoded")
	}
}
