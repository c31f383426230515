package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// sysLinkInfo is struct bpf_link_info: its header and its union, up to the
// end of its largest member as of Linux 6.18 (perf_event's kprobe,
// uprobe_multi: 48 bytes). Offsets in the union are the kernel's.
type sysLinkInfo struct {
	Type   uint32
	ID     uint32
	ProgID uint32
	_      uint32
	Union  [48]byte
}

// Link types (enum bpf_link_type), Linux 5.7 to 6.10; x/sys/unix lacks
// the newest.
const (
	linkRawTracepoint = 1
	linkTracing       = 2
	linkCgroup        = 3
	linkIter          = 4
	linkNetns         = 5
	linkXDP           = 6
	linkPerfEvent     = 7
	linkKprobeMulti   = 8
	linkStructOps     = 9
	linkNetfilter     = 10
	linkTCX           = 11
	linkUprobeMulti   = 12
	linkNetkit        = 13
	linkSockmap       = 14
)

// attachNames are short names of enum bpf_attach_type, by value: the
// cgroup ones as bpftool's "cgroup attach" spells them.
var attachNames = [...]string{
	"ingress", "egress", "sock_create", "sock_ops", "stream_parser",
	"stream_verdict", "device", "msg_verdict", "bind4", "bind6",
	"connect4", "connect6", "post_bind4", "post_bind6", "sendmsg4",
	"sendmsg6", "lirc_mode2", "flow_dissector", "sysctl", "recvmsg4",
	"recvmsg6", "getsockopt", "setsockopt", "tp_btf", "fentry",
	"fexit", "fmod_ret", "lsm", "iter", "getpeername4",
	"getpeername6", "getsockname4", "getsockname6", "xdp_devmap", "sock_release",
	"xdp_cpumap", "sk_lookup", "xdp", "skb_verdict", "reuseport_select",
	"reuseport_select_or_migrate", "perf_event", "kprobe_multi", "lsm_cgroup", "struct_ops",
	"netfilter", "ingress", "egress", "uprobe_multi", "connect_unix",
	"sendmsg_unix", "recvmsg_unix", "getpeername_unix", "getsockname_unix", "primary",
	"peer", "kprobe_session", "uprobe_session",
}

// attachName is the short name of attach type t.
func attachName(t uint32) string {
	if int(t) < len(attachNames) {
		return attachNames[t]
	}
	return "attach" + strconv.FormatUint(uint64(t), 10)
}

// linkTargets describes BPF links (Kernel.ReadAttachments), with a lock
// of its own.
type linkTargets struct {
	mu sync.Mutex
	// known holds what the last walk described, by link ID; next is the
	// current walk's, swapped in when it ends (links gone are dropped).
	known, next map[uint32]linkTarget
	// info, nameInfo and name are the read buffers, on the heap (the
	// kernel writes to them through addresses held as integers).
	info, nameInfo *sysLinkInfo
	name           []byte
}

// linkTarget is the description of one link and the fields it came from.
type linkTarget struct {
	key    linkKey
	attach string
}

// linkKey is what a link's description depends on: its type and the
// numbers of its info union, volatile counters zeroed. A link keeps its
// target for life but may be detached (ifindex or cgroup ID 0), and an ID
// can come back after a wrap: either changes the key.
type linkKey struct {
	typ   uint32
	union [48]byte
}

