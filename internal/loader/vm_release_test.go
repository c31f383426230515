package loader

import (
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listIDs lists every ID of one kind (BPF_PROG_GET_NEXT_ID, BPF_LINK_GET_NEXT_ID, ...).
func listIDs(t *testing.T, cmd uintptr) []uint32 {
	t.Helper()
	ids, err := walkIDs(cmd, "object", nil)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// Closing the fentry source leaves none of its programs or links in the
// kernel: after shutdown the tracker holds nothing. In the VM nothing else
// loads programs, so the lists must come back to what they were.
func TestVMFentryCloseFreesEverything(t *testing.T) {
	requireVM(t)
	progsBefore := listIDs(t, unix.BPF_PROG_GET_NEXT_ID)
	linksBefore := listIDs(t, unix.BPF_LINK_GET_NEXT_ID)
	src, err := OpenSource(SourceFentry, SourceOptions{Logf: t.Logf})
	if err != nil {
		t.Fatalf("opening fentry: %v", err)
	}
	if progs := listIDs(t, unix.BPF_PROG_GET_NEXT_ID); len(progs) <= len(progsBefore) {
		t.Fatalf("fentry source loaded no programs? before %v, open %v", progsBefore, progs)
	}
	if links := listIDs(t, unix.BPF_LINK_GET_NEXT_ID); len(links) <= len(linksBefore) {
		t.Fatalf("fentry source holds no links? before %v, open %v", linksBefore, links)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	// Programs are freed after an RCU grace period: wait for it.
	deadline := time.Now().Add(20 * time.Second)
	for {
		progs := listIDs(t, unix.BPF_PROG_GET_NEXT_ID)
		links := listIDs(t, unix.BPF_LINK_GET_NEXT_ID)
		if slices.Equal(progs, progsBefore) && slices.Equal(links, linksBefore) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after Close: programs %v (before %v), links %v (before %v)", progs, progsBefore, links, linksBefore)
		}
		time.Sleep(10 * time.Millisecond) // no event tells when the kernel frees them
	}
}
