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
	"golang.org/x/sys/unix"
)

// helperArg is the first argument that turns the harness binary into the
// helper process that loads and holds the programs; holderArg turns it
// into one of the processes the helper spreads them over.
const (
	helperArg = "__load-helper"
	holderArg = "__hold-helper"
)

// heldProgram is one program of the helper and the maps it uses.
type heldProgram struct {
	prog *ebpf.Program
	maps []*ebpf.Map
}

func (h heldProgram) close() {
	h.prog.Close()
	for _, m := range h.maps {
		m.Close()
	}
}

// runHelper loads n socket filters (numbered from first), each with one or two small array maps
// of its own, prints "ready", and holds them until stdin closes. Every
// program is run once so that its stats are not all zero. Meanwhile it
// answers the harness's commands on stdin (see helperSession).
func runHelper(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: " + helperArg + " N FIRST")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 0 {
		return fmt.Errorf("bad program count %q", args[0])
	}
	first, err := strconv.Atoi(args[1])
	if err != nil || first < 0 {
		return fmt.Errorf("bad first program number %q", args[1])
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raising RLIMIT_MEMLOCK: %w", err)
	}
	// Each program and its maps are 2.5 fds on average (the harness
	// gives a helper no more programs than its hard limit allows).
	if err := raiseNoFile(uint64(n*5/2 + 512)); err != nil {
		return err
	}
	s := &helperSession{}
	defer s.close()
	for i := range n {
		p, err := loadHeld(first + i)
		if err != nil {
			return err
		}
		s.progs = append(s.progs, p)
	}
	fmt.Println("ready")
	return s.serve(os.Stdin, os.Stdout)
}

// loadHeld loads the i-th program of the helper with its maps and runs it
// once.
func loadHeld(i int) (heldProgram, error) {
	var h heldProgram
	insns := asm.Instructions{}
	for j := range 1 + i%2 {
		m, err := ebpf.NewMap(&ebpf.MapSpec{
			Name: fmt.Sprintf("bench_m%d", j), Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 4,
		})
		if err != nil {
			h.close()
			return h, fmt.Errorf("creating map %d of program %d: %w", j, i, err)
		}
		h.maps = append(h.maps, m)
		insns = append(insns, asm.LoadMapPtr(asm.R1, m.FD()))
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 0), asm.Return())
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: fmt.Sprintf("bench_%d", i), Type: ebpf.SocketFilter, Instructions: insns, License: "Dual MIT/GPL",
	})
	if err != nil {
		for _, m := range h.maps {
			m.Close()
		}
		return h, fmt.Errorf("loading program %d: %w", i, err)
	}
	h.prog = p
	if _, err := p.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
		h.close()
		return h, fmt.Errorf("running program %d: %w", i, err)
	}
	return h, nil
}

// raiseNoFile raises RLIMIT_NOFILE to at least want.
func raiseNoFile(want uint64) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("reading RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}
	lim.Cur, lim.Max = want, max(lim.Max, want)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raising RLIMIT_NOFILE to %d: %w", want, err)
	}
	return nil
}

// runHolder holds the fds it inherited (3 and up) until stdin closes
// (the helper ends, or dies: PR_SET_PDEATHSIG).
func runHolder() {
	io.Copy(io.Discard, os.Stdin)
}

// helper is a running helper process, seen from the harness.
type helper struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	pid    int
}

// startHelper starts a helper holding n programs numbered from first. The
// helper dies with the harness (PR_SET_PDEATHSIG). Its wait reports when
// they are loaded.
func startHelper(n, first int) (*helper, error) {
	return startSelf(helperArg, strconv.Itoa(n), strconv.Itoa(first))
}

// startSelf starts the harness binary with args, talking to it over its
// stdin and stdout; it dies with the harness (PR_SET_PDEATHSIG).
func startSelf(args ...string) (*helper, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args...)
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
		return nil, fmt.Errorf("starting %s: %w", args[0], err)
	}
	return &helper{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout), pid: cmd.Process.Pid}, nil
}

// do sends a command to the helper and returns the words of its answer,
// which must start with want.
func (h *helper) do(command, want string) ([]string, error) {
	if _, err := fmt.Fprintln(h.stdin, command); err != nil {
		return nil, fmt.Errorf("helper command %q: %w", command, err)
	}
	return h.answer(want, time.Minute)
}

// answer reads one line from the helper, which must start with want.
func (h *helper) answer(want string, timeout time.Duration) ([]string, error) {
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := h.stdout.ReadString('\n')
		ch <- result{line, err}
	}()
	select {
	case r := <-ch:
		words := strings.Fields(r.line)
		if r.err != nil || len(words) == 0 || words[0] != want {
			return nil, fmt.Errorf("helper said %q (%v), want %q", r.line, r.err, want)
		}
		return words[1:], nil
	case <-time.After(timeout):
		return nil, fmt.Errorf("helper did not say %q within %v", want, timeout)
	}
}

// stop closes the helper's stdin, which releases its programs, and waits
// for it to exit.
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
