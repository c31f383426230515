package loader

import (
	"os"
	"testing"
)

// TestVMPerfCPUHotplug takes CPU 1 offline and online again and checks
// that loads on it are seen afterwards, whether a scan saw it offline or
// not (a suspend/resume freezes the tracker while CPUs go and come back).
// Only inside the VM: never offline a CPU of the host.
func TestVMPerfCPUHotplug(t *testing.T) {
	requireVM(t)
	const control = "/sys/devices/system/cpu/cpu1/online"
	if _, err := os.Stat(control); err != nil {
		t.Skipf("vm: cpu1 cannot be taken offline (boot with -smp 2): %v", err)
	}
	setOnline := func(t *testing.T, on string) {
		t.Helper()
		if err := os.WriteFile(control, []byte(on), 0); err != nil {
			t.Fatalf("writing %q to %s: %v", on, control, err)
		}
	}
	t.Cleanup(func() { _ = os.WriteFile(control, []byte("1"), 0) })

	t.Run("offline and online between scans", func(t *testing.T) {
		src := perfOpen(t, perfConfig{pages: 16, lostCounter: true})
		before := perfRingOf(src, 1)
		setOnline(t, "0")
		setOnline(t, "1")
		// The first scan may still see time the event ran before the CPU
		// went offline; the second finds it standing still.
		perfScan(t, src)
		perfScan(t, src)
		replaced := perfRingOf(src, 1) != before
		t.Logf("event of cpu 1 replaced: %v (false: the kernel kept it running)", replaced)
		perfCheckLoadOn(t, src, 1, replaced)
	})

	t.Run("offline across a scan", func(t *testing.T) {
		src := perfOpen(t, perfConfig{pages: 16, lostCounter: true})
		setOnline(t, "0")
		perfScan(t, src)
		if perfRingOf(src, 1) != nil {
			t.Error("ring of offline cpu 1 still open after a scan")
		}
		setOnline(t, "1")
		perfScan(t, src)
		if perfRingOf(src, 1) == nil {
			t.Fatal("cpu 1 back online but not watched after a scan")
		}
		perfCheckLoadOn(t, src, 1, true)
	})
}
