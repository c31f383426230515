package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/cilium/ebpf"
)

// loadProgIters loads and attaches the two iter/bpf_prog programs: with
// and without map IDs, the latter only when withStats is set (stats is
// nil otherwise). checkProgIters checks them. Requires Linux 5.8
// (bpf_prog iterators), 5.19 (bpf_map_lookup_percpu_elem) and 6.2
// (bpf_rdonly_cast).
func loadProgIters(spec *ebpf.CollectionSpec, ld *iterLoader, withStats bool) (full, stats *bpfIter, err error) {
	spec = spec.Copy()
	if err := setPossibleCPUs(spec); err != nil {
		return nil, nil, err
	}
	names := []string{"dump_progs"}
	if withStats {
		// Loaded together: they share cpu_offsets (.bss).
		names = append(names, "dump_prog_stats")
	}
	progs, err := ld.load(spec, names...)
	if err != nil {
		return nil, nil, fmt.Errorf("loading iter/bpf_prog: %w", err)
	}
	if full, err = attachIter(progs[0]); err != nil {
		if withStats {
			progs[1].Close()
		}
		return nil, nil, fmt.Errorf("iter/bpf_prog: %w", err)
	}
	if withStats {
		if stats, err = attachIter(progs[1]); err != nil {
			full.close()
			return nil, nil, fmt.Errorf("iter/bpf_prog: %w", err)
		}
	}
	return full, stats, nil
}

// setPossibleCPUs sets the iterator object's list of possible CPUs.
func setPossibleCPUs(spec *ebpf.CollectionSpec) error {
	cpus, err := possibleCPUs()
	if err != nil {
		return err
	}
	if len(cpus) > iterMaxCPUs {
		return fmt.Errorf("%d possible CPUs, iterator handles %d", len(cpus), iterMaxCPUs)
	}
	var list [iterMaxCPUs]uint32
	for i, cpu := range cpus {
		list[i] = uint32(cpu)
	}
	if err := spec.Variables["nr_possible_cpus"].Set(uint32(len(cpus))); err != nil {
		return fmt.Errorf("setting nr_possible_cpus: %w", err)
	}
	if err := spec.Variables["possible_cpus"].Set(list); err != nil {
		return fmt.Errorf("setting possible_cpus: %w", err)
	}
	return nil
}

// iterRecMaps returns how many maps the program of a record uses (0 for
// a nil record).
func iterRecMaps(rec []byte) uint32 {
	if len(rec) < iterProgHeaderSize {
		return 0
	}
	return binary.NativeEndian.Uint32(rec[64:])
}

func iterRecLoadTime(rec []byte) uint64 { return binary.NativeEndian.Uint64(rec[16:]) }

// parseIterProg fills info from one iter/bpf_prog record, with the map
// IDs the record carries (reusing info's storage); names, when not nil,
// interns the name. It reports false when the program has more maps than
// the record holds.
func parseIterProg(rec []byte, info *ProgramInfo, names *nameCache) bool {
	ne := binary.NativeEndian
	info.ID = ne.Uint32(rec[0:])
	info.Type = ne.Uint32(rec[4:])
	copy(info.Tag[:], rec[8:16])
	info.LoadTime = ne.Uint64(rec[16:])
	info.RunTime = ne.Uint64(rec[24:])
	info.RunCount = ne.Uint64(rec[32:])
	info.RecursionMisses = ne.Uint64(rec[40:])
	name := iterRecName(rec)
	if names != nil {
		info.Name = names.intern(name)
	} else {
		info.Name = string(name)
	}
	info.MapIDs = info.MapIDs[:0]
	for off := iterProgHeaderSize; off+4 <= len(rec); off += 4 {
		info.MapIDs = append(info.MapIDs, ne.Uint32(rec[off:]))
	}
	return ne.Uint32(rec[64:]) == uint32(len(info.MapIDs))
}

// iterStatsRecordSize is the size of a dump_prog_stats record (struct
// iter_stats_record in bpf/iter.bpf.c): ID, map count, tag, run time,
// run count, recursion misses.
const iterStatsRecordSize = 40

