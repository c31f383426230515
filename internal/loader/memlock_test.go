package loader

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testutil"
)

// raiseMemlock lifts a low RLIMIT_MEMLOCK: to infinity with
// CAP_SYS_RESOURCE, else to the hard limit.
func TestRaiseMemlock(t *testing.T) {
	testutil.RequireRoot(t)
	var saved unix.Rlimit
	if err := unix.Prlimit(0, unix.RLIMIT_MEMLOCK, nil, &saved); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Prlimit(0, unix.RLIMIT_MEMLOCK, &saved, nil); err != nil {
			t.Errorf("restoring memlock rlimit: %v", err)
		}
	})
	low := unix.Rlimit{Cur: 64 << 10, Max: saved.Max}
	if err := unix.Prlimit(0, unix.RLIMIT_MEMLOCK, &low, nil); err != nil {
		t.Fatal(err)
	}
	if err := raiseMemlock(); err != nil {
		t.Fatal(err)
	}
	var got unix.Rlimit
	if err := unix.Prlimit(0, unix.RLIMIT_MEMLOCK, nil, &got); err != nil {
		t.Fatal(err)
	}
	if got.Cur != unix.RLIM_INFINITY && got.Cur != saved.Max {
		t.Errorf("memlock rlimit after raiseMemlock: %+v, want infinity or the hard limit %d", got, saved.Max)
	}
	t.Logf("memlock rlimit raised from %d to %d", low.Cur, got.Cur)
}
