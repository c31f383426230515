package loader

import (
	"encoding/binary"
	"fmt"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
)

// iterMapRecordSize is struct iter_map_record (keep in sync with
// bpf/iter.bpf.c).
const iterMapRecordSize = 40

// mapIterMin is how many maps a ReadMaps call asks for before it lists
// every map with the iterator rather than asking bpf(2) for each: the
// iterator's run visits every map of the system.
const mapIterMin = 64

// loadMapIter loads and attaches iter/bpf_map and checks it; with keep,
// the iterator keeps the output of its check for the reads to come (see
// bpfIter.kept). Requires Linux 5.8.
func loadMapIter(spec *ebpf.CollectionSpec, ld *iterLoader, keep bool) (*bpfIter, error) {
	progs, err := ld.load(spec.Copy(), "dump_maps")
	if err != nil {
		return nil, fmt.Errorf("loading iter/bpf_map: %w", err)
	}
	it, err := attachIter(progs[0])
	if err != nil {
		return nil, fmt.Errorf("iter/bpf_map: %w", err)
	}
	data, err := checkMapIter(it)
	if err != nil {
		it.close()
		return nil, fmt.Errorf("iter/bpf_map self-check: %w", err)
	}
	if keep {
		it.kept = data
	}
	return it, nil
}

// checkMapIter creates a map and compares what the iterator reports of
// it with what bpf(2) says, and returns the output of the run (which
// lists that map, closed since).
func checkMapIter(it *bpfIter) ([]byte, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "tk_map_check", Type: ebpf.Hash, KeySize: 4, ValueSize: 12, MaxEntries: 3, Flags: bpfFNoPrealloc,
	})
	if err != nil {
		return nil, fmt.Errorf("creating a map to check: %w", err)
	}
	defer m.Close()
	want := new(sysMapInfo)
	if err := bpfObjInfo(m.FD(), unsafe.Pointer(want), unsafe.Sizeof(*want)); err != nil {
		return nil, fmt.Errorf("reading info of the map to check: %w", err)
	}
	data, err := it.read(nil)
	if err != nil {
		return nil, err
	}
	var got sysMapInfo
	found := false
	walkIterMaps(data, func(mi *sysMapInfo) {
		if mi.ID == want.ID {
			got, found = *mi, true
		}
	})
	if !found {
		return nil, fmt.Errorf("map %d not listed", want.ID)
	}
	if got != *want {
		return nil, fmt.Errorf("iterator says %+v, bpf(2) says %+v", got, *want)
	}
	return data, nil
}

// walkIterMaps calls fn for each record of an iter/bpf_map output, in
// the order of the output; mi is only valid during the call.
func walkIterMaps(data []byte, fn func(mi *sysMapInfo)) {
	ne := binary.NativeEndian
	var mi sysMapInfo
	for ; len(data) >= iterMapRecordSize; data = data[iterMapRecordSize:] {
		mi = sysMapInfo{
			ID:         ne.Uint32(data[0:]),
			Type:       ne.Uint32(data[4:]),
			KeySize:    ne.Uint32(data[8:]),
			ValueSize:  ne.Uint32(data[12:]),
			MaxEntries: ne.Uint32(data[16:]),
			MapFlags:   ne.Uint32(data[20:]),
		}
		copy(mi.Name[:], data[24:40])
		fn(&mi)
	}
}

// listMaps runs the map iterator once and returns, by index of ids
// (sorted), the info of each map it lists, and whether it did; false as
// a whole when the iterator is not in use or failed.
func (k *Kernel) listMaps(ids []uint32) ([]sysMapInfo, []bool, bool) {
	if len(ids) < mapIterMin || !slices.IsSorted(ids) {
		return nil, nil, false
	}
	k.batchMu.Lock()
	defer k.batchMu.Unlock()
	its := k.loadedIterators()
	if its == nil || its.maps == nil {
		return nil, nil, false
	}
	data, err := its.maps.read(nil)
	if err != nil {
		return nil, nil, false
	}
	known := make([]sysMapInfo, len(ids))
	listed := make([]bool, len(ids))
	walkIterMaps(data, func(mi *sysMapInfo) {
		if i, ok := slices.BinarySearch(ids, mi.ID); ok {
			known[i], listed[i] = *mi, true
		}
	})
	return known, listed, true
}

// MapIterator loads the BPF iterators when not done yet and reports nil
// when ReadMaps lists the maps with the map iterator, or why it reads
// each with bpf(2) instead. Requires Linux 5.8.
func (k *Kernel) MapIterator() error {
	its := k.loadedIterators()
	switch {
	case its != nil:
		return its.mapsErr
	case k.opts.NoIterators:
		return errIteratorsOff
	}
	return ErrClosed
}
