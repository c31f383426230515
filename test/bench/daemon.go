package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// daemonSetup is how one "tracker run" is measured.
type daemonSetup struct {
	natsServer  string   // nats-server binary; "" for the tracker's embedded server
	activeEvery int      // every activeEvery-th program runs each interval; 0: none
	variant     string   // names a setup that differs from users' by flags; "" for theirs
	flags       []string // the variant's flags to tracker run
	interval    time.Duration
	warmup      time.Duration // after the first message (or the start, embedded)
	window      time.Duration
}

// daemonUsage is the tracker daemon's own cost at one program count.
type daemonUsage struct {
	n              int
	setup          daemonSetup
	cpuPercent     float64 // user+sys over wall time, % of one CPU, steady state
	switches       float64 // context switches of all its threads per second
	startupCPU     float64 // CPU seconds used until the window
	maxRSSMiB      float64 // VmHWM
	rssMiB         float64 // VmRSS at the end
	rssFileMiB     float64 // of which file-backed (RssFile): the binary's and libraries' pages
	natsCPUPercent float64 // the standalone server's CPU over the window
	msgs, bytes    float64 // received by the subscriber per interval
	logLines       int     // lines the tracker logged at warn or above
	publishErrs    int     // of which about a failed publish
	firstLog       string
	err            error
}

// measureDaemon runs "tracker run" as set up, with the helper's programs
// running as asked, and reads its CPU time and peak RSS from /proc and
// what it published from a subscriber on bpfstats.>.
func measureDaemon(tracker string, n int, h helperGroup, setup daemonSetup) daemonUsage {
	u := daemonUsage{n: n, setup: setup}
	if setup.activeEvery > 0 {
		if _, err := h.do(fmt.Sprintf("active %d %v", setup.activeEvery, setup.interval), "active"); err != nil {
			u.err = err
			return u
		}
		defer h.do("idle", "idle")
	}
	args := []string{"run", "--metrics-addr", "", "--interval", setup.interval.String(), "--log-level", "warn"}
	args = append(args, setup.flags...)
	var sub *subscriber
	natsPID := 0
	if setup.natsServer != "" {
		srv, err := startNATSServer(setup.natsServer)
		if err != nil {
			u.err = err
			return u
		}
		defer srv.stop()
		natsPID = srv.pid()
		if sub, err = subscribe(srv.url, "bpfstats.>"); err != nil {
			u.err = err
			return u
		}
		defer sub.close()
		args = append(args, "--nats-url", srv.url)
	} else {
		port, err := freePort()
		if err != nil {
			u.err = err
			return u
		}
		args = append(args, "--nats-listen", "127.0.0.1:"+strconv.Itoa(port))
	}
	d, err := startDaemon(tracker, args)
	if err != nil {
		u.err = err
		return u
	}
	defer d.stop()
	u.err = d.measure(&u, sub, natsPID)
	u.logLines, u.firstLog = d.log.lines()
	u.publishErrs = d.log.publishFailures()
	return u
}

// daemon is a running "tracker run".
type daemon struct {
	cmd    *exec.Cmd
	log    *logCounter
	exited chan error
}

func startDaemon(tracker string, args []string) (*daemon, error) {
	d := &daemon{cmd: exec.Command(tracker, args...), log: &logCounter{}, exited: make(chan error, 1)}
	d.cmd.Stderr = d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.exited <- d.cmd.Wait() }()
	return d, nil
}

// sleep waits for d unless the daemon exits first.
func (d *daemon) sleep(dur time.Duration, until <-chan struct{}) error {
	select {
	case err := <-d.exited:
		d.exited <- err
		_, first := d.log.lines()
		return fmt.Errorf("tracker run exited: %v: %s", err, first)
	case <-until:
		return nil
	case <-time.After(dur):
		if until != nil {
			return fmt.Errorf("no message from tracker run within %v", dur)
		}
		return nil
	}
}