// parseIterStats fills info from one dump_prog_stats record: its ID and
// numbers, not its type, tag, name, load time or map IDs.
func parseIterStats(rec []byte, info *ProgramInfo) {
	ne := binary.NativeEndian
	info.ID = ne.Uint32(rec[0:])
	info.RunTime = ne.Uint64(rec[16:])
	info.RunCount = ne.Uint64(rec[24:])
	info.RecursionMisses = ne.Uint64(rec[32:])
}

// statsRecMaps and statsRecTag are a dump_prog_stats record's map count
// and tag.
func statsRecMaps(rec []byte) uint32 { return binary.NativeEndian.Uint32(rec[4:]) }
func statsRecTag(rec []byte) [8]byte { return [8]byte(rec[8:16]) }

// iterRecName is the program name of a dump_progs record.
func iterRecName(rec []byte) []byte { return cString(rec[48:64]) }

// iterRecIdentity is what of a dump_progs record stays fixed for the
// program's life, its name interned in names.
func iterRecIdentity(rec []byte, names *nameCache) knownIdentity {
	id := knownIdentity{typ: binary.NativeEndian.Uint32(rec[4:]), name: names.intern(iterRecName(rec))}
	copy(id.tag[:], rec[8:16])
	return id
}

// iterFullPassMin is how many new programs make ReadPrograms run the
// iterator with map IDs rather than read each of them with bpf(2).
const iterFullPassMin = 16

// ReadPrograms reads every program of ids and calls fn once per ID, with
// its info or an error wrapping os.ErrNotExist when the program is gone.
// info is only valid during the call, and fn must not call ReadPrograms.
// ids is not modified.
//
// Where the bpf_prog iterators load (see Iterators), one iterator run
// reads all programs, a few read(2) calls in all. The map IDs of a
// program are read once and kept while its load time and map count stay
// the same: later sweeps run the iterator without them, which saves two
// dependent cache misses per program. New programs are read with map IDs
// by bpf(2), or by one more iterator run when there are many. Otherwise,
// and for a program with more than 64 maps, three bpf(2) calls per
// program, as ReadProgram. Both ways give the same results.
func (k *Kernel) ReadPrograms(ids []uint32, fn func(id uint32, info *ProgramInfo, err error)) error {
	return k.readPrograms(ids, false, fn)
}

// ReadAllPrograms is ReadPrograms for every program the kernel has: fn is
// called once for each ID of ids, as by ReadPrograms, and once for each
// other program the kernel listed at the time of the read, with its info.
// A caller keeping an inventory of ids thus learns in one pass what it
// missed and (from os.ErrNotExist) what is gone: after the call, the IDs
// fn saw without an error are the kernel's program list. The other
// programs cost nothing extra where the bpf_prog iterator loads (the same
// run lists them); otherwise a BPF_PROG_GET_NEXT_ID walk lists them and
// each new one is read with bpf(2). An error means the list may be
// incomplete (fn was still called for every ID of ids). Requires Linux
// 4.13.
func (k *Kernel) ReadAllPrograms(ids []uint32, fn func(id uint32, info *ProgramInfo, err error)) error {
	return k.readPrograms(ids, true, fn)
}

// readPrograms is ReadPrograms, or ReadAllPrograms when all is set.
func (k *Kernel) readPrograms(ids []uint32, all bool, fn func(id uint32, info *ProgramInfo, err error)) error {
	k.batchMu.Lock()
	defer k.batchMu.Unlock()

	var its *iterators
	if i := k.loadedIterators(); i != nil && i.progs != nil {
		its = i
	}
	if its == nil || (len(ids) == 0 && !all) {
		if all {
			return k.readAllProgramsSyscall(ids, fn)
		}
		k.readProgramsSyscall(ids, fn)
		return nil
	}
	set := &k.wanted
	set.reset(ids)
	report := fn
	if all {
		// Remember what was reported, for the walk after a cut.
		k.reported = k.reported[:0]
		report = func(id uint32, info *ProgramInfo, err error) {
			k.reported = append(k.reported, id)
			fn(id, info, err)
		}
	}
	var cut error
	if len(k.known.progs) > 0 && its.progStats != nil {
		cut = k.readProgramsCached(its, set, all, report)
	} else {
		cut = k.readProgramsFull(its.progs, set, all, report)
	}
	info := &k.batchInfo
	for _, id := range ids {
		if !set.take(id) {
			continue
		}
		if cut != nil {
			// The iterator failed or its output was cut short: read the
			// rest one by one.
			err := k.readProgramInto(id, info)
			report(id, info, err)
			continue
		}
		*info = ProgramInfo{MapIDs: info.MapIDs[:0]}
		fn(id, info, fmt.Errorf("reading program %d: %w", id, errProgramGone))
	}
	if all && cut != nil {
		// The programs past the cut are listed by bpf(2).
		return k.readUnreported(fn)
	}
	return nil
}

