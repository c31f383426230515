package state

import (
	"slices"

	"github.com/bpfstats/tracker/internal/loader"
)

// MapBatchReader is an extension point of Kernel: a kernel that reads many
// maps at once (loader.Kernel, on a few goroutines) implements it, and a
// sweep then reads the maps it needs in one call rather than one ReadMap
// each.
type MapBatchReader interface {
	// ReadMaps calls fn once for every ID of ids, with its info or an
	// error (wrapping os.ErrNotExist when the map is gone), on the
	// caller's goroutine. info is only valid during the call.
	ReadMaps(ids []uint32, fn func(id uint32, info *loader.MapInfo, err error))
}

// mapBatchMin is how many map reads a sweep needs before it hands them to
// a MapBatchReader: fewer are read one by one by mapInfo.
const mapBatchMin = 32

// batchReadMaps reads, in one batch, the maps mapInfo would read one by one
// this sweep: those of the inventory's programs that are new, and known
// maps whose memlock changes (MemlockGrows). It marks them used,
// so that mapInfo finds them done. It runs after the used marks are
// cleared.
func (t *Tracker) batchReadMaps() {
	br, ok := t.kernel.(MapBatchReader)
	if !ok {
		return
	}
	due := func(id uint32) bool {
		m, ok := t.maps[id]
		return !ok || (!m.used && m.info.MemlockGrows())
	}
	// One pass, yielding as readMaps does; the slice is reused.
	ids, n := t.mapBatch[:0], 0
	for _, p := range t.programs {
		for _, id := range p.info.MapIDs {
			if due(id) {
				ids = append(ids, id)
			}
		}
		t.yieldEach(&n)
	}
	t.mapBatch = ids
	if len(ids) < mapBatchMin {
		return
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	// Thousands of maps take tens of milliseconds: read off the loop
	// (events go on being applied), then merged on it.
	type mapRead struct {
		id   uint32
		info loader.MapInfo
		err  error
	}
	reads := make([]mapRead, 0, len(ids))
	t.pace.offload(func() {
		br.ReadMaps(ids, func(id uint32, info *loader.MapInfo, err error) {
			reads = append(reads, mapRead{id, *info, err})
		})
	})
	if len(t.maps) == 0 {
		t.maps = make(map[uint32]*mapEntry, len(reads)) // sized once, as in Resync
	}
	for i := range reads {
		id, info, err := reads[i].id, &reads[i].info, reads[i].err
		m, known := t.maps[id]
		switch {
		case known && err == nil:
			if m.info.Memlock != info.Memlock {
				m.info.Memlock = info.Memlock
				t.memlockChanged = true
			}
		case known:
		case err == nil:
			m = &mapEntry{info: *info}
		default:
			// Gone between the program read and now, or unreadable:
			// counted with what is known (its ID), as mapInfo does.
			m = &mapEntry{info: loader.MapInfo{ID: id}}
		}
		m.used = true
		t.maps[id] = m
	}
}
