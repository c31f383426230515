package loader

import (
	"bytes"
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/bpfstats/tracker/internal/testutil"
)

// testKernelBTF is a small "vmlinux": struct outer embeds struct inner and
// points to struct far, and func target exists. Its IDs are returned by
// name.
func testKernelBTF(t *testing.T) ([]byte, map[string]btf.TypeID) {
	t.Helper()
	u32 := &btf.Int{Name: "u32", Size: 4}
	far := &btf.Struct{Name: "far", Size: 4, Members: []btf.Member{{Name: "z", Type: u32}}}
	inner := &btf.Struct{Name: "inner", Size: 8, Members: []btf.Member{
		{Name: "a", Type: u32}, {Name: "b", Type: u32, Offset: 32},
	}}
	outer := &btf.Struct{Name: "outer", Size: 24, Members: []btf.Member{
		{Name: "pad", Type: u32},
		{Name: "in", Type: inner, Offset: 32},
		{Name: "far", Type: &btf.Pointer{Target: far}, Offset: 128},
	}}
	fn := &btf.Func{Name: "target", Type: &btf.FuncProto{Return: u32}, Linkage: btf.GlobalFunc}
	var b btf.Builder
	ids := make(map[string]btf.TypeID)
	for _, typ := range []btf.Type{far, u32, fn, outer, inner} {
		id, err := b.Add(typ)
		if err != nil {
			t.Fatal(err)
		}
		ids[typ.TypeName()] = id
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw, ids
}

func TestKernelTypesOf(t *testing.T) {
	raw, ids := testKernelBTF(t)
	kt, err := kernelTypesOf(raw, map[string]bool{"outer": true, "missing": true}, map[string]bool{"target": true, "absent": true})
	if err != nil {
		t.Fatal(err)
	}
	if got := kt.funcs; len(got) != 1 || got["target"] != ids["target"] {
		t.Errorf("funcs %v, want target at %d only", got, ids["target"])
	}
	var outer *btf.Struct
	if err := kt.spec.TypeByName("outer", &outer); err != nil {
		t.Fatal(err)
	}
	// Offsets are the kernel's, and what outer embeds comes along.
	in := outer.Members[1]
	inner, ok := in.Type.(*btf.Struct)
	if in.Offset != 32 || !ok || inner.Name != "inner" || inner.Members[1].Offset != 32 {
		t.Errorf("outer.in = %+v", in)
	}
	// What it points to does not: a pointer to void.
	if p, ok := outer.Members[2].Type.(*btf.Pointer); !ok || !isVoid(p.Target) {
		t.Errorf("outer.far = %v, want a pointer to void", outer.Members[2].Type)
	}
	var far *btf.Struct
	if err := kt.spec.TypeByName("far", &far); !errors.Is(err, btf.ErrNotFound) {
		t.Errorf("far is in the spec (%v)", err)
	}
	// Type IDs map back to the kernel's.
	for _, name := range []string{"outer", "inner"} {
		typ, err := kt.spec.AnyTypeByName(name)
		if err != nil {
			t.Fatal(err)
		}
		id, err := kt.spec.TypeID(typ)
		if err != nil {
			t.Fatal(err)
		}
		if got := kt.kernelID[id-1]; got != ids[name] {
			t.Errorf("%s: kernel ID %d, want %d", name, got, ids[name])
		}
	}
}

func isVoid(t btf.Type) bool {
	_, ok := t.(*btf.Void)
	return ok
}

func TestKernelTypesOfMalformed(t *testing.T) {
	raw, _ := testKernelBTF(t)
	for name, data := range map[string][]byte{
		"empty":     nil,
		"truncated": raw[:len(raw)/2],
		"magic":     append([]byte{0, 0}, raw[2:]...),
	} {
		if _, err := kernelTypesOf(data, map[string]bool{"outer": true}, nil); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// iterObjectSpec returns the iterator object's spec with its CPUs set.
func iterObjectSpec(t *testing.T) *ebpf.CollectionSpec {
	t.Helper()
	spec, err := loadIter()
	if err != nil {
		t.Fatal(err)
	}
	if err := setPossibleCPUs(spec); err != nil {
		t.Fatal(err)
	}
	return spec
}

// runIter loads name with ld, attaches it and returns one run's output.
func runIter(t *testing.T, ld *iterLoader, spec *ebpf.CollectionSpec, name string) []byte {
	t.Helper()
	progs, err := ld.load(spec, name)
	if err != nil {
		testutil.SkipIfUnsupported(t, err, name)
		t.Fatal(err)
	}
	it, err := attachIter(progs[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { it.close() })
	out, err := it.read(nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// rawIterLoader scans the kernel BTF for the iterator object, whose spec
// it returns too; it skips the test on a kernel without BTF.
func rawIterLoader(t *testing.T) (*iterLoader, *ebpf.CollectionSpec) {
	t.Helper()
	testutil.RequireRoot(t)
	spec := iterObjectSpec(t)
	ld := newIterLoader(spec, vmlinuxBTFPath)
	if err := ld.rawError(); errors.Is(err, fs.ErrNotExist) {
		t.Skipf("kernel without BTF: %v", err)
	} else if err != nil {
		t.Fatalf("scanning the kernel BTF: %v", err)
	}
	return ld, spec
}

// TestIterRawLoadMatchesCilium loads the map iterator both ways and
// compares one run of each: the same records, unless something created or
// freed a map between the two runs (then they run again). The raw load
// must be what ran.
func TestIterRawLoadMatchesCilium(t *testing.T) {
	raw, spec := rawIterLoader(t)
	viaCilium := newIterLoader(spec, "/nonexistent/vmlinux")
	if viaCilium.rawError() == nil {
		t.Fatal("scanning a missing BTF file did not fail")
	}
	// A map of our own, so that there is one to list.
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "tk_raw_check", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	var a, b []byte
	for range 3 {
		if a, b = runIter(t, raw, spec, "dump_maps"), runIter(t, viaCilium, spec, "dump_maps"); bytes.Equal(a, b) {
			break
		}
	}
	if !bytes.Equal(a, b) || len(a) == 0 {
		t.Errorf("map iterator: raw load gives %d bytes, cilium/ebpf %d, and they differ", len(a), len(b))
	}
	if err := raw.rawError(); err != nil {
		t.Errorf("raw load failed, cilium/ebpf loaded it: %v", err)
	}
}

// TestIterRawLoadEveryIterator loads every iterator of the object through
// the raw path and checks that Kernel's self-checks pass with it. On a
// kernel without bpf_rdonly_cast (before 6.2) the map iterator must still
// load raw, and the others fail without going through cilium/ebpf.
func TestIterRawLoadEveryIterator(t *testing.T) {
	testutil.RequireRoot(t)
	k := newKernel(t)
	its := k.loadedIterators()
	if err := k.IteratorLoadFallback(); err != nil {
		t.Errorf("iterators loaded through cilium/ebpf: %v", err)
	}
	if its.maps == nil {
		testutil.SkipIfUnsupported(t, its.mapsErr, "iter/bpf_map")
	}
	progs, holders := k.Iterators()
	testutil.SkipIfUnsupported(t, progs, "iter/bpf_prog")
	testutil.SkipIfUnsupported(t, holders, "iter/task_file")
	if its.progStats == nil {
		t.Errorf("stats iterator: %v", its.progsErr)
	}
}

func TestVerifierReason(t *testing.T) {
	for log, want := range map[string]string{
		"0: (b7) r0 = 0\nR1 invalid mem access 'scalar'\nprocessed 31 insns (limit 1000000) max_states_per_insn 0\n\x00garbage": "R1 invalid mem access 'scalar'",
		"unknown func bpf_x#212\nverification time 12 usec\nstack depth 0\n":                                                    "unknown func bpf_x#212",
		"\x00": "no log",
	} {
		if got := verifierReason([]byte(log)); got != want {
			t.Errorf("verifierReason(%q) = %q, want %q", log, got, want)
		}
	}
}

// TestIterRawLoadKernelLacks: a program calling a kfunc that the kernel's
// BTF lacks, or attaching to an iterator it lacks, fails with the reason
// and without going through cilium/ebpf (which would decode the kernel BTF
// only to fail the same way); the other iterators still load raw.
func TestIterRawLoadKernelLacks(t *testing.T) {
	ld, spec := rawIterLoader(t)
	ld.ciliumOpts = func() *ebpf.CollectionOptions {
		t.Error("the load fell back to cilium/ebpf")
		return &ebpf.CollectionOptions{}
	}
	delete(ld.kernel.funcs, "bpf_rdonly_cast")
	for name, want := range map[string]string{
		"dump_prog_stats": "no kfunc bpf_rdonly_cast in the kernel BTF",
		"dump_prog_fds":   "no kfunc bpf_rdonly_cast in the kernel BTF",
	} {
		progs, err := ld.load(spec.Copy(), name)
		if err == nil {
			for _, p := range progs {
				p.Close()
			}
			t.Fatalf("%s loaded without its kfunc", name)
		}
		if lacks := (*kernelLacksError)(nil); !errors.As(err, &lacks) || !errors.Is(err, ebpf.ErrNotSupported) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q wrapping ebpf.ErrNotSupported", name, err, want)
		}
	}
	if err := ld.rawError(); err != nil {
		t.Errorf("a kernel lacking a kfunc turned the raw load off: %v", err)
	}
	// The map iterator needs no kfunc: still raw (cilium/ebpf would fail
	// the test).
	runIter(t, ld, spec.Copy(), "dump_maps")

	// An iterator target the kernel lacks.
	delete(ld.kernel.funcs, "bpf_iter_bpf_map")
	_, err := ld.load(spec.Copy(), "dump_maps")
	if lacks := (*kernelLacksError)(nil); !errors.As(err, &lacks) || !strings.Contains(err.Error(), "no bpf_iter_bpf_map in the kernel BTF") {
		t.Errorf("dump_maps without its target: got %v", err)
	}
}
