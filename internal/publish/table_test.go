package publish

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bpfstats/tracker/internal/state"
)

func TestTableCell(t *testing.T) {
	long := strings.Repeat("x", 900<<10)
	for _, tc := range []struct{ in, want string }{
		{"trace_open", "trace_open"},
		{"héllo", "héllo"},
		{"\x1b[2J\x1b]0;pwned\x07", `\x1b[2J\x1b]0;pwned\x07`},
		{"a\nb\tc\rd\x7f", `a\x0ab\x09c\x0dd\x7f`},
		{"bad\xffutf8\xc3", `bad\xffutf8\xc3`},
		{"bidi\u202etxt.exe", `bidi\u202etxt.exe`},
		{"c1\u0085", `c1\u0085`},
		{`back\x1b`, `back\\x1b`},
		{strings.Repeat("y", MaxCellRunes), strings.Repeat("y", MaxCellRunes)},
		{strings.Repeat("y", MaxCellRunes+1), strings.Repeat("y", MaxCellRunes-1) + "…"},
		{long, strings.Repeat("x", MaxCellRunes-1) + "…"},
		// An escape is never cut in half.
		{strings.Repeat("z", MaxCellRunes-3) + "\x1b" + "tail", strings.Repeat("z", MaxCellRunes-3) + "…"},
	} {
		got := TableCell(tc.in)
		if got != tc.want {
			t.Errorf("TableCell(%.40q) = %q, want %q", tc.in, got, tc.want)
		}
		if n := utf8.RuneCountInString(got); n > MaxCellRunes {
			t.Errorf("TableCell(%.40q) has %d runes", tc.in, n)
		}
	}
}

// Hostile names in every text column print escaped and cut, and the
// table stays aligned; the JSON keeps every byte.
func TestWriteTableHostileNames(t *testing.T) {
	hostile := "\x1b[31mred\x1b[0m\n\xfe" + strings.Repeat("w", 200)
	row := state.Row{
		NodeName: hostile, GadgetID: hostile, GadgetName: hostile, GadgetImage: hostile,
		ProgID: 7, ProgName: hostile, ProgType: hostile, Tag: hostile,
		PIDs: []uint32{1, 2}, Comms: []string{hostile, "\x07bell"},
		Loader: &state.ProcessRef{PID: 1, Comm: hostile, Exe: hostile},
	}
	plain := state.Row{GadgetName: "plain", ProgID: 8, Comms: []string{"ok"}}
	cols, err := SelectColumns([]string{"nodeName", "progType", "pids", "comms", "tag"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := WriteTable(&out, cols, []*state.Row{&row, &plain}); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	t.Logf("table:\n%s", text)
	for i, c := range text {
		if c == utf8.RuneError || (c < 0x20 && c != '\n') || c == 0x7f {
			t.Fatalf("raw byte %q at %d in the table", c, i)
		}
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3 (a newline in a name must not start a row)", len(lines))
	}
	if !strings.Contains(lines[1], `\x1b[31mred\x1b[0m\x0a\xfe`) || !strings.Contains(lines[1], "…") {
		t.Errorf("row not escaped and cut: %q", lines[1])
	}
	// Aligned: the PROGID column ends at the same rune offset on every line.
	var ends []int
	for _, l := range lines {
		field := "7"
		if strings.HasPrefix(l, "NODENAME") {
			field = "PROGID"
		} else if !strings.Contains(l, "…") {
			field = "8"
		}
		i := strings.Index(l, " "+field+" ")
		if i < 0 {
			t.Fatalf("no %q column in %q", field, l)
		}
		ends = append(ends, utf8.RuneCountInString(l[:i+1+len(field)]))
	}
	if ends[0] != ends[1] || ends[1] != ends[2] {
		t.Errorf("PROGID column ends at runes %v, want equal", ends)
	}
	data, err := json.Marshal(row)
	if err != nil {
		t.Fatal(err)
	}
	var back state.Row
	if err := json.Unmarshal(data, &back); err != nil || back.GadgetName != strings.ToValidUTF8(hostile, "\ufffd") {
		t.Errorf("JSON lost the value: %v %.60q", err, back.GadgetName)
	}
}
