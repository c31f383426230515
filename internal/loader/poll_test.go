package loader

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestPollSourceLoadRelease(t *testing.T) {
	src, err := newPollSource(SourceOptions{PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("opening poll source: %v", err)
	}
	if src.Name() != SourcePoll {
		t.Errorf("Name() = %q, want %q", src.Name(), SourcePoll)
	}
	events := srcPump(t, src)

	prog := srcLoadProgram(t)
	id, _ := srcProgramIDTag(t, prog)
	load := srcWaitFor(t, events, fmt.Sprintf("load of program %d", id), func(ev ProgramEvent) bool {
		return ev.Kind == EventLoad && ev.ProgramID == id
	})
	// The source opens no program fd, so it reports the ID alone.
	if load.Name != "" || load.Type != 0 || load.Tag != ([8]byte{}) {
		t.Errorf("load = %+v, want the ID only", load)
	}

	if err := prog.Close(); err != nil {
		t.Fatal(err)
	}
	srcWaitFor(t, events, fmt.Sprintf("release of program %d", id), func(ev ProgramEvent) bool {
		return ev.Kind == EventRelease && ev.ProgramID == id
	})
}

func TestPollSourceCloseUnblocksRead(t *testing.T) {
	src, err := newPollSource(SourceOptions{PollInterval: time.Hour})
	if err != nil {
		t.Fatalf("opening poll source: %v", err)
	}
	srcCheckCloseUnblocksRead(t, src)
}

// fakeWalker serves scripted walks; the last one repeats.
type fakeWalker struct {
	mu    sync.Mutex
	walks [][]uint32
	err   error
}

func (f *fakeWalker) appendProgramIDs(dst []uint32) ([]uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return dst, f.err
	}
	ids := f.walks[0]
	if len(f.walks) > 1 {
		f.walks = f.walks[1:]
	}
	return append(dst, ids...), nil
}

// TestPollSourceDiff checks the baseline is silent and the diff of two
// walks, including IDs at both ends.
func TestPollSourceDiff(t *testing.T) {
	walker := &fakeWalker{walks: [][]uint32{
		{1, 3, 5, 9},     // baseline
		{2, 3, 7, 9, 11}, // 1 and 5 gone; 2, 7 and 11 new
		{2, 3, 7, 9, 11}, // no change
		{},               // everything gone
	}}
	src, err := newPollSourceWith(walker, SourceOptions{PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })

	want := []ProgramEvent{
		{Kind: EventRelease, ProgramID: 1},
		{Kind: EventLoad, ProgramID: 2},
		{Kind: EventRelease, ProgramID: 5},
		{Kind: EventLoad, ProgramID: 7},
		{Kind: EventLoad, ProgramID: 11},
		{Kind: EventRelease, ProgramID: 2},
		{Kind: EventRelease, ProgramID: 3},
		{Kind: EventRelease, ProgramID: 7},
		{Kind: EventRelease, ProgramID: 9},
		{Kind: EventRelease, ProgramID: 11},
	}
	var got []ProgramEvent
	for range want {
		ev, err := src.Read()
		if err != nil {
			t.Fatal(err)
		}
		if ev.KernelTime == 0 {
			t.Errorf("event %+v has no time", ev)
		}
		ev.KernelTime = 0
		got = append(got, ev)
	}
	// Within one walk, events come in ID order.
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events:\n got %+v\nwant %+v", got, want)
	}

	walker.mu.Lock()
	walker.err = errors.New("walk failed")
	walker.mu.Unlock()
	if _, err := src.Read(); err == nil || errors.Is(err, ErrClosed) {
		t.Errorf("Read with a failing walk = %v, want the walk error", err)
	}
}

func TestPollSourceBaselineFails(t *testing.T) {
	walker := &fakeWalker{err: errors.New("EPERM")}
	if _, err := newPollSourceWith(walker, SourceOptions{}); err == nil {
		t.Fatal("open succeeded with a failing baseline walk")
	}
}
