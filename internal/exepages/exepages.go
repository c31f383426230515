// Package exepages drops the running executable's start-up pages from the process's resident set.
//
// A Go binary's code and read-only data are mapped from its file, and the
// kernel maps them in 64 KiB around each page touched (fault-around). The
// tracker's start-up (package initialisation, most of it the embedded NATS
// server's; loading BPF objects; the first full read of every program) touches
// code and tables that a running daemon never uses again: at 5000 programs
// 14 MiB of the binary stayed mapped, of which the daemon then used about
// 9 MiB. Those pages count in its RSS and in a container's working set, and
// reclaim passes over mapped code that was used. Release unmaps them; the
// pages the daemon still uses come back from the page cache at their next
// use, as minor faults.
package exepages

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Mapping is one of the executable's mappings, as /proc/self/smaps lists it.
type Mapping struct {
	// Start and End are the mapping's first address and the one after
	// its last.
	Start, End uint64
	// Perms are the permissions, as "r-xp".
	Perms string
	// Anonymous is the bytes of the mapping that are private copies, not
	// the file's pages: a read-only mapping has them where a debugger or a
	// uprobe wrote a breakpoint into the code.
	Anonymous uint64
}

// releasable says whether dropping m's pages loses nothing: m is private,
// not writable (its pages are the file's, which come back as they were),
// and holds no private copies (a breakpoint would be lost with them).
func (m Mapping) releasable() bool {
	return len(m.Perms) == 4 && m.Perms[1] != 'w' && m.Perms[3] == 'p' && m.Anonymous == 0
}

// File names the executable: its device and inode, and its path as
// /proc/self/exe reads. A mapping of it matches either: through overlayfs
// (containers) the mappings list the lower file's device and inode but the
// overlay's path.
type File struct {
	Dev, Ino uint64
	Path     string
}

// Mappings returns the mappings of f that smaps lists.
func Mappings(smaps io.Reader, f File) ([]Mapping, error) {
	var (
		out []Mapping
		cur *Mapping
		id  = fmt.Sprintf("%02x:%02x %d", unix.Major(f.Dev), unix.Minor(f.Dev), f.Ino)
	)
	sc := bufio.NewScanner(smaps)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if h, ok := parseHeader(line); ok {
			cur = nil
			if h.id != id && (f.Path == "" || h.path != f.Path) {
				continue
			}
			m, err := parseRange(h.addrs, h.perms)
			if err != nil {
				return nil, err
			}
			out = append(out, m)
			cur = &out[len(out)-1]
			continue
		}
		fields := bytes.Fields(line)
		if cur != nil && len(fields) == 3 && string(fields[0]) == "Anonymous:" {
			kb, err := strconv.ParseUint(string(fields[1]), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("smaps line %q: %w", line, err)
			}
			cur.Anonymous = kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading smaps: %w", err)
	}
	return out, nil
}

// header is the first line of a mapping in smaps: "start-end perms offset
// major:minor inode  path".
type header struct {
	addrs, perms []byte
	id           string // "major:minor inode"
	path         string
}

// parseHeader parses line as a mapping's first line; the lines of its
// fields ("Rss:  4 kB", "VmFlags: rd ex") start with a name and a colon.
func parseHeader(line []byte) (header, bool) {
	var f [5][]byte
	rest := line
	for i := range f {
		rest = bytes.TrimLeft(rest, " ")
		end := bytes.IndexByte(rest, ' ')
		if end < 0 {
			end = len(rest)
		}
		f[i], rest = rest[:end], rest[end:]
	}
	if len(f[0]) == 0 || bytes.HasSuffix(f[0], []byte(":")) || bytes.IndexByte(f[0], '-') <= 0 || len(f[4]) == 0 {
		return header{}, false
	}
	return header{addrs: f[0], perms: f[1], id: string(f[3]) + " " + string(f[4]), path: string(bytes.TrimLeft(rest, " "))}, true
}

// parseRange parses the "start-end" and permission fields of an smaps
// header line.
func parseRange(addrs, perms []byte) (Mapping, error) {
	i := bytes.IndexByte(addrs, '-')
	start, err1 := strconv.ParseUint(string(addrs[:i]), 16, 64)
	end, err2 := strconv.ParseUint(string(addrs[i+1:]), 16, 64)
	if err1 != nil || err2 != nil || end < start {
		return Mapping{}, fmt.Errorf("smaps range %q: not start-end in hex", addrs)
	}
	return Mapping{Start: start, End: end, Perms: string(perms)}, nil
}

// Release drops every page of the running executable's private read-only
// mappings (its code and read-only data) from this process's page tables,
// with madvise(MADV_DONTNEED). The pages stay in the page cache, and those
// the process uses again come back on their first touch. A mapping that is
// writable or holds private copies (a breakpoint) is left alone. Release
// returns the bytes of the mappings it covered, resident or not. A
// breakpoint written between Release's reading of smaps and its madvise
// call would be lost with its page.
//
// Requires Linux 2.6.16 (/proc/self/smaps' Anonymous field).
func Release() (uint64, error) {
	exe, err := self()
	if err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("listing mappings: %w", err)
	}
	defer f.Close()
	maps, err := Mappings(f, exe)
	if err != nil {
		return 0, err
	}
	var released uint64
	for _, m := range maps {
		if !m.releasable() {
			continue
		}
		// A raw call: unix.Madvise wants a []byte, which would mean
		// turning an address from smaps into a pointer.
		_, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(m.Start), uintptr(m.End-m.Start), unix.MADV_DONTNEED)
		if errno != 0 {
			return released, fmt.Errorf("releasing mapping %x-%x: %w", m.Start, m.End, errno)
		}
		released += m.End - m.Start
	}
	return released, nil
}

// self names the running executable.
func self() (File, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return File{}, fmt.Errorf("finding the executable: %w", err)
	}
	path, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return File{}, fmt.Errorf("finding the executable: %w", err)
	}
	return File{Dev: st.Dev, Ino: st.Ino, Path: path}, nil
}
