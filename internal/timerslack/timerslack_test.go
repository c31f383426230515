package timerslack

import (
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testutil"
)

// of returns the timer slack of thread tid, of this process or another,
// from /proc/<tid>/timerslack_ns (CAP_SYS_NICE for any thread but the
// calling one).
func of(tid int) (time.Duration, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/timerslack_ns")
	if err != nil {
		return 0, err
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return time.Duration(ns), err
}

// lockedThreads starts n goroutines, each locked to a thread of its own,
// and returns their thread IDs; they exit when the test ends.
func lockedThreads(t *testing.T, n int) []int {
	t.Helper()
	tids := make(chan int)
	stop := make(chan struct{})
	for range n {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread exits with it
			tids <- unix.Gettid()
			<-stop
		}()
	}
	t.Cleanup(func() { close(stop) })
	var out []int
	for range n {
		out = append(out, <-tids)
	}
	return out
}

// slackOfNewThread reports the slack of a thread created now.
func slackOfNewThread(t *testing.T) time.Duration {
	t.Helper()
	got := make(chan time.Duration)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		runtime.LockOSThread()
		d, err := Current()
		if err != nil {
			t.Error(err)
		}
		got <- d
		<-stop
	}()
	return <-got
}

// restoredAtEnd returns the calling thread's timer slack, which every
// thread gets back when the test ends. It skips without root.
func restoredAtEnd(t *testing.T) time.Duration {
	t.Helper()
	testutil.RequireRoot(t)
	orig, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Set(orig); err != nil {
			t.Errorf("restoring timer slack %v: %v", orig, err)
		}
	})
	return orig
}

func TestSetEveryThread(t *testing.T) {
	restoredAtEnd(t)
	// An odd value, which no thread has by chance.
	const want = 1234567 * time.Nanosecond
	before := lockedThreads(t, 4)
	if err := Set(want); err != nil {
		t.Fatal(err)
	}
	all, err := threads()
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range append(all, before...) {
		got, err := of(tid)
		if errors.Is(err, os.ErrNotExist) {
			continue // exited since
		}
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("thread %d: timer slack %v, want %v", tid, got, want)
		}
	}
	if len(all) < 5 {
		t.Errorf("only %d threads listed, want at least the 4 locked ones and this one", len(all))
	}
	// Threads the runtime creates from now on inherit it.
	lockedThreads(t, 2)
	if got := slackOfNewThread(t); got != want {
		t.Errorf("thread created after Set: timer slack %v, want %v", got, want)
	}
	// Set again with the slack the calling thread has: nothing to do.
	if err := Set(want); err != nil {
		t.Fatal(err)
	}
}

func TestSetRejectsNonPositive(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Millisecond} {
		if err := Set(d); err == nil {
			t.Errorf("Set(%v) = nil, want an error", d)
		}
	}
}

func TestOfSelf(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	got, err := of(unix.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	if got != cur {
		t.Errorf("of(self) = %v, Current() = %v", got, cur)
	}
	if _, err := of(-1); err == nil {
		t.Error("of(-1) = nil error")
	}
}

func TestSettable(t *testing.T) {
	testutil.RequireRoot(t)
	cur, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	if err := Settable(cur); err != nil {
		t.Errorf("Settable(current %v) = %v", cur, err)
	}
	// Root has CAP_SYS_NICE.
	if err := Settable(cur + time.Millisecond); err != nil {
		t.Errorf("Settable(%v) as root = %v", cur+time.Millisecond, err)
	}
}

// TestSetWithoutCapSysNice drops CAP_SYS_NICE from one thread (capabilities
// are per thread) and sets the slack from it: other threads refuse.
func TestSetWithoutCapSysNice(t *testing.T) {
	orig := restoredAtEnd(t)
	want := orig + 3*time.Millisecond
	errs := make(chan [2]error)
	go func() {
		// Never unlocked: the thread, with its capability dropped, exits
		// with this goroutine.
		runtime.LockOSThread()
		if err := testutil.DropCapability(capSysNice); err != nil {
			errs <- [2]error{err, err}
			return
		}
		errs <- [2]error{Settable(want), Set(want)}
	}()
	got := <-errs
	for i, name := range []string{"Settable", "Set"} {
		if !errors.Is(got[i], ErrPermission) {
			t.Errorf("%s(%v) without CAP_SYS_NICE = %v, want ErrPermission", name, want, got[i])
		}
	}
}
