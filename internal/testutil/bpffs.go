package testutil

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// RegistryOnPrivateBPFFS mounts a bpffs of the test's own (the host's
// /sys/fs/bpf is shared with every other test, and may not be mounted),
// unmounted when the test ends, and returns the registry's path in it.
func RegistryOnPrivateBPFFS(tb testing.TB) string {
	tb.Helper()
	RequireRoot(tb)
	dir := tb.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		tb.Fatalf("mounting a bpffs on %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			tb.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return filepath.Join(dir, "bpfstats", "registry")
}
