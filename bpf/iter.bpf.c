//go:build ignore

// SPDX-License-Identifier: GPL-2.0

/*
 * BPF iterators behind the tracker's sweeps (internal/loader/iter.go).
 *
 * One read of an iterator fd replaces three bpf(2) calls per program
 * (dump_progs) or map (dump_maps), or a walk of every /proc/<pid>/fd
 * (dump_prog_fds). They
 * live apart from tracker.bpf.c: iterators load on kernels that refuse
 * trampoline programs.
 */

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* Map IDs written per program; a program with more is re-read by bpf(2). */
#define ITER_MAX_MAP_IDS 64
/* CPUs whose stats are summed; nr_possible_cpus is capped to this. */
#define ITER_MAX_CPUS 1024

/*
 * One program, as bpf_prog_info reports it. Keep in sync with
 * iterProgHeaderSize and parseIterProg in iter_progs.go. Written packed
 * by dump_progs: the 68-byte header followed by min(nr_map_ids, 64) map
 * IDs.
 */
struct iter_prog_record {
	__u32 id;
	__u32 type;
	__u8 tag[8];
	__u64 load_time;
	__u64 run_time_ns;
	__u64 run_cnt;
	__u64 recursion_misses;
	char name[16];
	__u32 nr_map_ids;
	__u32 map_ids[ITER_MAX_MAP_IDS];
} __attribute__((packed));

#define ITER_PROG_HEADER_SIZE 68

/*
 * One map, as bpf_map_info reports it up to its name. Keep in sync with
 * iterMapRecordSize and walkIterMaps in iter_maps.go.
 */
struct iter_map_record {
	__u32 id;
	__u32 type;
	__u32 key_size;
	__u32 value_size;
	__u32 max_entries;
	__u32 map_flags;
	char name[16];
};

/* One fd on a program. Keep in sync with parseIterHolders in iter.go. */
struct iter_fd_record {
	__u32 tgid;
	__u32 prog_id;
};

/*
 * The possible CPUs, filled in by user space from
 * /sys/devices/system/cpu/possible: bpf_prog_info sums the per-CPU stats
 * of every possible CPU.
 */
const volatile __u32 nr_possible_cpus = 0;
const volatile __u32 possible_cpus[ITER_MAX_CPUS] = {};

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct iter_prog_record);
} prog_scratch SEC(".maps");

/*
 * __per_cpu_offset[cpu] of each possible CPU, found once (they are fixed
 * from boot). prog->stats is __percpu, but without BTF type tags
 * bpf_per_cpu_ptr refuses it, and typed per-CPU ksyms need data symbols in
 * kallsyms, which most kernels lack. So the offsets are taken from a map
 * of our own: the per-CPU array prog_scratch keeps its per-CPU pointer in
 * bpf_array.pptrs[0], and bpf_map_lookup_percpu_elem returns that pointer
 * plus the CPU's offset.
 */
__u64 cpu_offsets[ITER_MAX_CPUS];
__u32 cpu_offsets_ready;
/*
 * Turns a pointer into a number: iterators load with CAP_PERFMON, which
 * lets a pointer be stored in a map value; it reads back as a scalar. One
 * slot is enough: user space runs these iterators one at a time
 * (Kernel.batchMu in iter_progs.go).
 */
__u64 ptr_slot;

static __always_inline __u64 ptr_value(const void *p)
{
	*(const void *volatile *)&ptr_slot = p;
	return *(volatile __u64 *)&ptr_slot;
}

static __always_inline int load_cpu_offsets(void)
{
	__u64 pptr = 0;
	__u32 zero = 0;

	bpf_probe_read_kernel(&pptr, sizeof(pptr),
			      (void *)(ptr_value(&prog_scratch) + bpf_core_field_offset(struct bpf_array, pptrs)));
	if (!pptr)
		return -1;
	for (__u32 i = 0; i < ITER_MAX_CPUS && i < nr_possible_cpus; i++) {
		void *v = bpf_map_lookup_percpu_elem(&prog_scratch, &zero, possible_cpus[i]);
		if (!v)
			return -1;
		cpu_offsets[i] = ptr_value(v) - pptr;
	}
	cpu_offsets_ready = 1;
	return 0;
}

/* The struct bpf_map pointer at addr, read without a helper call: the
 * address is taken as that of bpf_iter_aux_info.map. */
static __always_inline const struct bpf_map *map_ptr_at(__u64 addr)
{
	const struct bpf_iter_aux_info *aux =
		bpf_rdonly_cast((void *)(addr - bpf_core_field_offset(struct bpf_iter_aux_info, map)),
				bpf_core_type_id_kernel(struct bpf_iter_aux_info));
	return aux->map;
}

/*
 * One program's numbers, for sweeps of programs already read
 * (dump_prog_stats): what tells the program apart (its ID and tag, and its
 * map count, which BPF_PROG_BIND_MAP may raise) and what changes. Its
 * name, type and load time, fixed at load, user space keeps from the
 * first read. The tag sits in the cache line of bpf_prog that holds the
 * stats pointer, and the ID and map count in the line of bpf_prog_aux
 * that the iterator's reference already touched; the load time would
 * cost one more miss per program. Keep in sync with iterStatsRecordSize
 * and parseIterStats in iter_progs.go.
 */
struct iter_stats_record {
	__u32 id;
	__u32 nr_map_ids;
	__u8 tag[8];
	__u64 run_time_ns;
	__u64 run_cnt;
	__u64 recursion_misses;
};
_Static_assert(sizeof(struct iter_stats_record) == 40, "no padding: iterStatsRecordSize");

/*
 * Sums prog's per-CPU stats. prog->stats is __percpu, but BTF lacks the
 * type tag that would let bpf_per_cpu_ptr take it: each CPU's offset is
 * added by hand.
 */
