package loader

import (
	"encoding/json"
	"fmt"
	"maps"
	"os/exec"
	"testing"
	"unsafe"

	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

func TestMetadataStructLayout(t *testing.T) {
	var mi sysMapInfoBTF
	var bi sysBTFInfo
	var la sysMapElemAttr
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"map.btf_id", unsafe.Offsetof(mi.BTFID), 64},
		{"map.btf_value_type_id", unsafe.Offsetof(mi.BTFValueTypeID), 72},
		{"btf.btf_size", unsafe.Offsetof(bi.BTFSize), 8},
		{"btf.id", unsafe.Offsetof(bi.ID), 12},
		{"elem.key", unsafe.Offsetof(la.Key), 8},
		{"elem.value", unsafe.Offsetof(la.Value), 16},
		{"elem.flags", unsafe.Offsetof(la.Flags), 24},
	} {
		if c.got != c.want {
			t.Errorf("%s at offset %d, want %d", c.name, c.got, c.want)
		}
	}
}

// Two instances of one object, labelled differently, read back with their
// own labels, as bpftool shows them.
func TestReadProgramMetadata(t *testing.T) {
	testutil.RequireRoot(t)
	k := newKernel(t)
	want := []testgadget.ProgramLabels{
		{ID: "id-open-1", Name: "mytraceopen", Image: "ghcr.io/example/trace_open:latest"},
		{ID: "id-exec-2", Name: "mytraceexec", Image: "trace_exec:latest"},
	}
	for _, labels := range want {
		id := testgadget.ProgramID(t, testgadget.LoadLabelled(t, labels))
		md, err := k.ReadProgramMetadata(id)
		if err != nil {
			t.Fatalf("reading metadata of program %d: %v", id, err)
		}
		wantVars := map[string]string{
			"gadget_id": labels.ID, "gadget_name": labels.Name, "gadget_image": labels.Image,
			"labels_version": "1",
		}
		if !md.Rodata || !maps.Equal(md.Vars, wantVars) {
			t.Errorf("program %d: metadata %+v, want rodata and %v", id, md, wantVars)
		}
		if bt := bpftoolMetadata(t, id); bt != nil && !maps.Equal(bt, wantVars) {
			t.Errorf("program %d: bpftool shows metadata %v, the tracker %v", id, bt, md.Vars)
		}
		// A second read comes from the cache and says the same.
		again, err := k.ReadProgramMetadata(id)
		if err != nil || !maps.Equal(again.Vars, md.Vars) || again.Tag != md.Tag {
			t.Errorf("program %d: second read %+v, %v; first %+v", id, again, err, md)
		}
	}

	// A program without .rodata has no metadata.
	plain := testgadget.ProgramID(t, testgadget.LoadSocketFilter(t, "tk_md_plain", testgadget.NewMap(t, "tk_md_plain", 1)))
	md, err := k.ReadProgramMetadata(plain)
	if err != nil || md.Rodata || md.Vars != nil {
		t.Errorf("plain program: %+v, %v; want no rodata, no vars", md, err)
	}
}

// bpftoolMetadata returns the "metadata" object of "bpftool prog show id
// ID -j", with every value as text; nil when bpftool is missing.
func bpftoolMetadata(t *testing.T, id uint32) map[string]string {
	t.Helper()
	path, err := exec.LookPath("bpftool")
	if err != nil {
		t.Log("bpftool not installed, metadata not compared: ", err)
		return nil
	}
	out, err := exec.Command(path, "prog", "show", "id", fmt.Sprint(id), "-j").Output()
	if err != nil {
		t.Fatalf("bpftool prog show id %d: %v", id, err)
	}
	var prog struct {
		Metadata map[string]any `json:"metadata"`
	}
	if err := json.Unmarshal(out, &prog); err != nil {
		t.Fatalf("decoding bpftool output %s: %v", out, err)
	}
	vars := make(map[string]string, len(prog.Metadata))
	for k, v := range prog.Metadata {
		vars[k] = fmt.Sprint(v)
	}
	t.Logf("bpftool prog show id %d: metadata %v", id, vars)
	return vars
}

// BenchmarkReadProgramMetadata reads the metadata of 1000 labelled
// programs, each with its own .rodata map: cold is the first read of a
// program (BTF parsed), warm a program whose .rodata was read before (the
// programs of one object after the first).
func BenchmarkReadProgramMetadata(b *testing.B) {
	testutil.RequireRoot(b)
	k := newKernel(b)
	const n = 1000
	ids := make([]uint32, n)
	for i := range ids {
		labels := testgadget.ProgramLabels{ID: fmt.Sprintf("bench-%d", i), Name: "bench", Image: "bench:latest"}
		ids[i] = testgadget.ProgramID(b, testgadget.LoadLabelled(b, labels))
	}
	plain := make([]uint32, n)
	for i := range plain {
		plain[i] = testgadget.ProgramID(b, testgadget.LoadSocketFilter(b, "tk_md_bench", testgadget.NewMap(b, "tk_md_bench", 1)))
	}
	read := func(b *testing.B, ids []uint32, clearCache bool) {
		for b.Loop() {
			if clearCache {
				k.metaCache = nil
			}
			for _, id := range ids {
				if _, err := k.ReadProgramMetadata(id); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ids))/1e3, "us/prog")
	}
	b.Run("labelled-cold", func(b *testing.B) { read(b, ids, true) })
	b.Run("labelled-warm", func(b *testing.B) { read(b, ids, false) })
	b.Run("no-rodata", func(b *testing.B) { read(b, plain, false) })
}
