package exepages

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

const smapsSample = `00400000-00e5a000 r-xp 00000000 fe:00 9977903                            /opt/bpf stats/tracker
Size:              10600 kB
Rss:                6180 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
00e5a000-01885000 r--p 00a5a000 fe:00 9977903                            /opt/bpf stats/tracker
Rss:                7468 kB
Anonymous:             8 kB
VmFlags: rd mr mw me sd
01885000-01969000 rw-p 01485000 fe:00 9977903                            /opt/bpf stats/tracker
Anonymous:           600 kB
01969000-039ae000 rw-p 00000000 00:00 0
Anonymous:           120 kB
7f0000000000-7f0000001000 r-xp 00000000 00:2a 77                         /opt/bpf stats/tracker
Anonymous:             0 kB
7f0000002000-7f0000003000 r--s 00000000 fe:00 9977903                    /opt/bpf stats/tracker
Anonymous:             0 kB
7f0000004000-7f0000005000 r-xp 00000000 fe:00 9977904                    /usr/lib/other
Anonymous:             0 kB
`

func TestMappings(t *testing.T) {
	exe := File{Dev: unix.Mkdev(0xfe, 0), Ino: 9977903, Path: "/opt/bpf stats/tracker"}
	got, err := Mappings(strings.NewReader(smapsSample), exe)
	if err != nil {
		t.Fatal(err)
	}
	want := []Mapping{
		{Start: 0x400000, End: 0xe5a000, Perms: "r-xp"},
		{Start: 0xe5a000, End: 0x1885000, Perms: "r--p", Anonymous: 8 << 10},
		{Start: 0x1885000, End: 0x1969000, Perms: "rw-p", Anonymous: 600 << 10},
		// Another device and inode, the same path: overlayfs.
		{Start: 0x7f0000000000, End: 0x7f0000001000, Perms: "r-xp"},
		{Start: 0x7f0000002000, End: 0x7f0000003000, Perms: "r--s"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d mappings %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mapping %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	// Only the code without private copies, and the overlay's, may go.
	var releasable []bool
	for _, m := range got {
		releasable = append(releasable, m.releasable())
	}
	if want := []bool{true, false, false, true, false}; !equal(releasable, want) {
		t.Errorf("releasable: got %v, want %v", releasable, want)
	}

	// Without the path, the device and inode alone match.
	got, err = Mappings(strings.NewReader(smapsSample), File{Dev: exe.Dev, Ino: exe.Ino})
	if err != nil || len(got) != 4 {
		t.Errorf("by device and inode: got %d mappings (%v), want 4", len(got), err)
	}
}

func equal(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMappingsMalformed(t *testing.T) {
	exe := File{Dev: unix.Mkdev(0xfe, 0), Ino: 1}
	for _, in := range []string{
		"zz-00e5a000 r-xp 00000000 fe:00 1 /x\n",
		"00e5a000-00400000 r-xp 00000000 fe:00 1 /x\n",
		"00400000-00e5a000 r-xp 00000000 fe:00 1 /x\nAnonymous: many kB\n",
	} {
		if got, err := Mappings(strings.NewReader(in), exe); err == nil {
			t.Errorf("%q: got %+v, want an error", in, got)
		}
	}
}

// probe is a string of the binary's read-only data that the test writes
// into, as a breakpoint would be written into code.
const probe = "exepages: a page with a private copy is kept"

// load reads *p where the compiler cannot fold the read of a constant.
//
//go:noinline
func load(p *byte) byte { return *p }

// counter lives in the binary's writable data, which Release must leave.
var counter = 1

// pagemap reads which pages of the executable's read-only mappings are
// mapped (present in /proc/self/pagemap), into buffers made beforehand:
// reading them should touch as little code as it can, since every page
// touched comes back with its neighbours.
type pagemap struct {
	fd   int
	maps []Mapping
	bufs [][]byte
}

func openPagemap(t *testing.T, maps []Mapping) *pagemap {
	t.Helper()
	fd, err := unix.Open("/proc/self/pagemap", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	pm := &pagemap{fd: fd}
	for _, m := range maps {
		if m.Perms[1] != 'w' {
			pm.maps = append(pm.maps, m)
			pm.bufs = append(pm.bufs, make([]byte, (m.End-m.Start)/4096*8))
		}
	}
	return pm
}

// resident returns the number of mapped pages, or -1 when a read failed.
func (pm *pagemap) resident() int {
	n := 0
	for i, m := range pm.maps {
		buf := pm.bufs[i]
		if r, err := unix.Pread(pm.fd, buf, int64(m.Start/4096*8)); err != nil || r != len(buf) {
			return -1
		}
		for j := 0; j < len(buf); j += 8 {
			n += int(buf[j+7] >> 7)
		}
	}
	return n
}

func TestRelease(t *testing.T) {
	exe, err := self()
	if err != nil {
		t.Fatal(err)
	}
	maps := func() []Mapping {
		f, err := os.Open("/proc/self/smaps")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		m, err := Mappings(f, exe)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	// A private copy in the read-only data: the page of probe, made
	// writable, written, and made read-only again.
	p := unsafe.Pointer(unsafe.StringData(probe))
	page := unsafe.Slice((*byte)(unsafe.Add(p, -int(uintptr(p)&4095))), 4096)
	if err := unix.Mprotect(page, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		t.Fatalf("making the page of a constant writable: %v", err)
	}
	last := (*byte)(unsafe.Add(p, len(probe)-1))
	*last = '!'
	if err := unix.Mprotect(page, unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	counter = 42

	// A collection between the two counts would bring its code back with
	// its neighbours: one now puts the next far off.
	runtime.GC()
	before := maps()
	if len(before) == 0 {
		t.Fatalf("no mapping of %+v in /proc/self/smaps", exe)
	}
	pm := openPagemap(t, before)
	resident := pm.resident()
	released, err := Release()
	after := pm.resident()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("released %d KiB of mappings; resident pages %d before, %d after", released>>10, resident, after)
	if released == 0 || after > resident/2 {
		t.Errorf("released %d bytes: %d of %d resident pages still mapped, want at most half", released, after, resident)
	}
	if load(last) != '!' {
		t.Error("the private copy in the read-only data was dropped")
	}
	if counter != 42 {
		t.Errorf("writable data: counter is %d, want 42", counter)
	}
	for _, m := range maps() {
		if m.Perms[1] != 'w' && m.Anonymous == 0 && m.Start <= uint64(uintptr(p)) && uint64(uintptr(p)) < m.End {
			t.Errorf("mapping %+v holds the written page but no private copy", m)
		}
	}
}

// probed is where TestReleaseKeepsUprobe's uprobe fires.
//
//go:noinline
func probed() int { return counter }

// uprobeChildEnv tells the copy of the test binary that it is the child of
// TestReleaseKeepsUprobe.
const uprobeChildEnv = "EXEPAGES_UPROBE_CHILD"

// A uprobe is a breakpoint in the private copy of a page of code: Release
// must keep it, and the probe fire after it as before. The probe goes into
// a copy of the test binary run as a child, so that no other test of this
// process finds a private copy in its code.
func TestReleaseKeepsUprobe(t *testing.T) {
	if os.Getenv(uprobeChildEnv) != "" {
		uprobeChild(t)
		return
	}
	testutil.RequireRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(filepath.Dir(exe), fmt.Sprintf("exepages-uprobe-%d.test", os.Getpid()))
	if err := os.WriteFile(cp, data, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cp) })
	cmd := exec.Command(cp, "-test.run=^TestReleaseKeepsUprobe$", "-test.v")
	cmd.Env = append(os.Environ(), uprobeChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if lineWith(string(out), "--- SKIP") != "" {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
}

// lineWith returns the first line of s that contains sub, or "".
func lineWith(s, sub string) string {
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}

// fileOffset returns the offset in this executable's file of the code at
// address pc.
func fileOffset(t *testing.T, pc uintptr) uint64 {
	t.Helper()
	f, err := elf.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && p.Vaddr <= uint64(pc) && uint64(pc) < p.Vaddr+p.Filesz {
			return uint64(pc) - p.Vaddr + p.Off
		}
	}
	t.Fatalf("no executable segment holds %#x", pc)
	return 0
}

// uprobeChild counts the calls of probed with a uprobe, releases, and
// expects the count to go on.
func uprobeChild(t *testing.T) {
	m := testgadget.NewMap(t, "exepages_calls", 1)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.Kprobe,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "exit"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
			asm.Return(),
		},
	})
	testutil.SkipIfUnsupported(t, err, "kprobe program")
	t.Cleanup(func() { prog.Close() })
	ex, err := link.OpenExecutable(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	// By file offset: go test strips the symbol table.
	l, err := ex.Uprobe("probed", prog, &link.UprobeOptions{Address: fileOffset(t, reflect.ValueOf(probed).Pointer())})
	testutil.SkipIfUnsupported(t, err, "uprobe")
	t.Cleanup(func() { l.Close() })
	count := func() uint64 {
		var n uint64
		if err := m.Lookup(uint32(0), &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	probed()
	if n := count(); n != 1 {
		t.Fatalf("the uprobe fired %d times for one call", n)
	}
	if _, err := Release(); err != nil {
		t.Fatal(err)
	}
	probed()
	if n := count(); n != 2 {
		t.Errorf("after Release the uprobe fired %d times for two calls: its breakpoint was dropped", n)
	}
}
