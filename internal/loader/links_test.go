package loader

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

// bpftoolLink is the part of "bpftool link show -j" the tests compare.
type bpftoolLink struct {
	ID         uint32 `json:"id"`
	Type       string `json:"type"`
	ProgID     uint32 `json:"prog_id"`
	TpName     string `json:"tp_name"`
	TargetName string `json:"target_name"`
	CgroupID   uint64 `json:"cgroup_id"`
	AttachType string `json:"attach_type"`
}

// bpftoolXDPDevice is the device "bpftool net show" says XDP program
// progID is attached to, "" when none.
func bpftoolXDPDevice(t *testing.T, progID uint32) string {
	t.Helper()
	var net []struct {
		XDP []struct {
			Devname string `json:"devname"`
			ID      uint32 `json:"id"`
		} `json:"xdp"`
	}
	testutil.Bpftool(t, &net, "net", "show")
	for _, n := range net {
		for _, x := range n.XDP {
			if x.ID == progID {
				return x.Devname
			}
		}
	}
	return ""
}

// returnProgram loads a program of type typ, attach type at, returning ret.
func returnProgram(t *testing.T, typ ebpf.ProgramType, at ebpf.AttachType, ret int32) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "tk_link_" + typ.String()[:3], Type: typ, AttachType: at, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()},
	})
	testutil.SkipIfUnsupported(t, err, typ.String()+" program")
	t.Cleanup(func() { prog.Close() })
	return prog
}

