package loader

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// fileidKernfs is FILEID_KERNFS (include/linux/exportfs.h): the file
// handle type of cgroup v2 directories, whose 8 bytes are the cgroup ID.
const fileidKernfs = 0xfe

// cgroupPathsMax bounds the cache of cgroup paths; it starts over when full.
const cgroupPathsMax = 4096

// cgroupPaths resolves cgroup IDs to paths (Kernel.CgroupPath).
type cgroupPaths struct {
	mu sync.Mutex
	// mount is the cgroup v2 mount point and mountFD a directory fd on
	// it, opened on first use; err is why that failed.
	mount   string
	mountFD int
	err     error
	opened  bool
	cache   map[uint64]string
	link    []byte
}

// CgroupPath returns the path of cgroup v2 cgroup id (a
// ProgramEvent.CgroupID, the bpf_get_current_cgroup_id of the loader),
// relative to the cgroup v2 mount: "/system.slice/foo.service". It opens
// the cgroup by its file handle (open_by_handle_at on the mount, no walk of
// the hierarchy) and reads the path back from the fd; results are cached
// (cgroup IDs are not reused). An error wrapping os.ErrNotExist means the
// cgroup is gone or no cgroup v2 is mounted. Requires Linux 5.5 (cgroup IDs
// equal to file handles) and CAP_DAC_READ_SEARCH.
func (k *Kernel) CgroupPath(id uint64) (string, error) {
	return k.cgroups.path(id)
}

// close releases the mount fd; the resolver can open it again.
func (c *cgroupPaths) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opened && c.err == nil {
		unix.Close(c.mountFD)
	}
	c.opened, c.err = false, nil
}

func (c *cgroupPaths) path(id uint64) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.cache[id]; ok {
		return p, nil
	}
	if !c.opened {
		c.opened = true
		c.mount, c.err = CgroupMount()
		if c.err == nil {
			c.mountFD, c.err = unix.Open(c.mount, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		}
		if c.err != nil {
			c.err = fmt.Errorf("opening the cgroup v2 mount: %w", c.err)
		}
	}
	if c.err != nil {
		return "", c.err
	}
	handle := make([]byte, 8)
	binary.NativeEndian.PutUint64(handle, id)
	fd, err := unix.OpenByHandleAt(c.mountFD, unix.NewFileHandle(fileidKernfs, handle), unix.O_RDONLY|unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ESTALE) {
			err = fmt.Errorf("%w: %w", os.ErrNotExist, err)
		}
		return "", fmt.Errorf("opening cgroup %d: %w", id, err)
	}
	defer unix.Close(fd)
	if c.link == nil {
		c.link = make([]byte, 4096)
	}
	n, err := unix.Readlink("/proc/self/fd/"+strconv.Itoa(fd), c.link)
	if err != nil {
		return "", fmt.Errorf("reading path of cgroup %d: %w", id, err)
	}
	full := string(c.link[:n])
	rel, ok := strings.CutPrefix(full, c.mount)
	if !ok || (rel != "" && rel[0] != '/') {
		return "", fmt.Errorf("cgroup %d is at %s, outside the cgroup v2 mount %s", id, full, c.mount)
	}
	if rel == "" {
		rel = "/"
	}
	if c.cache == nil || len(c.cache) >= cgroupPathsMax {
		c.cache = make(map[uint64]string)
	}
	c.cache[id] = rel
	return rel, nil
}

// CgroupMount returns where cgroup v2 is mounted in this process's mount
// namespace: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on
// hybrid ones. An error wrapping os.ErrNotExist when there is none.
func CgroupMount() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("reading mounts: %w", err)
	}
	if mount, ok := parseCgroup2Mount(data); ok {
		return mount, nil
	}
	return "", fmt.Errorf("no cgroup2 mount in /proc/self/mountinfo: %w", os.ErrNotExist)
}

// parseCgroup2Mount returns the mount point of the first cgroup2 file
// system of a mountinfo file.
func parseCgroup2Mount(mountinfo []byte) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	for sc.Scan() {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) || fields[sep+1] != "cgroup2" {
			continue
		}
		return unescapeMountinfo(fields[4]), true
	}
	return "", false
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of a
// mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
