package main

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// oneShotHeapBytes is how much heap a one-shot asks to have backed by
// huge pages: four times what one answer at 5000 programs allocates
// (about 30 MiB with the kernel BTF), so that most of its heap is
// covered at larger counts too. It is address space only: untouched
// pages cost no memory.
const oneShotHeapBytes = 128 << 20

// oneShotHugeHeap lets the kernel back the heap a one-shot is about to
// use with transparent huge pages (2 MiB) instead of 4 KiB pages. With
// the collector off (oneShotGC) every allocation lands on fresh memory,
// and every first touch of a 4 KiB page is a page fault: about 6800 of
// them at 5000 programs, a quarter of the one-shot's CPU time on a
// virtual machine. The heap is grown once by a large allocation that is
// never touched, that range is marked MADV_HUGEPAGE, and the allocation
// is freed: the runtime reuses the lowest free pages first, so what the
// one-shot allocates next lands in it, and one fault maps 2 MiB.
//
// Call it only with the collector off; it reports whether the kernel
// took the advice, which it ignores when transparent huge pages are
// "never" (Requires Linux 2.6.38 with CONFIG_TRANSPARENT_HUGEPAGE). A
// daemon must not do this: huge pages would add to its resident memory.
func oneShotHugeHeap() bool {
	reserve := make([]byte, oneShotHeapBytes)
	err := unix.Madvise(reserve, unix.MADV_HUGEPAGE)
	// reserve is dead from here: one collection (of the few MiB that
	// package initialisation allocated) frees it for reuse.
	runtime.GC()
	return err == nil
}