// ReadAttachments walks the kernel's BPF links (BPF_LINK_GET_NEXT_ID) and
// calls fn once for each with the ID of the program it attaches (0 for a
// struct_ops link, which attaches a map) and where it attaches it:
//
//	raw_tp:TP                   raw tracepoint (BPF_RAW_TRACEPOINT_OPEN)
//	tracing:KIND/FUNC           fentry, fexit, fmod_ret, lsm, tp_btf, freplace; FUNC
//	                            from the kernel's BTF, btfOBJ:TYPE when not kernel BTF
//	cgroup:PATH:TYPE            PATH relative to the cgroup v2 mount, "id=N" if unresolved,
//	                            "detached" once the cgroup is gone; TYPE ingress, connect4, ...
//	netns:INODE:TYPE            flow_dissector, sk_lookup
//	xdp:DEV, tcx:DEV:ingress, netkit:DEV:primary   DEV named in the tracker's network
//	                            namespace ("ifindexN" if not there), "detached" when gone
//	kprobe:FUNC+OFF, kretprobe:FUNC+OFF, uprobe:PATH+0xOFF, uretprobe:PATH+0xOFF,
//	tracepoint:NAME, perf_event:typeT:configC   perf_event links (details need Linux 6.6)
//	kprobe_multi:N funcs, kretprobe_multi:N funcs, uprobe_multi:PATH:N offsets
//	iter:TARGET[:map=ID], netfilter:PF:HOOK:PRIO, struct_ops:map=ID, sockmap:map=ID:TYPE
//	link:typeN                  a link type this code does not know
//
// One walk costs four syscalls per link (next ID, fd, info, close);
// descriptions are cached by link ID, and only a new or changed link costs
// more (names, cgroup path, BTF). An error wrapping errors.ErrUnsupported
// means the kernel cannot list links (before Linux 5.8). A link whose
// read fails (but for being gone) ends the walk with an error. fn must
// not call ReadAttachments. Requires CAP_SYS_ADMIN.
func (k *Kernel) ReadAttachments(fn func(progID uint32, attach string)) error {
	l := &k.links
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.info == nil {
		l.info = new(sysLinkInfo)
	}
	clear(l.next)
	if l.next == nil {
		l.next = make(map[uint32]linkTarget, len(l.known))
	}
	var id uint32
	for {
		next, err := bpfNextID(unix.BPF_LINK_GET_NEXT_ID, id)
		switch {
		case errors.Is(err, unix.ENOENT):
			l.known, l.next = l.next, l.known
			return nil
		case errors.Is(err, unix.EINVAL) && id == 0:
			return fmt.Errorf("listing BPF links: %w (%w)", errors.ErrUnsupported, err)
		case err != nil:
			return fmt.Errorf("listing BPF links after %d: %w", id, err)
		}
		id = next
		progID, attach, err := k.readLink(id)
		if errors.Is(err, unix.ENOENT) {
			continue // gone since listed
		}
		if err != nil {
			return fmt.Errorf("reading BPF link %d: %w", id, err)
		}
		fn(progID, attach)
	}
}

// readLink reads link id and describes it, from the cache when its key
// did not change.
func (k *Kernel) readLink(id uint32) (progID uint32, attach string, err error) {
	l := &k.links
	fd, err := bpfFDByID(unix.BPF_LINK_GET_FD_BY_ID, id)
	if err != nil {
		return 0, "", err
	}
	defer unix.Close(fd)
	*l.info = sysLinkInfo{}
	if err := bpfObjInfo(fd, unsafe.Pointer(l.info), unsafe.Sizeof(*l.info)); err != nil {
		return 0, "", err
	}
	progID = l.info.ProgID
	key := keyOf(l.info)
	t, ok := l.known[id]
	if !ok || t.key != key {
		t = linkTarget{key: key, attach: k.describeLink(fd, l.info)}
	}
	l.next[id] = t
	return progID, t.attach, nil
}

// keyOf is the linkKey of a link info read without name buffers.
func keyOf(info *sysLinkInfo) linkKey {
	key := linkKey{typ: info.Type, union: info.Union}
	switch info.Type {
	case linkKprobeMulti:
		clear(key.union[16:24]) // missed
	case linkPerfEvent:
		if u32(info.Union[:], 0) == 3 || u32(info.Union[:], 0) == 4 {
			clear(key.union[32:40]) // kprobe's missed
		}
	}
	return key
}

// u32 and u64 read the union's fields at off.
func u32(b []byte, off int) uint32 { return binary.NativeEndian.Uint32(b[off:]) }
func u64(b []byte, off int) uint64 { return binary.NativeEndian.Uint64(b[off:]) }

