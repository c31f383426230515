package state

import "strconv"

// progTypeNames are the kernel's BPF_PROG_TYPE_* values spelled as bpftool
// prints them, so that both tools' output can be compared by eye.
var progTypeNames = [...]string{
	0:  "unspec",
	1:  "socket_filter",
	2:  "kprobe",
	3:  "sched_cls",
	4:  "sched_act",
	5:  "tracepoint",
	6:  "xdp",
	7:  "perf_event",
	8:  "cgroup_skb",
	9:  "cgroup_sock",
	10: "lwt_in",
	11: "lwt_out",
	12: "lwt_xmit",
	13: "sock_ops",
	14: "sk_skb",
	15: "cgroup_device",
	16: "sk_msg",
	17: "raw_tracepoint",
	18: "cgroup_sock_addr",
	19: "lwt_seg6local",
	20: "lirc_mode2",
	21: "sk_reuseport",
	22: "flow_dissector",
	23: "cgroup_sysctl",
	24: "raw_tracepoint_writable",
	25: "cgroup_sockopt",
	26: "tracing",
	27: "struct_ops",
	28: "ext",
	29: "lsm",
	30: "sk_lookup",
	31: "syscall",
	32: "netfilter",
}

// progTypeName returns the bpftool-style name of a BPF_PROG_TYPE_* value,
// or its number for types newer than this table.
func progTypeName(t uint32) string {
	if int(t) < len(progTypeNames) {
		return progTypeNames[t]
	}
	return strconv.FormatUint(uint64(t), 10)
}
