//go:build ignore

// SPDX-License-Identifier: GPL-2.0

/*
 * Load and release events of BPF programs, for the fentry event source
 * (internal/loader/fentry.go).
 *
 * Every program here is one candidate hook. The kernel functions differ
 * between releases (static, inlined, renamed), so user space loads and
 * attaches one load and one release candidate, checks that both fire, and
 * falls back to the next candidate when one does not. All candidates write
 * the same record to the same ring buffer.
 */

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* Values of loader.EventKind. */
#define TRACKER_EVENT_LOAD 1
#define TRACKER_EVENT_RELEASE 2

/* One load or release. Keep in sync with decodeFentryRecord in fentry.go. */
struct tracker_event {
	__u64 ktime;     /* bpf_ktime_get_ns */
	__u64 cgroup_id; /* cgroup v2 ID of the current task */
	__u64 lost;      /* value of the lost counter when this record was written */
	__u32 kind;      /* TRACKER_EVENT_* */
	__u32 prog_id;
	__u32 prog_type;
	__u32 tgid;
	__u32 tid;
	__u32 pad;
	char name[16]; /* bpf_prog_aux.name */
	__u8 tag[8];   /* bpf_prog.tag */
	char comm[16]; /* current task */
	__u64 leader_start; /* start_boottime of the current thread group's leader */
};

/* The offsets decodeFentryRecord reads. */
_Static_assert(sizeof(struct tracker_event) == 96, "keep in sync with fentry.go");
_Static_assert(__builtin_offsetof(struct tracker_event, lost) == 16, "keep in sync with fentry.go");
_Static_assert(__builtin_offsetof(struct tracker_event, kind) == 24, "keep in sync with fentry.go");
_Static_assert(__builtin_offsetof(struct tracker_event, tid) == 40, "keep in sync with fentry.go");
_Static_assert(__builtin_offsetof(struct tracker_event, name) == 48, "keep in sync with fentry.go");
_Static_assert(__builtin_offsetof(struct tracker_event, tag) == 64, "keep in sync with fentry.go");
_Static_assert(__builtin_offsetof(struct tracker_event, comm) == 72, "keep in sync with fentry.go");
_Static_assert(__builtin_offsetof(struct tracker_event, leader_start) == 88, "keep in sync with fentry.go");

/* 1 MiB holds about 10900 records. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Records that did not fit in the ring. User space turns growth into EventLost. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline void emit(struct bpf_prog *prog, __u32 id, __u32 kind)
{
	struct tracker_event *e;
	struct bpf_prog_aux *aux;
	struct task_struct *task;
	__u64 *lost_count;
	__u64 pid_tgid;
	__u32 zero = 0;

	/* Subprograms go through the same paths before the ID is allocated. */
	if (!id)
		return;

	lost_count = bpf_map_lookup_elem(&lost, &zero);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		if (lost_count)
			__sync_fetch_and_add(lost_count, 1);
		return;
	}

	pid_tgid = bpf_get_current_pid_tgid();
	e->ktime = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->lost = lost_count ? *lost_count : 0;
	e->kind = kind;
	e->prog_id = id;
	e->prog_type = BPF_CORE_READ(prog, type);
	e->tgid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->pad = 0;
	aux = BPF_CORE_READ(prog, aux);
	if (bpf_core_read(&e->name, sizeof(e->name), &aux->name))
		__builtin_memset(&e->name, 0, sizeof(e->name));
	if (bpf_core_read(&e->tag, sizeof(e->tag), &prog->tag))
		__builtin_memset(&e->tag, 0, sizeof(e->tag));
	if (bpf_get_current_comm(&e->comm, sizeof(e->comm)))
		__builtin_memset(&e->comm, 0, sizeof(e->comm));
	/* With the tgid it names one process instance: user space checks it
	 * against /proc/<tgid>/stat, so a reused PID is never blamed. The
	 * boot clock is the one /proc's start time counts in. */
	task = (struct task_struct *)bpf_get_current_task();
	e->leader_start = BPF_CORE_READ(task, group_leader, start_boottime);
	bpf_ringbuf_submit(e, 0);
}

/* Load: called once per loaded program, after bpf_prog_alloc_id. */
SEC("fentry/bpf_prog_kallsyms_add")
int BPF_PROG(load_kallsyms_add, struct bpf_prog *prog)
{
	emit(prog, BPF_CORE_READ(prog, aux, id), TRACKER_EVENT_LOAD);
	return 0;
}

/*
 * Load: the PERF_RECORD_BPF_EVENT producer, called on load and unload.
 * Not attachable on Debian 5.10.
 */
SEC("fentry/perf_event_bpf_event")
int BPF_PROG(load_perf_event, struct bpf_prog *prog, enum perf_bpf_event_type type)
{
	if (type == PERF_BPF_EVENT_PROG_LOAD)
		emit(prog, BPF_CORE_READ(prog, aux, id), TRACKER_EVENT_LOAD);
	return 0;
}

/*
 * Release: runs when the last reference is gone, before bpf_prog_free_id.
 * Static, but a real symbol on Debian 6.1 and later; absent in 5.10.
 */
SEC("fentry/bpf_prog_put_deferred")
int BPF_PROG(release_put_deferred, struct work_struct *work)
{
	struct bpf_prog_aux *aux;

	aux = (void *)work - bpf_core_field_offset(struct bpf_prog_aux, work);
	emit(BPF_CORE_READ(aux, prog), BPF_CORE_READ(aux, id), TRACKER_EVENT_RELEASE);
	return 0;
}

/*
 * Release: the unload side of perf_event_bpf_event. Kernels without the 2023
 * fix that restored the ID pass ID 0 here; emit drops those records.
 */
SEC("fentry/perf_event_bpf_event")
int BPF_PROG(release_perf_event, struct bpf_prog *prog, enum perf_bpf_event_type type)
{
	if (type == PERF_BPF_EVENT_PROG_UNLOAD)
		emit(prog, BPF_CORE_READ(prog, aux, id), TRACKER_EVENT_RELEASE);
	return 0;
}

/* Release: the ID is still set on entry. Inlined, so never fires, on Debian 6.1 and 6.12. */
SEC("fentry/bpf_prog_free_id")
int BPF_PROG(release_free_id, struct bpf_prog *prog)
{
	emit(prog, BPF_CORE_READ(prog, aux, id), TRACKER_EVENT_RELEASE);
	return 0;
}
