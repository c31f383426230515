package loader

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// statLine builds a /proc/<pid>/stat line with the given comm, ppid,
// flags and starttime (fields 2, 4, 9, 22); the other fields are filler.
func statLine(pid, comm, ppid, flags, start string) string {
	return pid + " (" + comm + ") S " + ppid + " 1 1 0 -1 " + flags +
		" 10 0 0 0 1 2 0 0 20 0 1 0 " + start + " 1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
}

func TestParseStat(t *testing.T) {
	for _, c := range []struct {
		comm   string
		flags  string
		kernel bool
	}{
		{"plain", "4194560", false},
		{"with space", "4194560", false},
		{"a) (b c)", "4194560", false},
		{")", "4194560", false},
		{"((", "4194560", false},
		{"kthreadd", "2129984", true}, // 0x208040: PF_KTHREAD set
	} {
		var p Process
		if err := parseStat([]byte(statLine("7", c.comm, "3", c.flags, "123456")), &p); err != nil {
			t.Fatalf("%q: %v", c.comm, err)
		}
		if p.Comm != c.comm || p.PPID != 3 || p.StartTime != 123456 || p.Kernel != c.kernel {
			t.Errorf("%q: got %+v", c.comm, p)
		}
	}
	for _, bad := range []string{"", "7 comm S 1", "7 (x) S 1 2 3", "7 (x) S x" + statLine("", "", "", "", "")[3:]} {
		var p Process
		if err := parseStat([]byte(bad), &p); err == nil {
			t.Errorf("parseStat(%q) = %+v, want error", bad, p)
		}
	}
}

func TestParseGadgetLabels(t *testing.T) {
	env := "PATH=/bin\x00BPFSTATS_GADGET_NAME=trace exec\x00BPFSTATS_GADGET_IMAGE=ghcr.io/a:b=c\x00" +
		"BPFSTATS_GADGET_OTHER=x\x00BPFSTATS_GADGET_ID\x00BPFSTATS_GADGET_NAME=second\x00XBPFSTATS_GADGET_ID=y\x00" +
		"BPFSTATS_GADGET_ID=\x00"
	want := map[string]string{"NAME": "trace exec", "IMAGE": "ghcr.io/a:b=c", "ID": ""}
	if got := parseGadgetLabels([]byte(env)); !maps.Equal(got, want) {
		t.Errorf("labels %v, want %v", got, want)
	}
	if got := parseGadgetLabels([]byte("A=1\x00B=2\x00")); got != nil {
		t.Errorf("labels %v without gadget variables, want nil", got)
	}
	if got := parseGadgetLabels([]byte("BPFSTATS_GADGET_ID=last-without-nul")); got["ID"] != "last-without-nul" {
		t.Errorf("labels %v: lost the entry without trailing NUL", got)
	}
}

func TestFdinfoField(t *testing.T) {
	data := []byte("pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t1\nprog_jited:\t1\n" +
		"prog_tag:\ta04f5eef06a7f555\nmemlock:\t4096\nprog_id:\t42\nrun_time_ns:\t0\n")
	if v, ok := fdinfoField(data, "prog_id:"); !ok || v != 42 {
		t.Errorf("prog_id: %d %v", v, ok)
	}
	if v, ok := fdinfoField(data, "memlock:"); !ok || v != 4096 {
		t.Errorf("memlock: %d %v", v, ok)
	}
	if _, ok := fdinfoField(data, "map_id:"); ok {
		t.Error("found a missing key")
	}
	if _, ok := fdinfoField([]byte("prog_id:\t\n"), "prog_id:"); ok {
		t.Error("accepted an empty value")
	}
	if v, ok := fdinfoField([]byte("prog_id: 7"), "prog_id:"); !ok || v != 7 {
		t.Errorf("last line without newline: %d %v", v, ok)
	}
}

func TestParsePID(t *testing.T) {
	for name, want := range map[string]uint32{"1": 1, "4294967295": 4294967295} {
		if got, ok := parsePID([]byte(name)); !ok || got != want {
			t.Errorf("parsePID(%q) = %d %v", name, got, ok)
		}
	}
	for _, name := range []string{"", "0", "self", "12a", "4294967296", "12345678901", "-1"} {
		if got, ok := parsePID([]byte(name)); ok {
			t.Errorf("parsePID(%q) = %d, want no PID", name, got)
		}
	}
}

// fakeProc builds a /proc-like tree. Each process gets stat, environ and
// optional fd links with fdinfo.
type fakeProc struct {
	t    *testing.T
	root string
}

func (f fakeProc) write(rel, content string) {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f fakeProc) link(rel, target string) {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		f.t.Fatal(err)
	}
}

