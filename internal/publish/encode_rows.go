package publish

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/bpfstats/tracker/internal/state"
)

// WriteRowsJSON writes rows as one JSON array and a newline, each row with
// a "source" field (omitted when empty) after its own: byte for byte what
// encoding/json writes for a struct embedding state.Row followed by
// `Source string "json:\"source,omitempty\""`. It is the one-shot's
// encoder: an append-style encoder into one buffer, about ten times
// cheaper than encoding/json's reflection at thousands of rows (a test
// compares the two on every field and on hostile strings).
func WriteRowsJSON(w io.Writer, rows []*state.Row, source string) error {
	// About 600 bytes per row with its pids and maps.
	buf := make([]byte, 0, 64+len(rows)*640)
	buf = append(buf, '[')
	for i := range rows {
		if i > 0 {
			buf = append(buf, ',')
		}
		var err error
		if buf, err = AppendRowJSON(buf, rows[i], source); err != nil {
			return fmt.Errorf("encoding rows: %w", err)
		}
	}
	buf = append(buf, ']', '\n')
	_, err := w.Write(buf)
	return err
}

// AppendRowJSON appends r as encoding/json encodes it (see WriteRowsJSON),
// with source as its last field when not empty. It fails on a NaN or
// infinite number, as encoding/json does.
func AppendRowJSON(b []byte, r *state.Row, source string) ([]byte, error) {
	b = append(b, '{')
	if r.NodeName != "" {
		b = appendJSONString(append(b, `"nodeName":`...), r.NodeName)
		b = append(b, ',')
	}
	b = appendJSONString(append(b, `"gadgetID":`...), r.GadgetID)
	b = appendJSONString(append(b, `,"gadgetName":`...), r.GadgetName)
	b = appendJSONString(append(b, `,"gadgetImage":`...), r.GadgetImage)
	b = strconv.AppendUint(append(b, `,"progID":`...), uint64(r.ProgID), 10)
	b = appendJSONString(append(b, `,"progName":`...), r.ProgName)
	b = appendJSONString(append(b, `,"progType":`...), r.ProgType)
	b, err := appendTotalsJSON(b, &r.Totals)
	if err != nil {
		return b, err
	}
	b = appendUint32sJSON(append(b, `,"pids":`...), r.PIDs)
	b = appendStringsJSON(append(b, `,"comms":`...), r.Comms)
	if r.Loader != nil {
		b = strconv.AppendUint(append(b, `,"loader":{"pid":`...), uint64(r.Loader.PID), 10)
		b = appendJSONString(append(b, `,"comm":`...), r.Loader.Comm)
		b = appendJSONString(append(b, `,"exe":`...), r.Loader.Exe)
		b = append(b, '}')
	}
	if len(r.MapIDs) > 0 {
		b = appendUint32sJSON(append(b, `,"mapIDs":`...), r.MapIDs)
	}
	b = appendOptString(b, `,"tag":`, r.Tag)
	if b, err = appendCostJSON(b, &r.Cost); err != nil {
		return b, err
	}
	b = appendPlacementJSON(b, &r.Placement)
	if len(r.Attach) > 0 {
		b = appendStringsJSON(append(b, `,"attach":`...), r.Attach)
	}
	b = appendOptString(b, `,"source":`, source)
	return append(b, '}'), nil
}

// appendCompactRowJSON appends r's CompactRow as encoding/json encodes it.
func appendCompactRowJSON(b []byte, r *state.Row) ([]byte, error) {
	b = strconv.AppendUint(append(b, `{"progID":`...), uint64(r.ProgID), 10)
	b, err := appendTotalsJSON(b, &r.Totals)
	if err != nil {
		return b, err
	}
	if b, err = appendCostJSON(b, &r.Cost); err != nil {
		return b, err
	}
	return append(b, '}'), nil
}

