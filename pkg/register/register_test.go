package register_test

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"unsafe"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
	"github.com/bpfstats/tracker/pkg/register"
)

// The documented byte layout: sizes and offsets.
func TestLayout(t *testing.T) {
	var k register.Key
	var v register.Value
	for _, c := range []struct {
		what      string
		got, want uintptr
	}{
		{"key size", uintptr(binary.Size(k)), register.KeySize},
		{"key.tag", unsafe.Offsetof(k.Tag), 4},
		{"value size", uintptr(binary.Size(v)), register.ValueSize},
		{"value.name", unsafe.Offsetof(v.Name), 64},
		{"value.image", unsafe.Offsetof(v.Image), 128},
		{"value", register.ValueSize, 256},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.what, c.got, c.want)
		}
	}
}

func TestNewValue(t *testing.T) {
	g := register.Gadget{ID: strings.Repeat("i", 64), Name: "mytraceopen", Image: "ghcr.io/ex/é:latest"}
	v, err := register.NewValue(g)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Gadget(); got != g {
		t.Errorf("round trip: %+v, want %+v", got, g)
	}
	if v.Name[len("mytraceopen")] != 0 || v.Image[127] != 0 {
		t.Error("short fields are not NUL-padded")
	}
	for _, bad := range []register.Gadget{
		{},
		{Image: "image only"},
		{ID: strings.Repeat("i", 65)},
		{ID: "a", Image: strings.Repeat("i", 129)},
		{ID: "nul\x00inside"},
		{ID: "ok", Name: "line\nbreak"},
		{ID: "ok", Name: "\xff"},
	} {
		if _, err := register.NewValue(bad); err == nil {
			t.Errorf("NewValue(%q) accepted", bad)
		}
	}
}

// Register and RegisterProgram write the entry the tracker reads; Open
// of a registry no tracker created says it does not exist.
func TestRegister(t *testing.T) {
	path := testutil.RegistryOnPrivateBPFFS(t)
	if _, err := register.Open(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open before the tracker created it: %v, want not exist", err)
	}
	tracker, err := loader.OpenRegistry(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := register.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	a := testgadget.LoadSocketFilter(t, "tk_register_a")
	b := testgadget.LoadSocketFilter(t, "tk_register_b")
	ga := register.Gadget{ID: "a-1", Name: "alpha", Image: "alpha:1"}
	gb := register.Gadget{Name: "beta"}
	if err := r.RegisterProgram(a, ga); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(testgadget.ProgramID(t, b), register.Gadget{Name: "first"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(testgadget.ProgramID(t, b), gb); err != nil { // replaces
		t.Fatal(err)
	}
	if err := r.Register(1<<31, ga); err == nil {
		t.Error("registered a program that does not exist")
	}
	regs, err := tracker.Registrations()
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint32]register.Gadget{}
	for _, reg := range regs {
		got[reg.ProgID] = reg.Gadget
	}
	if len(got) != 2 || got[testgadget.ProgramID(t, a)] != ga || got[testgadget.ProgramID(t, b)] != gb {
		t.Errorf("registrations %+v, want %v and %v", regs, ga, gb)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := r.RegisterProgram(a, ga); err == nil {
		t.Error("registered through a closed registry")
	}
}
