package loader

import (
	"errors"
	"os"
	"slices"
	"testing"
)

// readAllPrograms collects ReadAllPrograms' results: the IDs read without
// an error (with their info) and the errors.
func readAllPrograms(t *testing.T, k *Kernel, ids []uint32) (map[uint32]ProgramInfo, map[uint32]error) {
	t.Helper()
	infos := make(map[uint32]ProgramInfo)
	errs := make(map[uint32]error)
	err := k.ReadAllPrograms(ids, func(id uint32, info *ProgramInfo, err error) {
		_, dup1 := infos[id]
		_, dup2 := errs[id]
		if dup1 || dup2 {
			t.Errorf("program %d reported twice", id)
		}
		if err != nil {
			errs[id] = err
			return
		}
		if info.ID != id {
			t.Errorf("program %d reported with info of %d", id, info.ID)
		}
		c := *info
		c.MapIDs = slices.Clone(info.MapIDs)
		infos[id] = c
	})
	if err != nil {
		t.Fatal(err)
	}
	return infos, errs
}

// TestReadAllProgramsAudits checks that ReadAllPrograms reports the IDs
// asked for as ReadPrograms does, and every other program the kernel
// lists too, through the iterator (uncached and cached) and through bpf(2).
func TestReadAllProgramsAudits(t *testing.T) {
	iter, syscalls := iterKernels(t)
	progs := iterFixture(t, 4)
	asked := programIDOf(t, progs[0])
	unasked := []uint32{programIDOf(t, progs[1]), programIDOf(t, progs[2])}
	gone := programIDOf(t, progs[3])
	progs[3].Close()
	ids := []uint32{gone, asked, 0}
	for round := range 2 { // the iterator's first pass has map IDs, the second uses its cache
		for name, k := range map[string]*Kernel{"iterator": iter, "bpf(2)": syscalls} {
			before, err := walkProgramIDs(nil)
			if err != nil {
				t.Fatal(err)
			}
			infos, errs := readAllPrograms(t, k, ids)
			after, err := walkProgramIDs(nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range []uint32{gone, 0} {
				if !errors.Is(errs[id], os.ErrNotExist) {
					t.Errorf("round %d %s: program %d: %v, want os.ErrNotExist", round, name, id, errs[id])
				}
			}
			if infos[asked].ID != asked {
				t.Errorf("round %d %s: asked program %d not read: %v", round, name, asked, errs[asked])
			}
			for _, id := range unasked {
				if info := infos[id]; info.Name == "" || len(info.MapIDs) == 0 {
					t.Errorf("round %d %s: unasked program %d: %+v, %v", round, name, id, info, errs[id])
				}
			}
			// Every program listed before and after the read was reported,
			// and nothing but the asked-for IDs was reported gone.
			for _, id := range before {
				if slices.Contains(after, id) && infos[id].ID != id {
					t.Errorf("round %d %s: program %d in the kernel, not reported (%v)", round, name, id, errs[id])
				}
			}
			for id := range errs {
				if !slices.Contains(ids, id) {
					t.Errorf("round %d %s: unasked program %d reported with error %v", round, name, id, errs[id])
				}
			}
		}
	}
}

func TestInChildPIDNamespace(t *testing.T) {
	// This machine's tests run in the host's PID namespace.
	if child, err := InChildPIDNamespace(); err != nil || child {
		t.Errorf("InChildPIDNamespace() = %v, %v on the host", child, err)
	}
	// Another namespace file (the network one) has another inode.
	if child, err := inChildPIDNamespace("/proc/self/ns/net"); err != nil || !child {
		t.Errorf("inChildPIDNamespace(ns/net) = %v, %v; want a child", child, err)
	}
	if _, err := inChildPIDNamespace("/nonexistent"); err == nil {
		t.Error("no error for a missing namespace file")
	}
}

func TestBootOffset(t *testing.T) {
	k, err := NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	// Suspend time changes only across a suspend; two reads differ by
	// their jitter (microseconds).
	a := k.BootOffset()
	if b := k.BootOffset(); b+1e6 < a || a+1e6 < b {
		t.Errorf("boot offset went from %d to %d", a, b)
	}
}