// readUnreported lists the programs with BPF_PROG_GET_NEXT_ID and reads
// those not in k.reported with bpf(2), for ReadAllPrograms after the
// iterator failed.
func (k *Kernel) readUnreported(fn func(id uint32, info *ProgramInfo, err error)) error {
	done := &k.pendingSet
	done.reset(k.reported)
	all, err := walkProgramIDs(k.scratchIDs[:0])
	k.scratchIDs = all[:0]
	info := &k.batchInfo
	for _, id := range all {
		if done.has(id) {
			continue
		}
		if rerr := k.readProgramInto(id, info); !errors.Is(rerr, os.ErrNotExist) {
			fn(id, info, rerr)
		}
	}
	return err
}

// readAllProgramsSyscall is ReadAllPrograms through bpf(2): the IDs of a
// BPF_PROG_GET_NEXT_ID walk and those of ids, each read once.
func (k *Kernel) readAllProgramsSyscall(ids []uint32, fn func(id uint32, info *ProgramInfo, err error)) error {
	walked, err := walkProgramIDs(k.scratchIDs[:0])
	union := append(walked, ids...)
	slices.Sort(union)
	union = slices.Compact(union)
	k.scratchIDs = union[:0]
	asked := &k.pendingSet
	asked.reset(ids)
	info := &k.batchInfo
	for _, id := range union {
		rerr := k.readProgramInto(id, info)
		if rerr != nil && errors.Is(rerr, os.ErrNotExist) && !asked.has(id) {
			continue // listed, then gone before the read: never seen
		}
		fn(id, info, rerr)
	}
	if err != nil {
		return fmt.Errorf("listing programs: %w", err)
	}
	return nil
}

// readProgramsFull runs the iterator with map IDs, calls fn for the
// programs of set (taking them out), and for every other program listed
// when all is set, and rebuilds the map ID cache. An error means the
// output was not read to its end.
func (k *Kernel) readProgramsFull(it *bpfIter, set *idSet, all bool, fn func(uint32, *ProgramInfo, error)) error {
	next := &k.knownNext
	next.reset()
	info := &k.batchInfo
	buf, started, err := it.readRecords(k.progBuf, k.progPart, iterProgSize, func(rec []byte) error {
		id := binary.NativeEndian.Uint32(rec)
		complete := iterRecMaps(rec) <= iterMaxMapIDs
		// A OneSweep Kernel has no next sweep to keep the map IDs for.
		if complete && !k.opts.OneSweep {
			next.add(id, iterRecLoadTime(rec), iterRecIdentity(rec, &k.names), iterRecMapIDs(rec, &k.scratchIDs))
		}
		if !set.take(id) && !all {
			return nil
		}
		if !complete {
			err := k.readProgramInto(id, info)
			fn(id, info, err)
			return nil
		}
		parseIterProg(rec, info, &k.names)
		fn(id, info, nil)
		return nil
	})
	k.progBuf = buf[:0]
	if err == nil || started {
		// The cache of what was read, up to a cut if any: the programs
		// past it are read again, and cached, by a later sweep.
		k.known, k.knownNext = k.knownNext, k.known
	}
	return err
}

// iterRecMapIDs decodes the map IDs of a record into *buf.
func iterRecMapIDs(rec []byte, buf *[]uint32) []uint32 {
	ids := (*buf)[:0]
	for off := iterProgHeaderSize; off+4 <= len(rec); off += 4 {
		ids = append(ids, binary.NativeEndian.Uint32(rec[off:]))
	}
	*buf = ids
	return ids
}

