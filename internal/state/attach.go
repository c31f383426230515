package state

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

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

// readAttach fills the Attach of snap's program rows from one walk of the
// kernel's links, and adds the walk's time to snap.SweepDuration. Rows
// stay without Attach (unknown) when the kernel is no AttachReader, cannot
// list links, or the walk failed; the failure is returned.
func (t *Tracker) readAttach(snap *Snapshot) error {
	ar, ok := t.kernel.(AttachReader)
	if !ok || len(snap.Programs) == 0 {
		return nil
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
	snap.SweepDuration += t.opts.now().Sub(start)
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		return nil
	case err != nil:
		return fmt.Errorf("reading attach points: %w", err)
	}
	slices.SortFunc(links, func(a, b attachment) int {
		return cmp.Or(cmp.Compare(a.progID, b.progID), cmp.Compare(a.attach, b.attach))
	})
	// One array for every row's Attach, cut like rowArenas.
	arena := make([]string, len(links))
	for i, l := range links {
		arena[i] = l.attach
	}
	noLink := []string{NoLink}
	i := 0
	for r := range snap.Programs {
		row := &snap.Programs[r]
		for i < len(links) && links[i].progID < row.ProgID {
			i++
		}
		j := i
		for j < len(links) && links[j].progID == row.ProgID {
			j++
		}
		if j == i {
			row.Attach = noLink[:1:1]
			continue
		}
		row.Attach = arena[i:j:j]
		i = j
	}
	return nil
}
