package loader

import (
	"sync"

	"golang.org/x/sys/unix"
)

// mapsAhead is the read of every map of the system that a OneSweep Kernel
// starts when it loads its iterators (right after the map iterator), so
// that the map reads of its one sweep overlap the iterators' load and the
// program reads instead of following them: a map's IDs are known only once its programs are read,
// but with thousands of maps their reads are most of a one-shot's time,
// and the iterators' load mostly keeps one CPU busy. (Without the
// iterators, few programs, the /proc walk of the holders already overlaps
// the reads; reading the maps early too only slowed it down.) Each value
// is handed out once; a map the read missed (created later, or not
// readable then) is read when asked for.
type mapsAhead struct {
	done chan struct{}
	mu   sync.Mutex
	// infos holds the maps read without error, by ID; taken ones are
	// deleted.
	infos map[uint32]*MapInfo
}

// startMapsAhead starts the read of every map on a goroutine of its own:
// the maps listed by one run of the map iterator it (see ReadMaps), or,
// when it is nil or fails, by a BPF_MAP_GET_NEXT_ID walk, then read by
// ReadMaps' worker pool. The caller keeps it open until the read is done.
func startMapsAhead(it *bpfIter) *mapsAhead {
	a := &mapsAhead{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		ids, known, listed := listAllMaps(it)
		if ids == nil {
			var err error
			if ids, err = walkIDs(unix.BPF_MAP_GET_NEXT_ID, "map", nil); err != nil {
				return // ReadMaps reads every map itself
			}
		}
		infos, errs := readMaps(ids, known, listed)
		a.infos = make(map[uint32]*MapInfo, len(ids))
		for i, id := range ids {
			if errs[i] == nil {
				a.infos[id] = &infos[i]
			}
		}
	}()
	return a
}

// take waits for the read to end and returns, by index of ids, the info
// of each map it read, removing them; nil at the index of a map it did
// not read, and nil as a whole when there is no read (a is nil).
func (a *mapsAhead) take(ids []uint32) []*MapInfo {
	if a == nil {
		return nil
	}
	<-a.done
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*MapInfo, len(ids))
	for i, id := range ids {
		if info, ok := a.infos[id]; ok {
			out[i] = info
			delete(a.infos, id)
		}
	}
	return out
}

// listAllMaps returns every map the iterator it lists, with what it says
// of each, or nils when it is nil or fails.
func listAllMaps(it *bpfIter) ([]uint32, []sysMapInfo, []bool) {
	if it == nil {
		return nil, nil, nil
	}
	data, err := it.read(nil)
	if err != nil {
		return nil, nil, nil
	}
	n := len(data) / iterMapRecordSize
	ids := make([]uint32, 0, n)
	known := make([]sysMapInfo, 0, n)
	walkIterMaps(data, func(mi *sysMapInfo) {
		ids = append(ids, mi.ID)
		known = append(known, *mi)
	})
	listed := make([]bool, len(ids))
	for i := range listed {
		listed[i] = true
	}
	return ids, known, listed
}
