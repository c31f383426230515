package publish

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/bpfstats/tracker/internal/state"
)

// sourcedRowForTest is the row type whose encoding/json output
// WriteRowsJSON reproduces.
type sourcedRowForTest struct {
	state.Row
	Source string `json:"source,omitempty"`
}

// stdlibRowsJSON is what encoding/json writes for rows with source.
func stdlibRowsJSON(t *testing.T, rows []state.Row, source string) []byte {
	t.Helper()
	sourced := make([]sourcedRowForTest, len(rows))
	for i := range rows {
		sourced[i] = sourcedRowForTest{Row: rows[i], Source: source}
	}
	want, err := json.Marshal(sourced)
	if err != nil {
		t.Fatal(err)
	}
	return append(want, '\n')
}

func checkRowsJSON(t *testing.T, rows []state.Row, source string) {
	t.Helper()
	var got bytes.Buffer
	ptrs := make([]*state.Row, len(rows))
	for i := range rows {
		ptrs[i] = &rows[i]
	}
	if err := WriteRowsJSON(&got, ptrs, source); err != nil {
		t.Fatal(err)
	}
	if want := stdlibRowsJSON(t, rows, source); !bytes.Equal(got.Bytes(), want) {
		t.Errorf("WriteRowsJSON differs from encoding/json:\n got %s\nwant %s", got.Bytes(), want)
	}
}

// hostileStrings are strings whose JSON escaping differs between careless
// encoders.
var hostileStrings = []string{
	"", "plain", `q"uote`, `back\slash`, "ctl\x00\x01\x07\x08\x09\x0a\x0b\x0c\x0d\x1b\x1f\x7f",
	"<script>&amp;</script>", "bad\xffutf8\xc3", "trunc\xe2\x80", "sep\u2028par\u2029end",
	"émoji 🐝 ünïcode", "\xed\xa0\x80surrogate", strings.Repeat("x", 300),
}

// filledValue sets every field of v (recursively) to a value that is not
// its zero value, picking strings from hostileStrings by seed, so that a
// field added to state.Row and missed by the encoder shows as a diff.
func filledValue(v reflect.Value, seed *int) {
	*seed++
	switch v.Kind() {
	case reflect.String:
		v.SetString(hostileStrings[*seed%len(hostileStrings)] + "s")
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uint:
		v.SetUint(uint64(*seed) * 1000003)
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(int64(*seed) * 7919)
	case reflect.Float64, reflect.Float32:
		v.SetFloat(float64(*seed) / 3)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				filledValue(v.Field(i), seed)
			}
		}
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 3, 3)
		for i := range 3 {
			filledValue(s.Index(i), seed)
		}
		v.Set(s)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		filledValue(p.Elem(), seed)
		v.Set(p)
	default:
		panic("filledValue: unhandled kind " + v.Kind().String())
	}
}

func TestWriteRowsJSONEveryField(t *testing.T) {
	var rows []state.Row
	for seed := range len(hostileStrings) {
		var r state.Row
		filledValue(reflect.ValueOf(&r).Elem(), &seed)
		rows = append(rows, r)
	}
	checkRowsJSON(t, rows, "perf")
	checkRowsJSON(t, rows, "")
}

func TestWriteRowsJSONEmptyAndOmitted(t *testing.T) {
	checkRowsJSON(t, nil, "none")
	checkRowsJSON(t, []state.Row{}, "none")
	checkRowsJSON(t, []state.Row{
		{},
		{PIDs: []uint32{}, Comms: []string{}, MapIDs: []uint32{}, Attach: []string{}},
		{Loader: &state.ProcessRef{}},
	}, "none")
}

func TestWriteRowsJSONHostileStrings(t *testing.T) {
	var rows []state.Row
	for _, s := range hostileStrings {
		rows = append(rows, state.Row{
			NodeName: s, GadgetID: s, GadgetName: s, GadgetImage: s, ProgName: s, ProgType: s, Tag: s,
			Comms: []string{s, s}, Attach: []string{s}, Loader: &state.ProcessRef{PID: 1, Comm: s, Exe: s},
			Placement: state.Placement{Cgroup: s, Unit: s, Slice: s, ContainerID: s, PodUID: s, PodQoS: s, PodName: s, PodNamespace: s},
		})
	}
	checkRowsJSON(t, rows, "sou\"rce\u2028")
	// Every byte value alone, and every pair around the UTF-8 lead bytes.
	var all []state.Row
	for c := range 256 {
		all = append(all, state.Row{ProgName: string([]byte{byte(c)}), Tag: string([]byte{'a', byte(c), 0x80})})
	}
	checkRowsJSON(t, all, "none")
}

func TestWriteRowsJSONFloats(t *testing.T) {
	var rows []state.Row
	for _, f := range []float64{0, math.Copysign(0, -1), 1, -1, 0.5, 1e-6, 9.99e-7, 1e-7, 1.5e-9, 1e20, 1e21, 123456789e15,
		math.MaxFloat64, math.SmallestNonzeroFloat64, 1.0 / 3, 100, 12.34567} {
		rows = append(rows, state.Row{Totals: state.Totals{CPUPercent: f}, Cost: state.Cost{NsPerRun: f, RunsPerSecond: -f}})
	}
	checkRowsJSON(t, rows, "none")
}

func TestWriteRowsJSONRejectsNaN(t *testing.T) {
	for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		rows := []*state.Row{{Cost: state.Cost{NsPerRunDelta: f}}}
		var out bytes.Buffer
		if err := WriteRowsJSON(&out, rows, ""); err == nil {
			t.Errorf("%v: no error", f)
		}
		if out.Len() != 0 {
			t.Errorf("%v: wrote %q despite the error", f, out.Bytes())
		}
		if _, err := json.Marshal(rows); err == nil {
			t.Errorf("%v: encoding/json accepts it too: the encoders disagree", f)
		}
	}
}

// BenchmarkWriteRowsJSON compares the one-shot's encoder with encoding/json
// on 5000 program rows.
func BenchmarkWriteRowsJSON(b *testing.B) {
	rows := make([]state.Row, 5000)
	for i := range rows {
		rows[i] = state.Row{
			GadgetID: "6bcfcca7a12", GadgetName: "trace_exec", GadgetImage: "ghcr.io/x/trace_exec:v1",
			ProgID: uint32(1000 + i), ProgName: "ig_execve_e", ProgType: "tracepoint",
			Totals: state.Totals{Runtime: 123456789, Runcount: 4567, CPUPercent: 0.0123, MapMemory: 1 << 20, MapCount: 3},
			PIDs:   []uint32{4242}, Comms: []string{"ig"}, MapIDs: []uint32{1, 2, 3}, Tag: "0123456789abcdef",
			Cost: state.Cost{NsPerRun: 27032.1, CPUPercentNorm: 0.006},
		}
	}
	ptrs := make([]*state.Row, len(rows))
	for i := range rows {
		ptrs[i] = &rows[i]
	}
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := WriteRowsJSON(io.Discard, ptrs, "none"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		sourced := make([]sourcedRowForTest, len(rows))
		for b.Loop() {
			for i := range rows {
				sourced[i] = sourcedRowForTest{Row: rows[i], Source: "none"}
			}
			if _, err := json.Marshal(sourced); err != nil {
				b.Fatal(err)
			}
		}
	})
}
