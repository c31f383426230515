package state

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// AttachReader is an extension point of Kernel: loader.Kernel walks the
// kernel's BPF links and says where each attaches its program, and Sweep
// then fills the Attach of every program row.
type AttachReader interface {
	// ReadAttachments calls fn once for every BPF link, with the ID of
	// the program it attaches (0 when it attaches none, like a struct_ops
	// link) and a short description of where ("raw_tp:sys_enter", see
	// loader.Kernel.ReadAttachments). An error wrapping
	// errors.ErrUnsupported means the kernel cannot list links.
	ReadAttachments(fn func(progID uint32, attach string)) error
}

var _ AttachReader = (*loader.Kernel)(nil)

// NoLink is the one Attach entry of a program that no BPF link attaches
// when the sweep walked the links: it is not attached, or attached
// without a link (perf_event_open and its ioctl, tc or XDP by netlink, a
// socket filter, a sockmap or prog array entry, a struct_ops map) where
// the kernel's link list cannot tell.
const NoLink = "no link"

// attachment is one link's program and description.
type attachment struct {
	progID uint32
	attach string
}

// linkWalk is one walk of the kernel's links, sorted by program, which
// hands out the Attach of each program in ID order (see snapshot). A nil
// linkWalk (no AttachReader, links not listable, a failed walk) leaves
// every Attach unknown.
type linkWalk struct {
	links []attachment
	// arena holds the descriptions of links in order: of returns a part.
	arena []string
	// next is the first link of a program after the last one asked for.
	next int
	// noLink is every unattached row's Attach, shared.
	noLink []string
}

// walkLinks walks the kernel's links, and adds the walk's time to
// *took. It returns nil when the kernel is no AttachReader, cannot list
// links, or the walk failed; the failure is returned.
func (t *Tracker) walkLinks(took *time.Duration) (*linkWalk, error) {
	ar, ok := t.kernel.(AttachReader)
	if !ok || len(t.programs) == 0 {
		return nil, nil
	}
	start := t.opts.now()
	var links []attachment
	var err error
	// A walk of every link, off the loop as the other long reads (see
	// pace.go); it touches only links.
	t.pace.offload(func() {
		err = ar.ReadAttachments(func(progID uint32, attach string) {
			if progID != 0 {
				links = append(links, attachment{progID, attach})
			}
		})
	})
	*took += t.opts.now().Sub(start)
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("reading attach points: %w", err)
	}
	slices.SortFunc(links, func(a, b attachment) int {
		return cmp.Or(cmp.Compare(a.progID, b.progID), cmp.Compare(a.attach, b.attach))
	})
	arena := make([]string, len(links))
	for i, l := range links {
		arena[i] = l.attach
	}
	return &linkWalk{links: links, arena: arena, noLink: t.noLink}, nil
}

// of returns the Attach of program id: where its links attach it, or
// [NoLink]; nil when w is nil. Programs are asked for in ID order. The
// result is a part of the walk's arena, to read: a row keeps it through
// keep.
func (w *linkWalk) of(id uint32) []string {
	if w == nil {
		return nil
	}
	for w.next < len(w.links) && w.links[w.next].progID < id {
		w.next++
	}
	i := w.next
	for w.next < len(w.links) && w.links[w.next].progID == id {
		w.next++
	}
	if i == w.next {
		return w.noLink
	}
	return w.arena[i:w.next:w.next]
}

// keep returns attach, a result of of, for a row to keep: the shared
// [NoLink] as it is, a program's links copied out of the arena, which a
// later sweep's rows would otherwise keep alive whole.
func (w *linkWalk) keep(attach []string) []string {
	if w == nil || sameSlice(attach, w.noLink) {
		return attach
	}
	return frozen(attach)
}