// appendTotalsJSON appends the fields of t, each after a comma.
func appendTotalsJSON(b []byte, t *state.Totals) ([]byte, error) {
	b = strconv.AppendUint(append(b, `,"runtime":`...), t.Runtime, 10)
	b = strconv.AppendUint(append(b, `,"runcount":`...), t.Runcount, 10)
	b = strconv.AppendUint(append(b, `,"runtimeDelta":`...), t.RuntimeDelta, 10)
	b = strconv.AppendUint(append(b, `,"runcountDelta":`...), t.RuncountDelta, 10)
	b, err := appendFloatJSON(append(b, `,"cpuPercent":`...), t.CPUPercent)
	if err != nil {
		return b, err
	}
	b = strconv.AppendUint(append(b, `,"recursionMisses":`...), t.RecursionMisses, 10)
	b = strconv.AppendUint(append(b, `,"mapMemory":`...), t.MapMemory, 10)
	b = strconv.AppendInt(append(b, `,"mapCount":`...), int64(t.MapCount), 10)
	if t.ProgramCount != 0 {
		b = strconv.AppendInt(append(b, `,"programCount":`...), int64(t.ProgramCount), 10)
	}
	return b, nil
}

// appendCostJSON appends the fields of c, each after a comma.
func appendCostJSON(b []byte, c *state.Cost) ([]byte, error) {
	fields := [...]struct {
		key string
		v   float64
	}{
		{`,"nsPerRun":`, c.NsPerRun},
		{`,"nsPerRunDelta":`, c.NsPerRunDelta},
		{`,"runsPerSecond":`, c.RunsPerSecond},
		{`,"cpuPercentNorm":`, c.CPUPercentNorm},
		{`,"statsCostPercent":`, c.StatsCostPercent},
	}
	var err error
	for _, f := range fields {
		if b, err = appendFloatJSON(append(b, f.key...), f.v); err != nil {
			return b, err
		}
	}
	return b, nil
}

// appendPlacementJSON appends the non-empty fields of p, each after a comma.
func appendPlacementJSON(b []byte, p *state.Placement) []byte {
	b = appendOptString(b, `,"cgroup":`, p.Cgroup)
	b = appendOptString(b, `,"unit":`, p.Unit)
	b = appendOptString(b, `,"slice":`, p.Slice)
	b = appendOptString(b, `,"containerID":`, p.ContainerID)
	b = appendOptString(b, `,"podUID":`, p.PodUID)
	b = appendOptString(b, `,"podQoS":`, p.PodQoS)
	b = appendOptString(b, `,"podName":`, p.PodName)
	return appendOptString(b, `,"podNamespace":`, p.PodNamespace)
}

// appendOptString appends key and s unless s is empty (omitempty).
func appendOptString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendJSONString(append(b, key...), s)
}

// appendUint32sJSON appends vs as a JSON array, null when nil.
func appendUint32sJSON(b []byte, vs []uint32) []byte {
	if vs == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(v), 10)
	}
	return append(b, ']')
}

// appendStringsJSON appends ss as a JSON array, null when nil.
func appendStringsJSON(b []byte, ss []string) []byte {
	if ss == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}

// appendFloatJSON appends f as encoding/json does: like ES6, 'e' notation
// below 1e-6 and from 1e21 on, without a leading zero in the exponent.
func appendFloatJSON(b []byte, f float64) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return b, fmt.Errorf("json: unsupported value: %s", strconv.FormatFloat(f, 'g', -1, 64))
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 to e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}

// jsonHex are the digits of \u escapes.
const jsonHex = "0123456789abcdef"

// appendJSONString appends s quoted as encoding/json's Marshal does (HTML
// escaping on): ", \ and control characters escaped (\b \f \n \r \t
// short), <, > and & as \u00XX, invalid UTF-8 as \ufffd, U+2028 and
// U+2029 as \u2028 and \u2029.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', jsonHex[c>>4], jsonHex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(append(b, s[start:i]...), `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(append(b, s[start:i]...), '\\', 'u', '2', '0', '2', jsonHex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
