package loader

import (
	"os"
	"path/filepath"
	"testing"
)

// TestReadProcessCachesEnvironPerInstance checks that environ is read once
// per process instance (PID, start time, exe) and again for a new one.
func TestReadProcessCachesEnvironPerInstance(t *testing.T) {
	f := fakeProc{t, t.TempDir()}
	f.write("10/stat", statLine("10", "tool", "1", "4194560", "5000"))
	f.write("10/environ", "BPFSTATS_GADGET_NAME=first\x00")
	f.link("10/exe", "/opt/tool")
	k, err := NewKernel(f.root)
	if err != nil {
		t.Fatal(err)
	}
	read := func(wantName string, wantStart uint64) {
		t.Helper()
		p, err := k.ReadProcess(10)
		if err != nil {
			t.Fatal(err)
		}
		if p.Labels["NAME"] != wantName || p.StartTime != wantStart || p.Comm != "tool" {
			t.Errorf("got %+v, want label NAME=%q, start %d", p, wantName, wantStart)
		}
		p.Labels["NAME"] = "changed by the caller" // must not reach the cache
	}
	read("first", 5000)

	// Same instance: the environment as first read.
	f.write("10/environ", "BPFSTATS_GADGET_NAME=second\x00")
	read("first", 5000)

	// The same PID and start time after an execve: another exe.
	os.Remove(filepath.Join(f.root, "10/exe"))
	f.link("10/exe", "/opt/other")
	read("second", 5000)

	// PID reuse: another start time.
	f.write("10/stat", statLine("10", "tool", "1", "4194560", "7000"))
	f.write("10/environ", "BPFSTATS_GADGET_NAME=third\x00")
	read("third", 7000)

	// An exited instance is not served from the cache.
	os.Remove(filepath.Join(f.root, "10/stat"))
	if _, err := k.ReadProcess(10); err == nil {
		t.Error("process without stat read from the cache")
	}
	if c, ok := k.procReader.cache[procKey{pid: 10, startTime: 7000}]; !ok || c.exe != "/opt/other" || c.labels["NAME"] != "third" {
		t.Errorf("cache entry of the last instance: %+v, %v", c, ok)
	}
}
