package loader

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// The poll source reports nothing: the sweep's audit is the whole source.
func TestPollSourceReportsNothing(t *testing.T) {
	src, err := newPollSource(SourceOptions{PollInterval: time.Millisecond})
	if err != nil {
		t.Fatalf("opening poll source: %v", err)
	}
	if src.Name() != SourcePoll {
		t.Errorf("Name() = %q, want %q", src.Name(), SourcePoll)
	}
	got := make(chan error, 1)
	go func() {
		ev, err := src.Read()
		if err == nil {
			err = fmt.Errorf("event %+v", ev)
		}
		got <- err
	}()
	srcLoadProgram(t).Close()
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; !errors.Is(err, ErrClosed) {
		t.Fatalf("Read returned %v, want ErrClosed and no event", err)
	}
}

func TestPollSourceCloseUnblocksRead(t *testing.T) {
	src, err := newPollSource(SourceOptions{PollInterval: time.Hour})
	if err != nil {
		t.Fatalf("opening poll source: %v", err)
	}
	srcCheckCloseUnblocksRead(t, src)
}

// fakeWalker fails the walk that checks the source can list programs.
type fakeWalker struct{ err error }

func (f *fakeWalker) appendProgramIDs(dst []uint32) ([]uint32, error) { return dst, f.err }

func TestPollSourceBaselineFails(t *testing.T) {
	walker := &fakeWalker{err: errors.New("EPERM")}
	if _, err := newPollSourceWith(walker, SourceOptions{}); err == nil {
		t.Fatal("open succeeded with a failing baseline walk")
	}
}