// attachPerfEvent attaches prog with a perf_event link to a software
// cpu-clock event of this process that samples every 10 s, and returns
// the description ReadAttachments should give.
func attachPerfEvent(t *testing.T, prog *ebpf.Program) string {
	t.Helper()
	attr := unix.PerfEventAttr{
		Type: unix.PERF_TYPE_SOFTWARE, Config: unix.PERF_COUNT_SW_CPU_CLOCK,
		Size: uint32(unsafe.Sizeof(unix.PerfEventAttr{})), Sample: 10_000_000_000,
	}
	fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		t.Fatalf("perf_event_open: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: prog, Attach: ebpf.AttachPerfEvent})
	testutil.SkipIfUnknownAttachType(t, err, "perf_event link")
	t.Cleanup(func() { l.Close() })
	return "perf_event:type" + strconv.Itoa(unix.PERF_TYPE_SOFTWARE) + ":config" + strconv.Itoa(unix.PERF_COUNT_SW_CPU_CLOCK)
}

// attachments reads every link with ReadAttachments, by program ID.
func attachments(t *testing.T, k *Kernel) map[uint32][]string {
	t.Helper()
	got := make(map[uint32][]string)
	err := k.ReadAttachments(func(progID uint32, attach string) {
		got[progID] = append(got[progID], attach)
	})
	testutil.SkipIfUnsupported(t, err, "listing BPF links")
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestReadAttachments(t *testing.T) {
	testutil.RequireRoot(t)
	k := newKernel(t)
	progsIter, _ := k.Iterators()
	testutil.SkipIfUnsupported(t, progsIter, "iter/bpf_prog")
	iterProgs := k.loadedIterators()

	rawTP, _ := testgadget.AttachSysEnter(t, "tk_link_rawtp")
	filter := testgadget.LoadSocketFilter(t, "tk_link_filter")

	mount, err := CgroupMount()
	if err != nil {
		t.Fatal(err)
	}
	cg := testutil.NewCgroup(t, mount, "attach-"+strconv.Itoa(os.Getpid()))
	skb := returnProgram(t, ebpf.CGroupSKB, ebpf.AttachCGroupInetIngress, 1)
	cgLink, err := link.AttachCgroup(link.CgroupOptions{
		Path: filepath.Join(mount, cg), Attach: ebpf.AttachCGroupInetIngress, Program: skb,
	})
	testutil.SkipIfUnsupported(t, err, "cgroup link")
	t.Cleanup(func() { cgLink.Close() }) // before the cgroup's removal

	xdp := returnProgram(t, ebpf.XDP, ebpf.AttachXDP, 2) // XDP_PASS
	xdpLink, err := link.AttachXDP(link.XDPOptions{Program: xdp, Interface: 1, Flags: link.XDPGenericMode})
	testutil.SkipIfUnsupported(t, err, "XDP link on lo")
	t.Cleanup(func() { xdpLink.Close() })

	perf := returnProgram(t, ebpf.PerfEvent, ebpf.AttachPerfEvent, 0)
	perfLink := attachPerfEvent(t, perf)

	got := attachments(t, k)
	id := func(p *ebpf.Program) uint32 { return testgadget.ProgramID(t, p) }
	want := map[uint32][]string{
		id(rawTP):          {"raw_tp:sys_enter"},
		id(skb):            {"cgroup:" + cg + ":ingress"},
		id(xdp):            {"xdp:lo"},
		iterProgs.progs.id: {"iter:bpf_prog"},
	}
	for pid, w := range want {
		if !slices.Equal(got[pid], w) {
			t.Errorf("program %d: attach %q, want %q", pid, got[pid], w)
		}
	}
	if a, ok := got[id(filter)]; ok {
		t.Errorf("socket filter %d has links %q", id(filter), a)
	}

	// bpftool is the independent check: the same links, programs, targets.
	var links []bpftoolLink
	testutil.Bpftool(t, &links, "link", "show")
	seen := 0
	for _, l := range links {
		w, ok := want[l.ProgID]
		if !ok {
			continue
		}
		seen++
		var desc string
		switch l.Type {
		case "raw_tracepoint":
			desc = "raw_tp:" + l.TpName
		case "iter":
			desc = "iter:" + l.TargetName
		case "cgroup":
			path, err := k.CgroupPath(l.CgroupID)
			if err != nil {
				t.Fatal(err)
			}
			desc = "cgroup:" + path + ":" + map[string]string{"ingress": "ingress", "cgroup_inet_ingress": "ingress"}[l.AttachType]
		case "xdp":
			// bpftool 7.1 prints no device for an XDP link: "net show" does.
			desc = "xdp:" + bpftoolXDPDevice(t, l.ProgID)
		case "perf_event":
			desc = perfLink // bpftool 7.1 prints nothing more: the type is the check
		default:
			t.Errorf("bpftool: link %d of program %d has type %q", l.ID, l.ProgID, l.Type)
		}
		if !slices.Contains(w, desc) {
			t.Errorf("bpftool: link %d of program %d is %q, ReadAttachments says %q", l.ID, l.ProgID, desc, w)
		}
	}
	if seen != len(want) {
		t.Errorf("bpftool lists %d of the %d links: %+v", seen, len(want), links)
	}
}

func TestReadAttachmentsCache(t *testing.T) {
	testutil.RequireRoot(t)
	k, err := NewKernelWithOptions(KernelOptions{NoIterators: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	prog, l := testgadget.AttachSysEnter(t, "tk_link_cache")
	attachments(t, k)
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	// A cached description is served as long as the key matches: plant a
	// marker to see it served, then a stale key to see it replaced.
	lid := uint32(info.ID)
	k.links.known[lid] = linkTarget{key: k.links.known[lid].key, attach: "cached"}
	if got := attachments(t, k)[testgadget.ProgramID(t, prog)]; !slices.Equal(got, []string{"cached"}) {
		t.Errorf("second walk: %q, want the cached description", got)
	}
	k.links.known[lid] = linkTarget{attach: "stale"}
	if got := attachments(t, k)[testgadget.ProgramID(t, prog)]; !slices.Equal(got, []string{"raw_tp:sys_enter"}) {
		t.Errorf("walk after a key change: %q, want raw_tp:sys_enter", got)
	}
	// Links gone leave the cache.
	l.Close()
	attachments(t, k)
	if _, ok := k.links.known[lid]; ok {
		t.Errorf("closed link %d still cached", lid)
	}
}

func TestKernelBTFName(t *testing.T) {
	testutil.RequireRoot(t)
	spec, err := btf.LoadKernelSpec()
	testutil.SkipIfUnsupported(t, err, "kernel BTF")
	var fn *btf.Func
	if err := spec.TypeByName("bpf_prog_kallsyms_add", &fn); err != nil {
		t.Skipf("bpf_prog_kallsyms_add not in kernel BTF: %v", err)
	}
	typeID, err := spec.TypeID(fn)
	if err != nil {
		t.Fatal(err)
	}
	h, err := btf.FindHandle(func(info *btf.HandleInfo) bool { return info.IsVmlinux() })
	if errors.Is(err, unix.EPERM) {
		t.Fatal(err)
	}
	testutil.SkipIfUnsupported(t, err, "vmlinux BTF handle")
	if err != nil {
		t.Fatal(err)
	}
	info, err := h.Info()
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got := tracingTarget(unix.BPF_TRACE_FENTRY, uint32(info.ID), uint32(typeID)); got != "fentry/bpf_prog_kallsyms_add" {
		t.Errorf("tracingTarget = %q, want fentry/bpf_prog_kallsyms_add", got)
	}
	if got := tracingTarget(unix.BPF_TRACE_FEXIT, 0, uint32(typeID)); got != "fexit/btf0:"+strconv.Itoa(int(typeID)) {
		t.Errorf("tracingTarget of an unknown BTF object = %q", got)
	}
}

func TestLinkDescriptionHelpers(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{attachName(0), "ingress"},
		{attachName(unix.BPF_TCX_EGRESS), "egress"},
		{attachName(unix.BPF_TRACE_UPROBE_MULTI), "uprobe_multi"},
		{attachName(55), "peer"},
		{attachName(99), "attach99"},
		{netfilterTarget(2, 1, -128), "ipv4:input:-128"},
		{netfilterTarget(99, 9, 0), "pf99:hook9:0"},
		{netdevName(0), "detached"},
		{tracingTarget(0, 42, 7), "freplace/prog42:7"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

// BenchmarkReadAttachments times one walk over b's links plus the
// machine's: the cost is per link (four syscalls when cached).
func BenchmarkReadAttachments(b *testing.B) {
	testutil.RequireRoot(b)
	k, err := NewKernelWithOptions(KernelOptions{NoIterators: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { k.Close() })
	prog, _ := testgadget.AttachSysEnter(b, "tk_link_bench")
	for range 199 {
		// task_newtask rarely fires while the benchmark runs.
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "task_newtask", Program: prog})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { l.Close() })
	}
	n := 0
	count := func(uint32, string) { n++ }
	if err := k.ReadAttachments(count); err != nil {
		b.Fatal(err)
	}
	links := n
	b.ResetTimer()
	for b.Loop() {
		if err := k.ReadAttachments(count); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(links), "ns/link")
	b.ReportMetric(float64(links), "links")
}
