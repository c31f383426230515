package testutil

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// LogWatch collects the log lines of the code under test (zerolog JSON,
// or any text) and lets a test wait for one. It is an io.Writer that joins
// lines split across writes, as a child process's stderr pipe delivers
// them.
type LogWatch struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	changed chan struct{}
}

// NewLogWatch returns an empty LogWatch whose lines are logged to tb when
// the test fails.
func NewLogWatch(tb testing.TB) *LogWatch {
	w := &LogWatch{changed: make(chan struct{})}
	tb.Cleanup(func() {
		if !tb.Failed() {
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, l := range append(w.lines, string(w.partial)) {
			if l != "" {
				tb.Log("log: " + l)
			}
		}
	})
	return w
}

// Logger is a debug-level JSON logger writing to w.
func (w *LogWatch) Logger() zerolog.Logger {
	return zerolog.New(w).Level(zerolog.DebugLevel)
}

// Write adds the complete lines of p (with what earlier writes left).
func (w *LogWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	added := false
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.lines = append(w.lines, string(w.partial[:i]))
		w.partial = w.partial[i+1:]
		added = true
	}
	if added {
		close(w.changed)
		w.changed = make(chan struct{})
	}
	return len(p), nil
}

// Len is the number of complete lines so far, the from of a later wait
// for what happens after now.
func (w *LogWatch) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.lines)
}

// String is everything written so far.
func (w *LogWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b strings.Builder
	for _, l := range w.lines {
		b.WriteString(l + "\n")
	}
	b.Write(w.partial)
	return b.String()
}

// WaitMessage returns the fields of the first JSON line from index from on
// whose "message" is message, and the index after it. It fails the test
// after Wait.
func (w *LogWatch) WaitMessage(tb testing.TB, from int, message string) (map[string]any, int) {
	tb.Helper()
	var fields map[string]any
	next := w.wait(tb, from, "log message "+message, func(line string) bool {
		fields = nil
		return json.Unmarshal([]byte(line), &fields) == nil && fields["message"] == message
	})
	return fields, next
}

// WaitText waits for a line containing text, failing the test after Wait.
func (w *LogWatch) WaitText(tb testing.TB, text string) {
	tb.Helper()
	w.wait(tb, 0, "log line with "+text, func(line string) bool { return strings.Contains(line, text) })
}

// wait returns the index after the first line from index from on that
// match accepts.
func (w *LogWatch) wait(tb testing.TB, from int, what string, match func(string) bool) int {
	tb.Helper()
	timeout := time.After(Wait)
	for {
		w.mu.Lock()
		lines, changed := w.lines, w.changed
		w.mu.Unlock()
		for i := from; i < len(lines); i++ {
			if match(lines[i]) {
				return i + 1
			}
		}
		from = max(from, len(lines))
		select {
		case <-changed:
		case <-timeout:
			tb.Fatalf("no %s within %v", what, Wait)
		}
	}
}