static __always_inline void sum_stats(const struct bpf_prog *prog, __u64 *nsecs, __u64 *cnt, __u64 *misses)
{
	__u64 stats = ptr_value(prog->stats);

	for (__u32 i = 0; i < ITER_MAX_CPUS && i < nr_possible_cpus; i++) {
		const struct bpf_prog_stats *st =
			bpf_rdonly_cast((void *)(stats + cpu_offsets[i]),
					bpf_core_type_id_kernel(struct bpf_prog_stats));
		*cnt += st->cnt.v.a.a.counter;
		*nsecs += st->nsecs.v.a.a.counter;
		*misses += st->misses.v.a.a.counter;
	}
}

/*
 * Writes one program's record with up to 64 of its map IDs. Most of the
 * cost is cache misses: the per-CPU stats, three lines of bpf_prog_aux,
 * the used-maps array and each map. Every independent load is issued
 * before any result is used, so that the misses overlap.
 */
SEC("iter/bpf_prog")
int dump_progs(struct bpf_iter__bpf_prog *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct bpf_prog *prog = ctx->prog;
	__u32 zero = 0;

	if (!prog)
		return 0;
	if (!cpu_offsets_ready && load_cpu_offsets())
		return 0;
	struct iter_prog_record *rec = bpf_map_lookup_elem(&prog_scratch, &zero);
	if (!rec)
		return 0;

	struct bpf_prog_aux *aux = prog->aux;
	__u64 used_maps = ptr_value(aux->used_maps);
	__u32 nr = aux->used_map_cnt;
	__u64 load_time = aux->load_time;
	__u64 name_lo = *(const __u64 *)&aux->name[0];
	__u64 name_hi = *(const __u64 *)&aux->name[8];
	__u64 nsecs = 0, cnt = 0, misses = 0;
	sum_stats(prog, &nsecs, &cnt, &misses);
	__u32 n = nr < ITER_MAX_MAP_IDS ? nr : ITER_MAX_MAP_IDS;
	for (__u32 i = 0; i < ITER_MAX_MAP_IDS && i < n; i++)
		rec->map_ids[i] = map_ptr_at(used_maps + i * sizeof(void *))->id;

	rec->id = aux->id;
	rec->type = prog->type;
	__builtin_memcpy(rec->tag, prog->tag, sizeof(rec->tag));
	rec->load_time = load_time;
	*(__u64 *)&rec->name[0] = name_lo;
	*(__u64 *)&rec->name[8] = name_hi;
	rec->run_time_ns = nsecs;
	rec->run_cnt = cnt;
	rec->recursion_misses = misses;
	rec->nr_map_ids = nr;
	if (n > ITER_MAX_MAP_IDS)
		return 0;
	bpf_seq_write(seq, rec, ITER_PROG_HEADER_SIZE + n * sizeof(__u32));
	return 0;
}

/*
 * Every program's numbers, for sweeps of programs already read: no map
 * IDs (two dependent misses each), no name, tag or type.
 */
SEC("iter/bpf_prog")
int dump_prog_stats(struct bpf_iter__bpf_prog *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct bpf_prog *prog = ctx->prog;

	if (!prog)
		return 0;
	if (!cpu_offsets_ready && load_cpu_offsets())
		return 0;
	struct bpf_prog_aux *aux = prog->aux;
	struct iter_stats_record rec = {
		.id = aux->id,
		.nr_map_ids = aux->used_map_cnt,
	};
	__builtin_memcpy(rec.tag, prog->tag, sizeof(rec.tag));
	sum_stats(prog, &rec.run_time_ns, &rec.run_cnt, &rec.recursion_misses);
	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}

/* bpf_prog_fops, learned from the first file named "bpf-prog": the symbol
 * is neither in kallsyms nor in BTF on most kernels. */
__u64 prog_fops;

SEC("iter/task_file")
int dump_prog_fds(struct bpf_iter__task_file *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;

	if (!task || !file)
		return 0;
	__u64 fops = (__u64)file->f_op;
	if (!fops)
		return 0;
	if (prog_fops != fops) {
		if (prog_fops)
			return 0;
		/* anon_inode_getfd names the dentry "bpf-prog"; /proc shows it
		 * as "anon_inode:bpf-prog". */
		struct {
			__u64 word; /* "bpf-prog", little-endian */
			__u8 nul;
		} name = {};
		bpf_probe_read_kernel(&name, 9, file->f_path.dentry->d_name.name);
		if (name.word != 0x676f72702d667062ULL || name.nul)
			return 0;
		prog_fops = fops;
	}
	const struct bpf_prog *prog =
		bpf_rdonly_cast(file->private_data, bpf_core_type_id_kernel(struct bpf_prog));
	struct iter_fd_record rec = {
		.tgid = task->tgid,
		.prog_id = prog->aux->id,
	};
	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}

/*
 * Every map's shape and name: one read lists what BPF_MAP_GET_NEXT_ID,
 * BPF_MAP_GET_FD_BY_ID and BPF_OBJ_GET_INFO_BY_FD tell of each map.
 */
SEC("iter/bpf_map")
int dump_maps(struct bpf_iter__bpf_map *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct bpf_map *map = ctx->map;

	if (!map)
		return 0;
	struct iter_map_record rec = {
		.id = map->id,
		.type = map->map_type,
		.key_size = map->key_size,
		.value_size = map->value_size,
		.max_entries = map->max_entries,
		.map_flags = map->map_flags,
	};
	*(__u64 *)&rec.name[0] = *(const __u64 *)&map->name[0];
	*(__u64 *)&rec.name[8] = *(const __u64 *)&map->name[8];
	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}