// readProgramsCached runs the iterator without map IDs and takes them
// from the cache; programs the cache does not know are read afterwards.
// all is as for readProgramsFull.
func (k *Kernel) readProgramsCached(its *iterators, set *idSet, all bool, fn func(uint32, *ProgramInfo, error)) error {
	// The cache is kept in place: the programs still listed, with the
	// same tag and map count, move down over those gone (w <= j).
	known := &k.known
	pending := k.pending[:0]
	info := &k.batchInfo
	j, w, liveMaps := 0, 0, 0
	buf, started, err := its.progStats.readRecords(k.progBuf, k.progPart, iterStatsSize, func(rec []byte) error {
		id := binary.NativeEndian.Uint32(rec)
		for j < len(known.progs) && known.progs[j].id < id {
			j++
		}
		var kp *knownProg
		if j < len(known.progs) {
			if p := known.progs[j]; p.id == id && p.tag == statsRecTag(rec) && p.nrMaps == statsRecMaps(rec) {
				known.progs[w] = p
				kp = &known.progs[w]
				w, j = w+1, j+1
				liveMaps += int(p.nrMaps)
			}
		}
		if !set.take(id) && !all {
			return nil
		}
		if kp == nil {
			pending = append(pending, id)
			return nil
		}
		parseIterStats(rec, info)
		info.Type, info.Tag, info.Name, info.LoadTime = kp.typ, kp.tag, kp.name, kp.loadTime
		info.MapIDs = append(info.MapIDs[:0], known.ids(kp)...)
		fn(id, info, nil)
		return nil
	})
	k.progBuf = buf[:0]
	if err != nil && !started {
		return err // nothing read: the cache stays as it was
	}
	known.progs = known.progs[:w]
	k.compactKnown(liveMaps)
	k.pending = pending
	if len(pending) == 0 {
		return err
	}
	if len(pending) >= iterFullPassMin {
		// Many new programs: one more iterator run, with map IDs.
		pset := &k.pendingSet
		pset.reset(pending)
		ferr := k.readProgramsFull(its.progs, pset, false, fn)
		for _, id := range pending {
			if !pset.take(id) {
				continue
			}
			if ferr != nil {
				rerr := k.readProgramInto(id, info)
				fn(id, info, rerr)
				continue
			}
			*info = ProgramInfo{MapIDs: info.MapIDs[:0]}
			fn(id, info, fmt.Errorf("reading program %d: %w", id, errProgramGone))
		}
		return err
	}
	for _, id := range pending {
		rerr := k.readProgramInto(id, info)
		if rerr == nil && len(info.MapIDs) <= iterMaxMapIDs {
			k.known.insert(id, info.LoadTime, knownIdentity{typ: info.Type, tag: info.Tag, name: info.Name}, info.MapIDs)
		}
		fn(id, info, rerr)
	}
	return err
}

// readProgramsSyscall is ReadPrograms through bpf(2).
func (k *Kernel) readProgramsSyscall(ids []uint32, fn func(id uint32, info *ProgramInfo, err error)) {
	info := &k.batchInfo
	for _, id := range ids {
		err := k.readProgramInto(id, info)
		fn(id, info, err)
	}
}

// appendProgramIDsIter appends the IDs of every program to dst with one
// run of the iterator, if it is loaded already (listing IDs never loads
// it), and reports whether it did.
func (k *Kernel) appendProgramIDsIter(dst []uint32) ([]uint32, bool) {
	k.batchMu.Lock()
	defer k.batchMu.Unlock()
	k.mu.Lock()
	its := k.iters
	k.mu.Unlock()
	if its == nil {
		return dst, false
	}
	// A OneSweep Kernel lists the IDs from the output its sweep reads
	// (kept since the iterators loaded): no run at all.
	it, withMaps := its.progStats, false
	if it == nil && its.progs != nil && its.progs.kept != nil {
		it, withMaps = its.progs, true
	}
	if it == nil {
		return dst, false
	}
	n := len(dst)
	buf, _, err := it.readRecords(k.progBuf, k.progPart, iterRecordSize(withMaps), func(rec []byte) error {
		dst = append(dst, binary.NativeEndian.Uint32(rec))
		return nil
	})
	k.progBuf = buf[:0]
	if err != nil {
		return dst[:n], false
	}
	return dst, true
}
