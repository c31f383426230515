package loader

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
	"github.com/bpfstats/tracker/pkg/register"
)

// The tracker creates the map and its directory, root-only, with the
// documented layout; a second open finds the same map.
func TestOpenRegistryCreatesRootOnlyPin(t *testing.T) {
	path := testutil.RegistryOnPrivateBPFFS(t)
	if _, err := OpenRegistry(path); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): os.ModeDir | 0o700} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want || st.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("%s: mode %v uid %d, want %v owned by root (not writable by others)", p, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, want)
		}
	}
	var shown testutil.BpftoolMap
	testutil.Bpftool(t, &shown, "map", "show", "pinned", path)
	if shown.Type != "hash" || shown.Name != register.MapName || shown.BytesKey != register.KeySize ||
		shown.BytesValue != register.ValueSize || shown.MaxEntries != register.MaxEntries || shown.Flags != unix.BPF_F_NO_PREALLOC {
		t.Errorf("bpftool map show: %+v", shown)
	}
	if _, err := OpenRegistry(path); err != nil {
		t.Fatalf("opening the existing registry: %v", err)
	}
	var again testutil.BpftoolMap
	testutil.Bpftool(t, &again, "map", "show", "pinned", path)
	if again.ID != shown.ID {
		t.Errorf("second open pinned map %d, want the existing %d", again.ID, shown.ID)
	}
}

// A path off the bpffs, and a pinned map of another layout, are errors.
func TestOpenRegistryRefuses(t *testing.T) {
	path := testutil.RegistryOnPrivateBPFFS(t)
	if _, err := OpenRegistry(filepath.Join(t.TempDir(), "registry")); err == nil || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Errorf("registry on a tmpfs: %v, want not on a bpf filesystem", err)
	}
	other := testgadget.NewMap(t, "tk_not_registry", 1)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := other.Pin(path); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenRegistry(path); err == nil || !strings.Contains(err.Error(), "not a registry map") {
		t.Errorf("registry over an array map: %v, want not a registry map", err)
	}
}

// The shell command of docs/registration.md registers a program: the
// registry reads it back, and Remove deletes it.
func TestRegistryShellCommandFromDocs(t *testing.T) {
	path := testutil.RegistryOnPrivateBPFFS(t)
	reg, err := OpenRegistry(path)
	if err != nil {
		t.Fatal(err)
	}
	script := docsShellScript(t)
	prog := testgadget.LoadSocketFilter(t, "tk_reg_shell")
	id := testgadget.ProgramID(t, prog)
	long := strings.Repeat("i", 70) // cut to 64 bytes
	cmd := exec.Command("sh", "-c", script, "register.sh", fmt.Sprint(id), long, "mytraceopen", "ghcr.io/example/trace_open:latest")
	cmd.Env = append(os.Environ(), "BPFSTATS_REGISTRY="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("register.sh: %v\n%s", err, out)
	}
	want := Registration{ProgID: id, Tag: programTag(t, id), Gadget: register.Gadget{
		ID: long[:64], Name: "mytraceopen", Image: "ghcr.io/example/trace_open:latest",
	}}
	regs, err := reg.Registrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(regs) != 1 || regs[0] != want {
		t.Fatalf("registrations %+v, want %+v", regs, want)
	}
	if n, err := reg.Remove(regs); n != 1 || err != nil {
		t.Fatalf("Remove: %d, %v", n, err)
	}
	if regs, err := reg.Registrations(); len(regs) != 0 || err != nil {
		t.Errorf("after Remove: %+v, %v", regs, err)
	}
}

// docsShellScript is the register.sh block of docs/registration.md.
func docsShellScript(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/registration.md")
	if err != nil {
		t.Fatal(err)
	}
	const start = "```sh\n#!/bin/sh\n# register.sh"
	_, rest, ok := strings.Cut(string(doc), start)
	script, _, closed := strings.Cut(rest, "\n```")
	if !ok || !closed {
		t.Fatal("docs/registration.md has no register.sh block")
	}
	return "# register.sh" + script + "\n"
}

// programTag reads the tag of program id.
func programTag(t *testing.T, id uint32) [8]byte {
	t.Helper()
	k, err := NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	info, err := k.ReadProgram(id)
	if err != nil {
		t.Fatal(err)
	}
	return info.Tag
}

// A hostile entry (no NUL, control characters, invalid UTF-8) reads as
// cleaned labels no longer than their fields; many entries read in more
// than one batch.
func TestRegistryCleansHostileEntries(t *testing.T) {
	path := testutil.RegistryOnPrivateBPFFS(t)
	reg, err := OpenRegistry(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var v register.Value
	for i := range v.ID {
		v.ID[i] = byte(i*37 + 1) // every byte non-zero: control, ASCII, invalid UTF-8
	}
	copy(v.Name[:], "a\nb\x1b[31mc\xff\x00hidden")
	for i := range v.Image {
		v.Image[i] = 'x'
	}
	const entries = 3 * registryBatch / 2
	for i := range uint32(entries) {
		if err := m.Update(&register.Key{ProgID: 1<<31 + i, Tag: [8]byte{1}}, &v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	regs, err := reg.Registrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(regs) != entries {
		t.Fatalf("%d registrations, want %d", len(regs), entries)
	}
	g := regs[0].Gadget
	if g.Name != "ab[31mc" || g.Image != strings.Repeat("x", 128) {
		t.Errorf("name %q image %q, want control characters and what follows the NUL dropped", g.Name, g.Image)
	}
	if len(g.ID) > register.IDSize || strings.ContainsFunc(g.ID, func(r rune) bool { return r < 0x20 || r == 0x7f }) ||
		!utf8.ValidString(g.ID) || g.ID == "" {
		t.Errorf("ID %q not cleaned", g.ID)
	}
	if n, err := reg.Remove(regs); n != entries || err != nil {
		t.Errorf("Remove: %d, %v", n, err)
	}
	if n, err := reg.Remove(regs[:1]); n != 0 || err != nil {
		t.Errorf("Remove of an entry already gone: %d, %v, want 0 and no error", n, err)
	}
}