// measure waits for the warm-up, then measures the window.
func (d *daemon) measure(u *daemonUsage, sub *subscriber, natsPID int) error {
	pid := d.cmd.Process.Pid
	if sub != nil {
		if err := d.sleep(2*time.Minute, sub.first); err != nil {
			return err
		}
	}
	if err := d.sleep(u.setup.warmup, nil); err != nil {
		return err
	}
	t0, err := cpuTicks(pid)
	if err != nil {
		return err
	}
	s0, err := threadSwitches(pid)
	if err != nil {
		return err
	}
	var n0 uint64
	var m0, b0 int64
	if sub != nil {
		if n0, err = cpuTicks(natsPID); err != nil {
			return err
		}
		m0, b0 = sub.counts()
	}
	start := time.Now()
	if err := d.sleep(u.setup.window, nil); err != nil {
		return err
	}
	t1, err := cpuTicks(pid)
	if err != nil {
		return err
	}
	s1, err := threadSwitches(pid)
	if err != nil {
		return err
	}
	wall := time.Since(start).Seconds()
	u.switches = float64(s1-s0) / wall
	intervals := wall / u.setup.interval.Seconds()
	if sub != nil {
		m1, b1 := sub.counts()
		u.msgs, u.bytes = float64(m1-m0)/intervals, float64(b1-b0)/intervals
		n1, err := cpuTicks(natsPID)
		if err != nil {
			return err
		}
		u.natsCPUPercent = float64(n1-n0) / loader.ClockTicksPerSecond / wall * 100
	}
	u.startupCPU = float64(t0) / loader.ClockTicksPerSecond
	u.cpuPercent = float64(t1-t0) / loader.ClockTicksPerSecond / wall * 100
	u.maxRSSMiB, u.rssMiB, u.rssFileMiB, err = memory(pid)
	return err
}

// stop ends the daemon with SIGTERM (SIGKILL after 15 s).
func (d *daemon) stop() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
}

// logCounter counts the lines written to it and keeps the first few
// distinct ones.
type logCounter struct {
	mu      sync.Mutex
	n       int
	publish int // lines about a failed publish
	partial string
	first   []string
}

func (l *logCounter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	text := l.partial + string(p)
	lines := strings.Split(text, "\n")
	l.partial = lines[len(lines)-1]
	for _, line := range lines[:len(lines)-1] {
		l.n++
		if strings.Contains(line, `"message":"publishing`) {
			l.publish++
		}
		line = line[:min(len(line), 300)]
		if len(l.first) < 3 && !slices.Contains(l.first, line) {
			l.first = append(l.first, line)
		}
	}
	return len(p), nil
}

// lines returns how many lines were written and the first few distinct
// ones.
func (l *logCounter) lines() (int, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n, strings.Join(l.first, "\n")
}

func (l *logCounter) publishFailures() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.publish
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

// threadSwitches returns the context switches, voluntary and not, of
// pid's threads: how often they went to sleep (or were put off a CPU) and
// had to be woken again. A thread that exited takes its count with it.
func threadSwitches(pid int) (uint64, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, t := range tasks {
		data, err := os.ReadFile(dir + "/" + t.Name() + "/status")
		if err != nil {
			continue // exited meanwhile
		}
		for _, line := range strings.Split(string(data), "\n") {
			key, value, ok := strings.Cut(line, ":")
			if ok && (key == "voluntary_ctxt_switches" || key == "nonvoluntary_ctxt_switches") {
				v, err := strconv.ParseUint(strings.TrimSpace(value), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("%s/%s/status: %s: %w", dir, t.Name(), key, err)
				}
				n += v
			}
		}
	}
	return n, nil
}

// memory returns VmHWM, VmRSS and RssFile of pid in MiB.
func memory(pid int) (hwm, rss, file float64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, err
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
		case "RssFile":
			file = kb / 1024
		}
	}
	return hwm, rss, file, sc.Err()
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
