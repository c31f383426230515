package testutil

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"
)

// CanonicalJSON decodes data and encodes it again indented: object keys
// come out sorted, so a comparison sees key presence and values only.
// Numbers stay exact (no float64 round trip).
func CanonicalJSON(tb testing.TB, data []byte) []byte {
	tb.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		tb.Fatalf("decoding %s: %v", data, err)
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		tb.Fatal(err)
	}
	return append(out, '\n')
}

// CheckGoldenJSON compares data with the golden file at path as canonical
// JSON, or rewrites the file when update is set (the tests' -update flag).
func CheckGoldenJSON(tb testing.TB, path string, data []byte, update bool) {
	tb.Helper()
	got := CanonicalJSON(tb, data)
	if update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			tb.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, CanonicalJSON(tb, want)) {
		tb.Errorf("JSON differs from %s (run with -update to accept):\n--- got\n%s", path, got)
	}
}