// describeLink returns the description of link fd, whose info (read
// without name buffers) is info.
func (k *Kernel) describeLink(fd int, info *sysLinkInfo) string {
	u := info.Union[:]
	switch info.Type {
	case linkRawTracepoint:
		return "raw_tp:" + k.linkName(fd, 0, 8)
	case linkTracing:
		return "tracing:" + tracingTarget(u32(u, 0), u32(u, 4), u32(u, 8))
	case linkCgroup:
		return "cgroup:" + k.cgroupOfLink(u64(u, 0)) + ":" + attachName(u32(u, 8))
	case linkIter:
		s := "iter:" + k.linkName(fd, 0, 8)
		if m := u32(u, 12); m != 0 {
			s += ":map=" + strconv.FormatUint(uint64(m), 10)
		}
		return s
	case linkNetns:
		return "netns:" + strconv.FormatUint(uint64(u32(u, 0)), 10) + ":" + attachName(u32(u, 4))
	case linkXDP:
		return "xdp:" + netdevName(u32(u, 0))
	case linkTCX:
		return "tcx:" + netdevName(u32(u, 0)) + ":" + attachName(u32(u, 4))
	case linkNetkit:
		return "netkit:" + netdevName(u32(u, 0)) + ":" + attachName(u32(u, 4))
	case linkPerfEvent:
		return k.perfEventTarget(fd, u)
	case linkKprobeMulti:
		kind := "kprobe_multi:"
		if u32(u, 12)&1 != 0 { // BPF_F_KPROBE_MULTI_RETURN
			kind = "kretprobe_multi:"
		}
		return kind + strconv.FormatUint(uint64(u32(u, 8)), 10) + " funcs"
	case linkUprobeMulti:
		kind := "uprobe_multi:"
		if u32(u, 40)&1 != 0 { // BPF_F_UPROBE_MULTI_RETURN
			kind = "uretprobe_multi:"
		}
		return kind + k.linkName(fd, 0, 32) + ":" + strconv.FormatUint(uint64(u32(u, 36)), 10) + " offsets"
	case linkNetfilter:
		return "netfilter:" + netfilterTarget(u32(u, 0), u32(u, 4), int32(u32(u, 8)))
	case linkStructOps:
		return "struct_ops:map=" + strconv.FormatUint(uint64(u32(u, 0)), 10)
	case linkSockmap:
		return "sockmap:map=" + strconv.FormatUint(uint64(u32(u, 0)), 10) + ":" + attachName(u32(u, 4))
	}
	return "link:type" + strconv.FormatUint(uint64(info.Type), 10)
}

// perfEventTarget describes a perf_event link (union perf_event); before
// Linux 6.6 the kernel says nothing more than "perf_event".
func (k *Kernel) perfEventTarget(fd int, u []byte) string {
	off := strconv.FormatUint(uint64(u32(u, 20)), 10)
	switch u32(u, 0) {
	case 1, 2: // BPF_PERF_EVENT_UPROBE, _URETPROBE
		kind := "uprobe:"
		if u32(u, 0) == 2 {
			kind = "uretprobe:"
		}
		return kind + k.linkName(fd, 8, 16) + "+0x" + strconv.FormatUint(uint64(u32(u, 20)), 16)
	case 3, 4: // BPF_PERF_EVENT_KPROBE, _KRETPROBE
		kind := "kprobe:"
		if u32(u, 0) == 4 {
			kind = "kretprobe:"
		}
		name := k.linkName(fd, 8, 16)
		if name == "" {
			name = "0x" + strconv.FormatUint(u64(u, 24), 16)
		}
		return kind + name + "+" + off
	case 5: // BPF_PERF_EVENT_TRACEPOINT
		return "tracepoint:" + k.linkName(fd, 8, 16)
	case 6: // BPF_PERF_EVENT_EVENT
		return "perf_event:type" + strconv.FormatUint(uint64(u32(u, 16)), 10) +
			":config" + strconv.FormatUint(u64(u, 8), 10)
	}
	return "perf_event"
}

