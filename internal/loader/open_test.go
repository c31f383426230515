package loader

import (
	"fmt"
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

	order := []string{SourceFentry, SourcePerf, SourcePoll}
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
