package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
)

// helperArg is the first argument that turns the harness binary into the
// helper process that loads and holds the programs.
const helperArg = "__load-helper"

// runHelper loads n socket filters, each with one or two small array maps
// of its own, prints "ready", and holds them until stdin closes. Every
// program is run once so that its stats are not all zero.
func runHelper(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: " + helperArg + " N")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 0 {
		return fmt.Errorf("bad program count %q", args[0])
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raising RLIMIT_MEMLOCK: %w", err)
	}
	var objs []io.Closer
	defer func() {
		for _, o := range objs {
			o.Close()
		}
	}()
	for i := range n {
		insns := asm.Instructions{}
		for j := range 1 + i%2 {
			m, err := ebpf.NewMap(&ebpf.MapSpec{
				Name: fmt.Sprintf("bench_m%d", j), Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 4,
			})
			if err != nil {
				return fmt.Errorf("creating map %d of program %d: %w", j, i, err)
			}
			objs = append(objs, m)
			insns = append(insns, asm.LoadMapPtr(asm.R1, m.FD()))
		}
		insns = append(insns, asm.Mov.Imm(asm.R0, 0), asm.Return())
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: fmt.Sprintf("bench_%d", i), Type: ebpf.SocketFilter, Instructions: insns, License: "Dual MIT/GPL",
		})
		if err != nil {
			return fmt.Errorf("loading program %d: %w", i, err)
		}
		objs = append(objs, p)
		if _, err := p.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
			return fmt.Errorf("running program %d: %w", i, err)
		}
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin) // until the harness closes it or dies
	return nil
}

// helper is a running helper process.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	pid   int
}

// startHelper starts a helper holding n programs and waits until they are
// loaded. The helper dies with the harness (PR_SET_PDEATHSIG).
func startHelper(n int) (*helper, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, helperArg, strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting helper: %w", err)
	}
	h := &helper{cmd: cmd, stdin: stdin, pid: cmd.Process.Pid}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("helper said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			h.stop()
			return nil, fmt.Errorf("helper with %d programs: %w", n, err)
		}
	case <-time.After(3 * time.Minute):
		h.stop()
		return nil, fmt.Errorf("helper with %d programs not ready after 3 minutes", n)
	}
	return h, nil
}

// stop releases the helper's programs and waits for it to exit.
func (h *helper) stop() {
	h.stdin.Close()
	done := make(chan struct{})
	go func() { h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		h.cmd.Process.Kill()
		<-done
	}
}
