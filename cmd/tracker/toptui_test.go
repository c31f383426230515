package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/bpfstats/tracker/internal/testgadget"
	"github.com/bpfstats/tracker/internal/testutil"
)

// The escapes that switch the terminal's alternate screen on and off.
const (
	altScreenOn  = "\x1b[?1049h"
	altScreenOff = "\x1b[?1049l"
)

// TestTopInteractiveLocal runs "tracker top --local" in a pseudo-terminal
// against the kernel: the full-screen view shows a labelled gadget, q
// quits with exit 0, and the terminal is back on its main screen.
func TestTopInteractiveLocal(t *testing.T) {
	requireRoot(t)
	testgadget.StartGadget(t, map[string]string{"BPFSTATS_GADGET_NAME": "tuigadget"}, testgadget.TwoProgramsThreeMaps(false))

	cmd := exec.Command(os.Args[0], "top", "--local", "--interval", "200ms")
	cmd.Env = append(os.Environ(), childEnv+"=1", "TERM=xterm-256color")
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 100})
	if err != nil {
		t.Fatalf("starting tracker top in a pty: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		tty.Close()
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	screen := &ptyScreen{changed: make(chan struct{}, 1)}
	go screen.read(tty)

	waitScreen(t, screen, "the gadget tuigadget", func(s string) bool {
		return strings.Contains(s, altScreenOn) && strings.Contains(s, "tuigadget")
	})
	if _, err := tty.Write([]byte("q")); err != nil {
		t.Fatalf("typing q: %v", err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("tracker top exited with %v; screen:\n%q", err, screen.String())
		}
	case <-time.After(testutil.Wait):
		t.Fatalf("tracker top did not exit within %v of q; screen:\n%q", testutil.Wait, screen.String())
	}
	// The screen was restored: the alternate screen switched off after its
	// last switch on.
	waitScreen(t, screen, "the alternate screen off", func(s string) bool {
		return strings.LastIndex(s, altScreenOff) > strings.LastIndex(s, altScreenOn)
	})
}

// ptyScreen is what a pseudo-terminal received, with a notice on each
// read.
type ptyScreen struct {
	testgadget.SyncBuffer
	changed chan struct{}
}

// cursorQuery asks the terminal where the cursor is; a terminal answers
// at once. Bubble Tea (through termenv) sends it after its background
// color query at start, and waits 5s for an answer that never comes from
// a bare pty.
const cursorQuery = "\x1b[6n"

// read copies what the terminal shows into s, answering cursor queries
// like a terminal.
func (s *ptyScreen) read(tty io.ReadWriter) {
	buf := make([]byte, 4096)
	for {
		n, err := tty.Read(buf)
		s.Write(buf[:n])
		for range bytes.Count(buf[:n], []byte(cursorQuery)) {
			_, _ = tty.Write([]byte("\x1b[1;1R"))
		}
		select {
		case s.changed <- struct{}{}:
		default:
		}
		if err != nil {
			return // EIO once the child closed the terminal
		}
	}
}

// waitScreen waits until cond holds for what the terminal received.
func waitScreen(t *testing.T, screen *ptyScreen, what string, cond func(string) bool) {
	t.Helper()
	timeout := time.After(testutil.Wait)
	for !cond(screen.String()) {
		select {
		case <-screen.changed:
		case <-timeout:
			t.Fatalf("no %s on the screen within %v:\n%q", what, testutil.Wait, tail(screen.String()))
		}
	}
}

func tail(s string) string {
	b := []byte(s)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(bytes.ToValidUTF8(b, nil))
}

// Piped, "top --local" prints the kernel's rows like "stats".
func TestTopLocalPiped(t *testing.T) {
	requireRoot(t)
	g := testgadget.StartGadget(t, map[string]string{"BPFSTATS_GADGET_NAME": "pipedgadget"}, testgadget.TwoProgramsThreeMaps(false))
	var out, stderr bytes.Buffer
	if err := run(t.Context(), []string{"top", "--local", "--count", "1", "-o", "json", "--all"}, &out, &stderr); err != nil {
		t.Fatalf("top --local: %v\n%s", err, stderr.String())
	}
	var rows []sourcedRow
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("output is not one JSON array of rows: %v: %q", err, out.String())
	}
	found := 0
	for _, r := range rows {
		if slices.Contains(g.ProgramIDs, r.ProgID) && r.GadgetName == "pipedgadget" {
			found++
		}
	}
	if found != len(g.ProgramIDs) {
		t.Fatalf("%d of the gadget's %d programs in the rows: %+v", found, len(g.ProgramIDs), rows)
	}
}

func TestTopTUIFlags(t *testing.T) {
	for _, args := range [][]string{
		{"top", "--history", "0"},
		{"top", "--local", "--source", "kprobe"},
	} {
		err := run(t.Context(), args, io.Discard, io.Discard)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	if interactive(&bytes.Buffer{}, "table", 0, "") {
		t.Errorf("a buffer is taken for a terminal")
	}
	if got := redactURLs("nats://user:secret@127.0.0.1:4222, nats://tok@h:1"); strings.Contains(got, "secret") || strings.Contains(got, "tok") {
		t.Errorf("redactURLs kept a credential: %q", got)
	}
	b := &tailBuffer{max: 4}
	b.Write([]byte("abc"))
	b.Write([]byte("def"))
	if got := string(b.Bytes()); got != "cdef" {
		t.Errorf("tailBuffer kept %q, want the last 4 bytes", got)
	}
}
