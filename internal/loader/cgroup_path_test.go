package loader

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testutil"
)

func TestParseCgroup2Mount(t *testing.T) {
	hybrid := `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	unified := `28 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
	escaped := `28 22 0:26 / /mnt/my\040cgroup rw shared:4 master:1 - cgroup2 none rw
`
	for _, c := range []struct {
		data, want string
		ok         bool
	}{
		{hybrid, "/sys/fs/cgroup/unified", true},
		{unified, "/sys/fs/cgroup", true},
		{escaped, "/mnt/my cgroup", true},
		{"30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n", "", false},
	} {
		got, ok := parseCgroup2Mount([]byte(c.data))
		if got != c.want || ok != c.ok {
			t.Errorf("parseCgroup2Mount(%q) = %q, %v; want %q, %v", c.data, got, ok, c.want, c.ok)
		}
	}
}

// testCgroup creates a cgroup for the test under the cgroup v2 mount.
func testCgroup(t *testing.T) (mount, rel string) {
	t.Helper()
	testutil.RequireRoot(t)
	mount, err := CgroupMount()
	if err != nil {
		t.Fatal(err)
	}
	return mount, testutil.NewCgroup(t, mount, fmt.Sprintf("bpfstats-test-%d.scope", os.Getpid()))
}

// A cgroup created by the test resolves from its ID (the handle
// name_to_handle_at gives, which is what bpf_get_current_cgroup_id returns)
// to its path.
func TestCgroupPath(t *testing.T) {
	mount, rel := testCgroup(t)
	handle, _, err := unix.NameToHandleAt(unix.AT_FDCWD, filepath.Join(mount, rel), 0)
	if err != nil {
		t.Fatalf("name_to_handle_at: %v", err)
	}
	if handle.Type() != fileidKernfs || handle.Size() != 8 {
		t.Fatalf("cgroup handle of type %#x size %d, want %#x size 8", handle.Type(), handle.Size(), fileidKernfs)
	}
	id := binary.NativeEndian.Uint64(handle.Bytes())
	k := newKernel(t)
	for range 2 { // the second from the cache
		got, err := k.CgroupPath(id)
		if err != nil || got != rel {
			t.Fatalf("CgroupPath(%d) = %q, %v; want %q", id, got, err, rel)
		}
	}
	if got, err := k.CgroupPath(1); err != nil || got != "/" {
		t.Errorf("CgroupPath(1) = %q, %v; want the root", got, err)
	}
	if got, err := k.CgroupPath(1 << 62); err == nil {
		t.Errorf("CgroupPath of a cgroup that never was = %q, want an error", got)
	}
}

// ReadProcess reports the cgroup a process was moved into.
func TestReadProcessCgroup(t *testing.T) {
	mount, rel := testCgroup(t)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	testutil.JoinCgroup(t, mount, rel, cmd.Process.Pid)
	k := newKernel(t)
	p, err := k.ReadProcess(uint32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if p.Cgroup != rel {
		t.Errorf("process %d cgroup %q, want %q", p.PID, p.Cgroup, rel)
	}
	if cg := ParseCgroupPath(p.Cgroup); cg.Unit != filepath.Base(rel) || cg.Slice != testutil.TestSlice {
		t.Errorf("cgroup %q parsed as %+v", p.Cgroup, cg)
	}
}
