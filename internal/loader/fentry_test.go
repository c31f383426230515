package loader

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testutil"
)

// TestFentryRefusedUnderLockdown checks that a kernel refusing trampoline
// programs (this project's hosts: lockdown=integrity) gets a clear error,
// not a panic or a half-open source.
func TestFentryRefusedUnderLockdown(t *testing.T) {
	testutil.RequireRoot(t)
	src, err := newFentrySource(SourceOptions{Logf: t.Logf})
	if err == nil {
		load, release, _ := fentryHooks(src)
		src.Close()
		t.Skipf("fentry: works on this kernel (hooks %s, %s); refusal not testable", load, release)
	}
	t.Logf("refusal: %v", err)
	if !errors.Is(err, unix.EPERM) {
		// Only a kernel without fentry support may refuse otherwise.
		testutil.SkipIfUnsupported(t, err, "fentry")
		return
	}
	if !strings.Contains(err.Error(), "kernel lockdown?") || !strings.Contains(err.Error(), "loading fentry program") {
		t.Errorf("error %q does not say what failed and why", err)
	}
}

// TestFentryDecodeRecord checks decodeFentryRecord against the layout of
// struct tracker_event (bpf/tracker.bpf.c asserts the same offsets).
func TestFentryDecodeRecord(t *testing.T) {
	b := make([]byte, fentryRecordSize)
	le := binary.LittleEndian
	le.PutUint64(b[0:], 123456789)
	le.PutUint64(b[8:], 42)
	le.PutUint64(b[16:], 7)
	le.PutUint32(b[24:], uint32(EventRelease))
	le.PutUint32(b[28:], 99)
	le.PutUint32(b[32:], 17)
	le.PutUint32(b[36:], 1000)
	le.PutUint32(b[40:], 1001)
	copy(b[48:], "my_prog")
	copy(b[64:], []byte{1, 2, 3, 4, 5, 6, 7, 8})
	copy(b[72:], "0123456789abcdef") // comm without NUL: all 16 bytes
	le.PutUint64(b[88:], 5_000_000_000)

	ev, lost, err := decodeFentryRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	want := ProgramEvent{
		Kind: EventRelease, ProgramID: 99, Type: 17, Name: "my_prog",
		Tag: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, PID: 1000, TID: 1001,
		Comm: "0123456789abcdef", CgroupID: 42, KernelTime: 123456789,
		LoaderStartTime: 5_000_000_000,
	}
	if ev != want {
		t.Errorf("decoded %+v, want %+v", ev, want)
	}
	if lost != 7 {
		t.Errorf("lost = %d, want 7", lost)
	}

	if _, _, err := decodeFentryRecord(b[:40]); err == nil {
		t.Error("short record decoded without error")
	}
	le.PutUint32(b[24:], 9)
	if _, _, err := decodeFentryRecord(b); err == nil {
		t.Error("record of unknown kind decoded without error")
	}
}

// hooks returns the kernel functions the load and release programs are
// attached to.
func (s *fentrySource) hooks() (load, release string) {
	return s.load.hook.Function, s.release.hook.Function
}

// fentryHooks returns the kernel functions a fentry source attached to for
// loads and releases; ok is false when src is not a fentry source.
func fentryHooks(src Source) (load, release string, ok bool) {
	f, ok := src.(*fentrySource)
	if !ok {
		return "", "", false
	}
	load, release = f.hooks()
	return load, release, true
}
