package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// daemonUsage is the tracker daemon's own cost.
type daemonUsage struct {
	cpuPercent     float64 // user+sys over wall time, % of one CPU, steady state
	startupCPU     float64 // CPU seconds used in the warm-up
	maxRSSMiB      float64 // VmHWM
	rssMiB         float64 // VmRSS at the end
	window, warmup time.Duration
	err            error
}

// measureDaemon runs "tracker run" for warmup+window and reads its CPU
// time and peak RSS from /proc.
func measureDaemon(tracker string, warmup, window time.Duration) daemonUsage {
	u := daemonUsage{window: window, warmup: warmup}
	port, err := freePort()
	if err != nil {
		u.err = err
		return u
	}
	var stderr strings.Builder
	cmd := exec.Command(tracker, "run", "--metrics-addr", "", "--nats-listen", "127.0.0.1:"+strconv.Itoa(port),
		"--interval", "1s", "--log-level", "warn")
	cmd.Stderr = &limitedWriter{w: &stderr, n: 64 << 10}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		u.err = err
		return u
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}()
	pid := cmd.Process.Pid
	select {
	case err := <-exited:
		u.err = fmt.Errorf("tracker run exited during warm-up: %v: %s", err, stderr.String())
		exited <- err
		return u
	case <-time.After(warmup):
	}
	t0, err := cpuTicks(pid)
	if err != nil {
		u.err = err
		return u
	}
	start := time.Now()
	select {
	case err := <-exited:
		u.err = fmt.Errorf("tracker run exited: %v: %s", err, stderr.String())
		exited <- err
		return u
	case <-time.After(window):
	}
	t1, err := cpuTicks(pid)
	if err != nil {
		u.err = err
		return u
	}
	wall := time.Since(start).Seconds()
	u.startupCPU = float64(t0) / loader.ClockTicksPerSecond
	u.cpuPercent = float64(t1-t0) / loader.ClockTicksPerSecond / wall * 100
	u.maxRSSMiB, u.rssMiB, u.err = memory(pid)
	return u
}

// cpuTicks returns utime+stime of pid in clock ticks.
func cpuTicks(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// fields[0] is field 3 (state): utime is field 14, stime 15.
	ut, err1 := strconv.ParseUint(fields[11], 10, 64)
	st, err2 := strconv.ParseUint(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return ut + st, nil
}

// memory returns VmHWM and VmRSS of pid in MiB.
func memory(pid int) (hwm, rss float64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		switch k {
		case "VmHWM":
			hwm = kb / 1024
		case "VmRSS":
			rss = kb / 1024
		}
	}
	return hwm, rss, sc.Err()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// limitedWriter keeps the first n bytes written to it.
type limitedWriter struct {
	w interface{ Write([]byte) (int, error) }
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		q := p[:min(len(p), l.n)]
		l.w.Write(q)
		l.n -= len(q)
	}
	return len(p), nil
}
