package loader

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
)

// TestOpenSourceAuto checks that auto picks the first source of the
// fallback order that opens on this host, and logged the refusal of every
// one before it. Here that is perf, since lockdown refuses fentry.
func TestOpenSourceAuto(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	opts := SourceOptions{Logf: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf(format, args...))
	}}

	src, err := OpenSource(SourceAuto, opts)
	if err != nil {
		t.Fatalf("opening auto source: %v", err)
	}
	t.Cleanup(func() { src.Close() })
	chosen := src.Name()
	t.Logf("auto chose %s; log: %q", chosen, lines)

	var order []string
	for _, s := range Sources() {
		order = append(order, s.Name)
	}
	pos := slices.Index(order, chosen)
	if pos < 0 {
		t.Fatalf("auto chose %q, not one of %v", chosen, order)
	}
	for _, refused := range order[:pos] {
		prefix := "event source " + refused + " unavailable: "
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, prefix) }) {
			t.Errorf("no %q line in the log %q", prefix, lines)
		}
		// Independent check that it really does not open here.
		if other, err := OpenSource(refused, SourceOptions{}); err == nil {
			other.Close()
			t.Errorf("auto skipped %s, but it opens", refused)
		}
	}
	if want := "event source " + chosen + " chosen"; !slices.Contains(lines, want) {
		t.Errorf("no %q line in the log %q", want, lines)
	}
	if chosen == SourcePoll {
		t.Error("auto fell back to poll; perf works on this machine")
	}
}

func TestOpenSourceUnknown(t *testing.T) {
	src, err := OpenSource("bogus", SourceOptions{})
	if err == nil {
		src.Close()
		t.Fatal("bogus source opened")
	}
	for _, name := range SourceNames() {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not list %q", err, name)
		}
	}
}

func TestOpenSourceFentryRefused(t *testing.T) {
	src, err := OpenSource(SourceFentry, SourceOptions{})
	if err == nil {
		src.Close()
		t.Skip("fentry loads on this kernel; nothing to check")
	}
	if !strings.HasPrefix(err.Error(), "opening fentry source: ") {
		t.Errorf("error %q does not say which source failed", err)
	}
}

func TestOpenSourceNamed(t *testing.T) {
	for _, name := range []string{SourcePerf, SourcePoll} {
		src, err := OpenSource(name, SourceOptions{})
		if err != nil {
			t.Errorf("opening %s: %v", name, err)
			continue
		}
		if src.Name() != name {
			t.Errorf("OpenSource(%q).Name() = %q", name, src.Name())
		}
		if err := src.Close(); err != nil {
			t.Errorf("closing %s: %v", name, err)
		}
	}
}

// TestSourcesListedInREADME keeps README.md's "Event sources" table and
// the registry in step: one row per source, and no row for a source that
// is not registered.
func TestSourcesListedInREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Event sources\n")
	if !ok {
		t.Fatal(`README.md has no "## Event sources" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var listed []string
	for line := range strings.Lines(section) {
		if name, ok := strings.CutPrefix(line, "| `"); ok {
			name, _, _ = strings.Cut(name, "`")
			listed = append(listed, name)
		}
	}
	var registered []string
	for _, s := range Sources() {
		registered = append(registered, s.Name)
		if s.Description == "" || s.Requires == "" || s.open == nil {
			t.Errorf("source %q: incomplete registry entry %+v", s.Name, s)
		}
	}
	if !slices.Equal(listed, registered) {
		t.Errorf("README.md's Event sources table lists %v, the registry has %v (same order)", listed, registered)
	}
	if names := SourceNames(); names[0] != SourceAuto || !slices.Equal(names[1:], registered) {
		t.Errorf("SourceNames() = %v, want auto then %v", names, registered)
	}
}
