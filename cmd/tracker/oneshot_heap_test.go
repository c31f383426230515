package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// hugeHeapChildEnv makes TestOneShotHugeHeap run its check in a process of
// its own: what lands in the advised range depends on what the heap held
// before, and a test binary's heap holds what earlier tests left.
const hugeHeapChildEnv = "BPFSTATS_TEST_HUGE_HEAP_CHILD"

// TestOneShotHugeHeap checks that what a one-shot allocates after
// oneShotHugeHeap lands in memory advised for huge pages (VmFlags "hg" in
// /proc/self/smaps): if the runtime stopped reusing the reservation,
// the advice would cover nothing.
func TestOneShotHugeHeap(t *testing.T) {
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil {
		t.Skipf("transparent huge pages unsupported: %v", err)
	}
	if strings.Contains(string(mode), "[never]") {
		t.Skipf("transparent huge pages are off: %s", strings.TrimSpace(string(mode)))
	}
	if os.Getenv(hugeHeapChildEnv) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestOneShotHugeHeap$", "-test.v")
		cmd.Env = append(os.Environ(), hugeHeapChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		t.Logf("child:\n%s", out)
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		if !strings.Contains(string(out), "--- PASS: TestOneShotHugeHeap") {
			t.Fatal("child ran no check")
		}
		return
	}

	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	if !oneShotHugeHeap() {
		t.Fatal("madvise(MADV_HUGEPAGE) refused")
	}
	// What a sweep allocates: many small objects and a few large slices.
	var keep [][]byte
	for i := range 20000 {
		size := 96
		if i%1000 == 0 {
			size = 256 << 10
		}
		b := make([]byte, size)
		keep = append(keep, b)
	}
	advised, err := hugePageRanges()
	if err != nil {
		t.Fatal(err)
	}
	// The first small objects fill the spans and free pages that
	// package initialisation left: most bytes, not all, land in the
	// advised range.
	in, all := 0, 0
	for _, b := range keep {
		a := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
		all += len(b)
		for _, r := range advised {
			if a >= r[0] && a < r[1] {
				in += len(b)
				break
			}
		}
	}
	t.Logf("%d of %d bytes allocated in %d ranges advised for huge pages", in, all, len(advised))
	if in < all*3/4 {
		t.Errorf("only %d of %d bytes allocated landed in memory advised for huge pages", in, all)
	}
}

// hugePageRanges returns the mappings of this process with the
// MADV_HUGEPAGE flag ("hg" in VmFlags).
func hugePageRanges() ([][2]uintptr, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ranges [][2]uintptr
	var cur [2]uintptr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(fields[0], "-"); ok && !strings.HasSuffix(fields[0], ":") {
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				cur = [2]uintptr{uintptr(l), uintptr(h)}
				continue
			}
		}
		if fields[0] == "VmFlags:" {
			for _, fl := range fields[1:] {
				if fl == "hg" {
					ranges = append(ranges, cur)
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading /proc/self/smaps: %w", err)
	}
	return ranges, nil
}
