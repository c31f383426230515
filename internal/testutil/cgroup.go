package testutil

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestSlice is the cgroup the tests create their cgroups under, at the
// root of the cgroup v2 mount.
const TestSlice = "bpfstats-test.slice"

// NewCgroup creates the cgroup v2 directory <mount>/bpfstats-test.slice/<name>
// and returns its path relative to the mount ("/bpfstats-test.slice/<name>").
// It is removed when the test ends: register it before starting the
// processes that join it, so that they are gone (their cleanups run
// first) when it is removed.
func NewCgroup(tb testing.TB, mount, name string) string {
	tb.Helper()
	slice := filepath.Join(mount, TestSlice)
	if err := os.Mkdir(slice, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		tb.Fatalf("creating cgroup %s: %v", slice, err)
	}
	dir := filepath.Join(slice, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatalf("creating cgroup %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			tb.Errorf("removing cgroup %s: %v", dir, err)
		}
		// Another test may still use the slice: then it stays for that one.
		os.Remove(slice)
	})
	return "/" + TestSlice + "/" + name
}

// JoinCgroup moves process pid into the cgroup v2 directory
// <mount><rel> by writing its PID to cgroup.procs.
func JoinCgroup(tb testing.TB, mount, rel string, pid int) {
	tb.Helper()
	procs := filepath.Join(mount, rel, "cgroup.procs")
	if err := os.WriteFile(procs, []byte(strconv.Itoa(pid)), 0); err != nil {
		tb.Fatalf("moving process %d into %s: %v", pid, procs, err)
	}
}
