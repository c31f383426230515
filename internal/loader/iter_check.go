package loader

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"
)

// The self-checks of the iterators: each run once at load, comparing what
// the iterator reports of itself with what bpf(2) and /proc say.

// checkProgIters checks the iter/bpf_prog programs (stats may be nil),
// closing both when one fails. With keep, full keeps the output of its
// check for the reads to come (see bpfIter.kept).
func checkProgIters(full, stats *bpfIter, keep bool) error {
	for _, c := range []struct {
		it       *bpfIter
		withMaps bool
	}{{full, true}, {stats, false}} {
		if c.it == nil {
			continue
		}
		data, err := checkProgIter(c.it, c.withMaps)
		if err != nil {
			full.close()
			stats.close()
			return fmt.Errorf("iter/bpf_prog self-check: %w", err)
		}
		if keep && c.withMaps {
			c.it.kept = data
		}
	}
	return nil
}

// checkProgIter compares the iterator's record of its own program with
// what bpf(2) says of it, and returns the output of the run.
func checkProgIter(it *bpfIter, withMaps bool) ([]byte, error) {
	data, err := it.read(nil)
	if err != nil {
		return nil, err
	}
	var rec []byte
	err = walkIterProgs(data, withMaps, func(r []byte) {
		if rec == nil && binary.NativeEndian.Uint32(r) == it.id {
			rec = r
		}
	})
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, fmt.Errorf("own program %d not listed", it.id)
	}
	want := new(sysProgInfo)
	if err := bpfObjInfo(it.prog.FD(), unsafe.Pointer(want), unsafe.Sizeof(*want)); err != nil {
		return nil, fmt.Errorf("reading own program info: %w", err)
	}
	var got ProgramInfo
	var nrMaps uint32
	if withMaps {
		parseIterProg(rec, &got, nil)
		nrMaps = iterRecMaps(rec)
	} else {
		// The stats record has no type, name or load time to check.
		parseIterStats(rec, &got)
		nrMaps = statsRecMaps(rec)
		got.Tag = statsRecTag(rec)
		got.Type, got.Name, got.LoadTime = want.Type, string(cString(want.Name[:])), want.LoadTime
	}
	if got.Type != want.Type || got.Tag != want.Tag || got.LoadTime != want.LoadTime ||
		got.Name != string(cString(want.Name[:])) || nrMaps != want.NrMapIDs ||
		(withMaps && uint32(len(got.MapIDs)) != want.NrMapIDs) {
		return nil, fmt.Errorf("iterator says type %d tag %x load time %d name %q %d maps, bpf(2) says %d %x %d %q %d",
			got.Type, got.Tag, got.LoadTime, got.Name, nrMaps,
			want.Type, want.Tag, want.LoadTime, cString(want.Name[:]), want.NrMapIDs)
	}
	return data, nil
}

// checkFileIter checks that the iterator finds this process holding the
// iterator's own program, and returns the output of the run. It fails
// where the program files are not recognised, or where this process is
// in another PID namespace than the kernel's (the iterator reports global
// PIDs).
func checkFileIter(it *bpfIter) ([]byte, error) {
	data, err := it.read(nil)
	if err != nil {
		return nil, err
	}
	if !iterHolds(data, it.id, uint32(os.Getpid())) {
		holders := make(map[uint32][]uint32)
		parseIterHolders(data, holders)
		return nil, fmt.Errorf("this process (PID %d) not found holding program %d (holders %v): another PID namespace?",
			os.Getpid(), it.id, holders[it.id])
	}
	return data, nil
}

// iterHolds reports whether an iter/task_file output has pid holding
// program id.
func iterHolds(data []byte, id, pid uint32) bool {
	ne := binary.NativeEndian
	for ; len(data) >= iterFDRecordSize; data = data[iterFDRecordSize:] {
		if ne.Uint32(data[0:]) == pid && ne.Uint32(data[4:]) == id {
			return true
		}
	}
	return false
}
