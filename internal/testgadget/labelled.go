package testgadget

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
)

// ProgramLabels are the gadget labels a program of the labelled test
// object (bpf/labelled.bpf.c) carries in its .rodata map, the variables
// bpf_metadata_gadget_{id,name,image}.
type ProgramLabels struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Image string `json:"image"`
}

// LoadLabelled loads one instance of the labelled test object with labels
// set, closed at the end of the test. Its one program is a socket filter
// that never runs.
func LoadLabelled(tb testing.TB, labels ProgramLabels) *ebpf.Program {
	tb.Helper()
	prog, err := newLabelled(labels)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	return prog
}

// newLabelled loads one instance of the labelled object; closing the
// program frees it with its .rodata map.
func newLabelled(labels ProgramLabels) (*ebpf.Program, error) {
	spec, err := loadLabelled()
	if err != nil {
		return nil, fmt.Errorf("loading labelled object spec: %w", err)
	}
	for name, value := range map[string]string{
		labelledVarBpfMetadataGadgetId:    labels.ID,
		labelledVarBpfMetadataGadgetName:  labels.Name,
		labelledVarBpfMetadataGadgetImage: labels.Image,
	} {
		if err := SetCharArray(spec.Variables[name], value); err != nil {
			return nil, err
		}
	}
	// Only the program is kept: it holds its .rodata map.
	var objs struct {
		Prog *ebpf.Program `ebpf:"labelled_prog"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("loading labelled object: %w", err)
	}
	return objs.Prog, nil
}

// SetCharArray sets a char array variable to s, NUL-padded; s must leave
// room for the terminating NUL.
func SetCharArray(v *ebpf.VariableSpec, s string) error {
	if v == nil {
		return fmt.Errorf("no such variable")
	}
	buf := make([]byte, v.Size())
	if len(s) >= len(buf) {
		return fmt.Errorf("variable %s: %q is longer than %d bytes", v.Name, s, len(buf)-1)
	}
	copy(buf, s)
	if err := v.Set(buf); err != nil {
		return fmt.Errorf("setting %s: %w", v.Name, err)
	}
	return nil
}

// joinCgroup moves this process into the cgroup v2 directory dir.
func joinCgroup(dir string) error {
	err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
	if err != nil {
		return fmt.Errorf("joining cgroup %s: %w", dir, err)
	}
	return nil
}
