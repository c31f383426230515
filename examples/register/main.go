// Command register is an example runner that cannot label its objects: it
// loads two programs in one process and registers them with the tracker
// as two gadgets, through the registry map at register.DefaultPath
// (package register, docs/registration.md).
//
// The programs are socket filters that never run: the point is the
// tracker's view, two gadgets of one process with the registered labels.
// Run it as root after the tracker started once (it creates the map); it
// keeps the programs until SIGINT or SIGTERM.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/bpfstats/tracker/pkg/register"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "register:", err)
		os.Exit(1)
	}
}

func run() error {
	open, err := loadProgram("example_reg_open")
	if err != nil {
		return err
	}
	defer open.Close()
	exec, err := loadProgram("example_reg_exec")
	if err != nil {
		return err
	}
	defer exec.Close()
	pid := os.Getpid()
	openGadget := register.Gadget{ID: fmt.Sprintf("example-open-%d", pid), Name: "mytraceopen", Image: "ghcr.io/example/trace_open:latest"}
	execGadget := register.Gadget{ID: fmt.Sprintf("example-exec-%d", pid), Name: "mytraceexec", Image: "ghcr.io/example/trace_exec:latest"}
	// Registered after the load: the tracker moves each program to its
	// gadget at its next sweep. A runner holding the program registers it
	// by fd; one that knows only the ID registers it by ID (which needs
	// CAP_SYS_ADMIN to read the program's tag).
	if err := register.RegisterProgram(open, openGadget); err != nil {
		return fmt.Errorf("%w (has the tracker run since the bpffs was mounted?)", err)
	}
	execID, err := programID(exec)
	if err != nil {
		return err
	}
	if err := register.Register(execID, execGadget); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "registered example_reg_open as %s and program %d (example_reg_exec) as %s\n", openGadget.ID, execID, execGadget.ID)
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

func programID(prog *ebpf.Program) (uint32, error) {
	info, err := prog.Info()
	if err != nil {
		return 0, fmt.Errorf("reading program info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return 0, fmt.Errorf("program %s: the kernel gives no ID", prog)
	}
	return uint32(id), nil
}
