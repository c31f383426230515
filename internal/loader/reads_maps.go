package loader

import (
	"fmt"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Bounds of ReadMaps' worker pool: one worker per mapsPerWorker maps, at
// most mapWorkersMax. Most of a map read is the kernel's (opening its
// fdinfo under /proc is two thirds of it), so workers beyond the CPUs
// still overlap; a few more gain nothing.
const (
	mapWorkersMax = 4
	mapsPerWorker = 64
)

// mapReader holds the buffers of one ReadMaps worker.
type mapReader struct {
	// fdinfoDir is an fd of /proc/self/fdinfo, or AT_FDCWD when it could
	// not be opened; path is relative to it.
	fdinfoDir int
	// shapes is shared by the workers of one readMaps.
	shapes *memlockByShape
	info   sysMapInfo
	path   []byte
	fdinfo []byte
}

// procSelfFdinfo is the directory of this process's fdinfo files.
const procSelfFdinfo = "/proc/self/fdinfo/"

// openFdinfoDir opens /proc/self/fdinfo for the map reads of one ReadMaps
// call: a lookup of the fd's name there is cheaper than one of the whole
// path from the root (most of a map read is opening its fdinfo). It
// returns AT_FDCWD when the directory cannot be opened, and a close
// function.
func openFdinfoDir() (int, func()) {
	fd, err := openat(unix.AT_FDCWD, []byte(procSelfFdinfo+"\x00"), unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return unix.AT_FDCWD, func() {}
	}
	return fd, func() { unix.Close(fd) }
}

// ReadMaps reads every map of ids as ReadMap does and calls fn once per ID,
// in the order of ids, with its info or an error (wrapping os.ErrNotExist
// when the map is gone). info is only valid during the call; fn runs on
// the caller's goroutine, after all reads are done. The values are
// ReadMap's: memlock is the fdinfo line, read once per shape for the maps
// whose shape fixes it (see shapeFixed).
//
// When ids are sorted and many (mapIterMin), one run of the map iterator
// lists what bpf(2) would say of each map, and only the fdinfo of one map
// per shape, and of the maps whose memlock varies, is read. The other
// reads run on a small pool of goroutines (at most 4), each opening,
// reading and closing one map at a time. A OneSweep Kernel without the
// map iterator takes each map's values, once, from the read of every map
// it started when it loaded its iterators (see startMapsAhead), and reads
// the others now. Requires Linux 4.13; the iterator, 5.8.
func (k *Kernel) ReadMaps(ids []uint32, fn func(id uint32, info *MapInfo, err error)) {
	k.mu.Lock()
	early := k.mapsAhead
	k.mu.Unlock()
	ahead := early.take(ids)
	live := ids
	if ahead != nil {
		live = make([]uint32, 0, len(ids))
		for i, id := range ids {
			if ahead[i] == nil {
				live = append(live, id)
			}
		}
	}
	known, listed, _ := k.listMaps(live)
	infos, errs := readMaps(live, known, listed)
	j := 0
	for i, id := range ids {
		if ahead != nil && ahead[i] != nil {
			fn(id, ahead[i], nil)
			continue
		}
		fn(id, &infos[j], errs[j])
		j++
	}
}

// readMaps reads every map of ids as ReadMap does, on a pool of at most
// mapWorkersMax goroutines, and returns the infos and errors by index.
// known, when not nil, holds by index what the map iterator listed of the
// maps where listed is true: their memlock is taken from another map of
// their shape where that fixes it. The others, and those not listed (a
// map created after the iterator's run, or gone), are read with bpf(2).
func readMaps(ids []uint32, known []sysMapInfo, listed []bool) ([]MapInfo, []error) {
	infos := make([]MapInfo, len(ids))
	errs := make([]error, len(ids))
	if len(ids) == 0 {
		return infos, errs
	}
	dir, closeDir := openFdinfoDir()
	defer closeDir()
	shapes := new(memlockByShape)
	one := func(r *mapReader, i int) {
		if listed != nil && listed[i] {
			if memlock, ok := shapes.get(&known[i]); ok {
				fillMapInfo(&infos[i], &known[i], memlock)
				return
			}
		}
		errs[i] = r.read(ids[i], &infos[i])
	}
	workers := min(mapWorkersMax, (len(ids)+mapsPerWorker-1)/mapsPerWorker)
	if workers <= 1 {
		r := newMapReader(dir, shapes)
		for i := range ids {
			one(r, i)
		}
		return infos, errs
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := newMapReader(dir, shapes)
			// Interleaved shares: maps of one program, often
			// adjacent IDs, spread over the workers.
			for i := w; i < len(ids); i += workers {
				one(r, i)
			}
		}()
	}
	wg.Wait()
	return infos, errs
}

// newMapReader returns a worker's reader of fdinfo files under dir (see
// openFdinfoDir), sharing shapes with the other workers.
func newMapReader(dir int, shapes *memlockByShape) *mapReader {
	return &mapReader{fdinfoDir: dir, shapes: shapes, path: make([]byte, 0, 64), fdinfo: make([]byte, 4096)}
}

// read is readMapInto with the worker's own buffers, taking the memlock
// of a map whose shape fixes it from a map of that shape read before.
func (r *mapReader) read(id uint32, info *MapInfo) error {
	fd, err := bpfFDByID(unix.BPF_MAP_GET_FD_BY_ID, id)
	if err != nil {
		return fmt.Errorf("opening map %d: %w", id, err)
	}
	defer unix.Close(fd)
	r.info = sysMapInfo{}
	if err := bpfObjInfo(fd, unsafe.Pointer(&r.info), unsafe.Sizeof(r.info)); err != nil {
		return fmt.Errorf("reading info of map %d: %w", id, err)
	}
	if memlock, ok := r.shapes.get(&r.info); ok {
		fillMapInfo(info, &r.info, memlock)
		return nil
	}
	r.path = r.path[:0]
	if r.fdinfoDir == unix.AT_FDCWD {
		r.path = append(r.path, procSelfFdinfo...)
	}
	r.path = strconv.AppendInt(r.path, int64(fd), 10)
	r.path = append(r.path, 0)
	data, err := readSmallFileAt(r.fdinfoDir, r.path, r.fdinfo)
	if err != nil {
		return fmt.Errorf("reading memlock of map %d: reading fdinfo %s: %w", id, r.path[:len(r.path)-1], err)
	}
	memlock, ok := fdinfoField(data, "memlock:")
	if !ok {
		return fmt.Errorf("reading memlock of map %d: no %q line in fdinfo %s", id, "memlock:", r.path[:len(r.path)-1])
	}
	r.shapes.put(&r.info, memlock)
	fillMapInfo(info, &r.info, memlock)
	return nil
}

// fillMapInfo sets info from a bpf_map_info and the fdinfo memlock,
// keeping info's name string when it did not change.
func fillMapInfo(info *MapInfo, mi *sysMapInfo, memlock uint64) {
	info.ID = mi.ID
	info.Type = mi.Type
	if name := cString(mi.Name[:]); string(name) != info.Name {
		info.Name = string(name)
	}
	info.KeySize = mi.KeySize
	info.ValueSize = mi.ValueSize
	info.MaxEntries = mi.MaxEntries
	info.Flags = mi.MapFlags
	info.Memlock = memlock
}
