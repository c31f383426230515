// Command register is an example runner that cannot label its objects: it
// loads two programs in one process and registers them with the tracker
// as two gadgets, through the registry map (package register,
// docs/registration.md).
//
// The programs are socket filters that never run: the point is the
// tracker's view, two gadgets of one process with the registered labels.
// Run it as root after the tracker started once (it creates the map);
// it keeps the programs until SIGINT or SIGTERM:
//
//	register -registry /sys/fs/bpf/bpfstats/registry
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/bpfstats/tracker/pkg/register"
)

func main() {
	path := flag.String("registry", register.DefaultPath, "the tracker's registry map")
	flag.Parse()
	if err := run(*path); err != nil {
		fmt.Fprintln(os.Stderr, "register:", err)
		os.Exit(1)
	}
}

func run(path string) error {
	reg, err := register.Open(path)
	if err != nil {
		return fmt.Errorf("%w (has the tracker run since the bpffs was mounted?)", err)
	}
	defer reg.Close()
	gadgets := []register.Gadget{
		{ID: fmt.Sprintf("example-open-%d", os.Getpid()), Name: "mytraceopen", Image: "ghcr.io/example/trace_open:latest"},
		{ID: fmt.Sprintf("example-exec-%d", os.Getpid()), Name: "mytraceexec", Image: "ghcr.io/example/trace_exec:latest"},
	}
	for i, g := range gadgets {
		prog, err := loadProgram(fmt.Sprintf("example_reg_%d", i))
		if err != nil {
			return err
		}
		defer prog.Close()
		// Registered after the load: the tracker moves the program to
		// this gadget at its next sweep.
		if err := reg.RegisterProgram(prog, g); err != nil {
			return err
		}
		id := "?"
		if info, err := prog.Info(); err == nil {
			if n, ok := info.ID(); ok {
				id = fmt.Sprint(n)
			}
		}
		fmt.Fprintf(os.Stderr, "program %s registered as gadget %s (%s, %s)\n", id, g.ID, g.Name, g.Image)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}

// loadProgram loads a socket filter that accepts nothing.
func loadProgram(name string) (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", name, err)
	}
	return prog, nil
}