// progFD adds fd n of pid pointing at program id.
func (f fakeProc) progFD(pid, n, id string) {
	f.link(pid+"/fd/"+n, bpfProgLink)
	f.write(pid+"/fdinfo/"+n, "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nprog_type:\t1\nprog_id:\t"+id+"\nrun_cnt:\t0\n")
}

func TestHoldersFakeProc(t *testing.T) {
	f := fakeProc{t, t.TempDir()}
	f.progFD("100", "3", "42")
	f.progFD("100", "5", "42") // a second fd to the same program
	f.link("100/fd/4", "anon_inode:bpf-map")
	f.write("100/fdinfo/4", "map_id:\t42\n")
	f.link("100/fd/6", "/dev/null")
	f.link("100/fd/7", "anon_inode:bpf-prog-not") // near miss
	f.write("100/fdinfo/7", "prog_id:\t99\n")
	f.progFD("200", "7", "42")
	f.progFD("200", "8", "7")
	f.link("200/fd/9", bpfProgLink) // fdinfo vanished: skipped
	f.progFD("300", "3", "0")       // prog_id 0: not a program
	f.write("400/stat", "no fd directory: a process that exited mid-walk")
	f.progFD("self", "3", "1000") // not a PID
	f.write("sys/fs/x", "")
	for i := range 500 {
		f.link("500/fd/"+strconv.Itoa(i+10), "/dev/null")
	}
	f.progFD("500", "600", "7")

	k, err := NewKernel(f.root)
	if err != nil {
		t.Fatal(err)
	}
	// Small buffers: every directory takes several getdents64 calls.
	k.walker.procDents = make([]byte, 128)
	k.walker.fdDents = make([]byte, 256)
	got, err := k.Holders()
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32][]uint32{42: {100, 200}, 7: {200, 500}}
	if !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("holders %v, want %v", got, want)
	}

	if _, err := NewKernel(filepath.Join(f.root, "missing")); err == nil {
		t.Error("NewKernel accepted a missing proc root")
	}
}

func TestReadProcessFakeProc(t *testing.T) {
	f := fakeProc{t, t.TempDir()}
	f.write("10/stat", statLine("10", "my (odd) tool", "1", "4194560", "5000"))
	f.write("10/environ", "HOME=/\x00BPFSTATS_GADGET_NAME=trace_exec\x00BPFSTATS_GADGET_ID=0123456789a\x00")
	f.link("10/exe", "/opt/tool (deleted)")
	f.write("2/stat", statLine("2", "kthreadd", "0", "2129984", "1"))
	f.write("2/environ", "")
	f.write("11/stat", statLine("11", "zombie", "1", "4194564", "6000")) // no environ: exited mid-read

	k, err := NewKernel(f.root)
	if err != nil {
		t.Fatal(err)
	}
	p, err := k.ReadProcess(10)
	if err != nil {
		t.Fatal(err)
	}
	want := Process{PID: 10, StartTime: 5000, Comm: "my (odd) tool", Exe: "/opt/tool (deleted)", PPID: 1,
		Labels: map[string]string{"NAME": "trace_exec", "ID": "0123456789a"}}
	if p.PID != want.PID || p.StartTime != want.StartTime || p.Comm != want.Comm || p.Exe != want.Exe ||
		p.PPID != want.PPID || p.Kernel || !maps.Equal(p.Labels, want.Labels) {
		t.Errorf("got %+v, want %+v", p, want)
	}

	kt, err := k.ReadProcess(2)
	if err != nil {
		t.Fatal(err)
	}
	if !kt.Kernel || kt.Exe != "" || kt.Labels != nil || kt.Comm != "kthreadd" {
		t.Errorf("kernel thread: %+v", kt)
	}

	if _, err := k.ReadProcess(11); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("process without environ: %v, want os.ErrNotExist", err)
	}
	if _, err := k.ReadProcess(12); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing process: %v, want os.ErrNotExist", err)
	}
	if !errors.Is(errNotExist(os.NewSyscallError("read", unix.ESRCH)), os.ErrNotExist) {
		t.Error("ESRCH does not match os.ErrNotExist")
	}
}

func TestProcessStartTimeFakeProc(t *testing.T) {
	f := fakeProc{t, t.TempDir()}
	f.write("10/stat", statLine("10", "my (odd) tool", "1", "4194560", "5000"))
	k, err := NewKernel(f.root)
	if err != nil {
		t.Fatal(err)
	}
	if start, err := k.ProcessStartTime(10); err != nil || start != 5000 {
		t.Errorf("start time %d, %v; want 5000", start, err)
	}
	if _, err := k.ProcessStartTime(12); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing process: %v, want os.ErrNotExist", err)
	}
}
