package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// helperSession is the helper's state between the harness's commands:
//
//	active P D   run every P-th program (BPF_PROG_TEST_RUN, 10 runs) every D
//	idle         stop running them
//	spread K     hand every program and its maps to K holder processes,
//	             one share each, and close this process's fds of them
//
// Each command is answered by one line starting with its name ("spread"
// with the holders' pids).
type helperSession struct {
	progs   []heldProgram
	holders []*exec.Cmd
	stdins  []io.WriteCloser

	stopActive chan struct{}
	activeDone sync.WaitGroup
}

func (s *helperSession) serve(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		words := strings.Fields(sc.Text())
		if len(words) == 0 {
			continue
		}
		var reply string
		var err error
		switch words[0] {
		case "active":
			err = s.active(words[1:])
			reply = "active"
		case "idle":
			s.idle()
			reply = "idle"
		case "spread":
			reply, err = s.spread(words[1:])
		default:
			err = fmt.Errorf("unknown command %q", words[0])
		}
		if err != nil {
			return err
		}
		fmt.Fprintln(out, reply)
	}
	return sc.Err()
}

// active starts running every P-th program every D.
func (s *helperSession) active(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("active: want P D, got %q", args)
	}
	every, err := strconv.Atoi(args[0])
	if err != nil || every <= 0 {
		return fmt.Errorf("active: bad share %q", args[0])
	}
	d, err := time.ParseDuration(args[1])
	if err != nil || d <= 0 {
		return fmt.Errorf("active: bad interval %q", args[1])
	}
	s.idle()
	var progs []*ebpf.Program
	for i := 0; i < len(s.progs); i += every {
		progs = append(progs, s.progs[i].prog)
	}
	s.stopActive = make(chan struct{})
	s.activeDone.Add(1)
	go s.runActive(progs, d, s.stopActive)
	return nil
}

// runActive runs each program ten times every d until stop closes.
func (s *helperSession) runActive(progs []*ebpf.Program, d time.Duration, stop chan struct{}) {
	defer s.activeDone.Done()
	opts := &ebpf.RunOptions{Data: make([]byte, 64), Repeat: 10}
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		for _, p := range progs {
			if _, err := p.Run(opts); err != nil {
				fmt.Fprintln(os.Stderr, "bench helper: running a program:", err)
				return
			}
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

func (s *helperSession) idle() {
	if s.stopActive != nil {
		close(s.stopActive)
		s.activeDone.Wait()
		s.stopActive = nil
	}
}

// spread starts K holder processes, hands each a share of the programs
// with their maps, and closes this process's fds of them.
func (s *helperSession) spread(args []string) (string, error) {
	if len(args) != 1 {
		return "", fmt.Errorf("spread: want K, got %q", args)
	}
	k, err := strconv.Atoi(args[0])
	if err != nil || k <= 0 || k > len(s.progs) {
		return "", fmt.Errorf("spread: bad holder count %q for %d programs", args[0], len(s.progs))
	}
	s.idle()
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	reply := []string{"spread"}
	for i := range k {
		share := s.progs[i*len(s.progs)/k : (i+1)*len(s.progs)/k]
		pid, err := s.startHolder(self, share)
		if err != nil {
			return "", err
		}
		reply = append(reply, strconv.Itoa(pid))
	}
	for _, p := range s.progs {
		p.close()
	}
	s.progs = nil
	return strings.Join(reply, " "), nil
}

// startHolder starts one holder process with dups of the share's fds.
func (s *helperSession) startHolder(self string, share []heldProgram) (int, error) {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	add := func(fd int) error {
		dup, err := unix.Dup(fd)
		if err != nil {
			return fmt.Errorf("dup: %w", err)
		}
		files = append(files, os.NewFile(uintptr(dup), "bpf"))
		return nil
	}
	for _, p := range share {
		if err := add(p.prog.FD()); err != nil {
			return 0, err
		}
		for _, m := range p.maps {
			if err := add(m.FD()); err != nil {
				return 0, err
			}
		}
	}
	cmd := exec.Command(self, holderArg)
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting a holder: %w", err)
	}
	s.holders = append(s.holders, cmd)
	s.stdins = append(s.stdins, stdin)
	return cmd.Process.Pid, nil
}

// close stops the runs, closes every program and ends the holders.
func (s *helperSession) close() {
	s.idle()
	for _, p := range s.progs {
		p.close()
	}
	for _, in := range s.stdins {
		in.Close()
	}
	for _, c := range s.holders {
		c.Wait()
	}
}
