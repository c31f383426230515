package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is a child of the harness: its stdout lines go to a callback,
// its stderr is kept for errors.
type process struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}

	mu     sync.Mutex
	stderr strings.Builder
}

// startProcess starts cmd; each stdout line goes to onLine (if set).
func startProcess(name string, cmd *exec.Cmd, onLine func(string)) (*process, error) {
	cmd.SysProcAttr = pdeathsig
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, exited: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			if onLine != nil {
				onLine(sc.Text())
			}
		}
	})
	wg.Go(func() {
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			p.mu.Lock()
			if p.stderr.Len() < 64<<10 {
				p.stderr.WriteString(sc.Text() + "\n")
			}
			p.mu.Unlock()
		}
	})
	go func() {
		wg.Wait()
		cmd.Wait() //nolint:errcheck // the exit is reported by exited
		close(p.exited)
	}()
	return p, nil
}

// stop ends the process: SIGTERM, then SIGKILL after 5s.
func (p *process) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // may have exited
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill() //nolint:errcheck // may have exited
		<-p.exited
	}
}

func (p *process) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *process) errors() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// usage is a process's CPU time (user+system) and memory.
type usage struct {
	cpu      time.Duration
	rss, hwm int64 // bytes
}

// clockTick is the kernel's USER_HZ, 100 on Linux.
const clockTick = 10 * time.Millisecond

// readUsage reads /proc/<pid>/stat and status.
func readUsage(pid int) (usage, error) {
	var u usage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// Fields after the command's closing parenthesis; utime and stime are
	// the 14th and 15th fields of the line.
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	u.cpu = time.Duration(ut+st) * clockTick
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			u.rss = kb << 10
		case "VmHWM":
			u.hwm = kb << 10
		}
	}
	return u, nil
}