// linkName reads the string a link info reports through a buffer whose
// pointer is at union offset ptrOff and length at lenOff. "" when it
// cannot be read.
func (k *Kernel) linkName(fd, ptrOff, lenOff int) string {
	l := &k.links
	if l.name == nil {
		l.name = make([]byte, unix.PathMax)
		l.nameInfo = new(sysLinkInfo)
	}
	clear(l.name)
	// A copy of the first read: its in/out lengths are the kernel's, only
	// the one buffer is added (the kernel leaves the other fields alone).
	info := l.nameInfo
	*info = *l.info
	binary.NativeEndian.PutUint64(info.Union[ptrOff:], uint64(uintptr(unsafe.Pointer(&l.name[0]))))
	binary.NativeEndian.PutUint32(info.Union[lenOff:], uint32(len(l.name)))
	if err := bpfObjInfo(fd, unsafe.Pointer(info), unsafe.Sizeof(*info)); err != nil {
		return ""
	}
	return unix.ByteSliceToString(l.name)
}

// cgroupOfLink is the path of a cgroup link's cgroup.
func (k *Kernel) cgroupOfLink(id uint64) string {
	if id == 0 {
		return "detached"
	}
	path, err := k.cgroups.path(id)
	if err != nil {
		return "id=" + strconv.FormatUint(id, 10)
	}
	return path
}

// netdevName is the name of network device ifindex in the tracker's
// network namespace.
func netdevName(ifindex uint32) string {
	if ifindex == 0 {
		return "detached"
	}
	if ifc, err := net.InterfaceByIndex(int(ifindex)); err == nil {
		return ifc.Name
	}
	return "ifindex" + strconv.FormatUint(uint64(ifindex), 10)
}

// tracingTarget describes a tracing link: its kind and its target's name
// in the kernel's BTF (vmlinux or a module). The kernel reports a target
// BPF program (freplace, fentry on a program) as that program's ID in
// objID, which looks like a BTF object ID: only kernel BTF is resolved,
// and freplace targets never are.
func tracingTarget(attachType, objID, typeID uint32) string {
	kind := attachName(attachType)
	if attachType == 0 { // an extension program's expected attach type
		kind = "freplace"
		return kind + "/prog" + strconv.FormatUint(uint64(objID), 10) + ":" + strconv.FormatUint(uint64(typeID), 10)
	}
	name, err := kernelBTFName(objID, typeID)
	if err != nil {
		return kind + "/btf" + strconv.FormatUint(uint64(objID), 10) + ":" + strconv.FormatUint(uint64(typeID), 10)
	}
	if attachType == unix.BPF_TRACE_RAW_TP {
		name = strings.TrimPrefix(name, "btf_trace_")
	}
	return kind + "/" + name
}

// kernelBTFName is the name of type typeID of kernel BTF object objID.
func kernelBTFName(objID, typeID uint32) (string, error) {
	h, err := btf.NewHandleFromID(btf.ID(objID))
	if err != nil {
		return "", err
	}
	defer h.Close()
	info, err := h.Info()
	if err != nil {
		return "", err
	}
	if !info.IsKernel {
		return "", fmt.Errorf("BTF %d is not the kernel's", objID)
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return "", err
	}
	if info.IsModule() {
		if spec, err = h.Spec(spec); err != nil {
			return "", err
		}
	}
	typ, err := spec.TypeByID(btf.TypeID(typeID))
	if err != nil {
		return "", err
	}
	return typ.TypeName(), nil
}

// netfilterTarget describes a netfilter link: protocol family, hook and
// priority.
func netfilterTarget(pf, hook uint32, prio int32) string {
	pfs := map[uint32]string{1: "inet", 2: "ipv4", 3: "arp", 5: "netdev", 7: "bridge", 10: "ipv6"}
	hooks := []string{"prerouting", "input", "forward", "output", "postrouting"}
	p, ok := pfs[pf]
	if !ok {
		p = "pf" + strconv.FormatUint(uint64(pf), 10)
	}
	h := "hook" + strconv.FormatUint(uint64(hook), 10)
	if int(hook) < len(hooks) {
		h = hooks[hook]
	}
	return p + ":" + h + ":" + strconv.FormatInt(int64(prio), 10)
}
