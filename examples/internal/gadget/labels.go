package gadget

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Labels name a gadget instance from inside its programs: the loader
// writes them into the object's read-only variables
// bpf_metadata_gadget_{id,name,image} (bpf/gadget_labels.h) before
// loading, so they live in the kernel with the programs. bpfstats tracker
// reads them from each program's .rodata map, and "bpftool prog show"
// prints them as metadata. One process may load many instances, each
// with its own labels: each is a gadget of its own.
type Labels struct {
	ID, Name, Image string
}

// Set writes the labels into spec's variables; empty labels stay empty
// (the tracker then names the gadget from the process). An object
// without the variables is an error.
func (l Labels) Set(spec *ebpf.CollectionSpec) error {
	for name, value := range map[string]string{
		"bpf_metadata_gadget_id":    l.ID,
		"bpf_metadata_gadget_name":  l.Name,
		"bpf_metadata_gadget_image": l.Image,
	} {
		v, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("object has no variable %s (include gadget_labels.h)", name)
		}
		buf := make([]byte, v.Size())
		if len(value) >= len(buf) {
			return fmt.Errorf("%s: %q is longer than %d bytes", name, value, len(buf)-1)
		}
		copy(buf, value)
		if err := v.Set(buf); err != nil {
			return fmt.Errorf("setting %s: %w", name, err)
		}
	}
	return nil
}
