package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
)

// median returns the median of xs (0 when empty).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile returns the p-th percentile (nearest rank) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// method is one way of doing a measured job; run returns how many
// programs it covered.
type method struct {
	name string
	run  func() (int, error)
}

// timeMethods runs each method reps times, interleaved so that machine
// noise hits all alike, and returns the median time per program in
// microseconds, by method name.
func timeMethods(reps int, methods []method) (map[string]float64, map[string]int, error) {
	per := make(map[string][]float64)
	counts := make(map[string]int)
	for _, m := range methods { // warm-up: caches, cilium's feature probes
		if _, err := m.run(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", m.name, err)
		}
	}
	for range reps {
		for _, m := range methods {
			runtime.GC() // the previous method's garbage is not this one's cost
			start := time.Now()
			n, err := m.run()
			d := time.Since(start)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", m.name, err)
			}
			if n == 0 {
				return nil, nil, fmt.Errorf("%s covered no program", m.name)
			}
			per[m.name] = append(per[m.name], float64(d.Nanoseconds())/1000/float64(n))
			counts[m.name] = n
		}
	}
	out := make(map[string]float64)
	for name, xs := range per {
		out[name] = median(xs)
	}
	return out, counts, nil
}

// Method names of the stats sweep.
const (
	sweepTrackerIter    = "tracker: ReadPrograms, iter/bpf_prog"
	sweepIterFloor      = "floor: iter/bpf_prog running an empty program, output read"
	sweepTrackerSyscall = "tracker fallback: ReadPrograms, bpf(2)"
	sweepTrackerFull    = "tracker: whole state.Sweep (stats, maps, holders, rows)"
	sweepCiliumIG       = "Inspektor Gadget: cilium ID walk + NewProgramFromID + Info() + Stats()"
	sweepBpftool        = "bpftool: GET_NEXT_ID + GET_FD_BY_ID + GET_INFO + close"
)

// measureSweeps times the stats sweep methods over every program.
func measureSweeps(reps int) (map[string]float64, map[string]int, error) {
	iterK, err := loader.NewKernel("")
	if err != nil {
		return nil, nil, err
	}
	defer iterK.Close()
	if perr, _ := iterK.Iterators(); perr != nil {
		return nil, nil, fmt.Errorf("bpf_prog iterator does not load: %w", perr)
	}
	sysK, err := loader.NewKernelWithOptions(loader.KernelOptions{NoIterators: true})
	if err != nil {
		return nil, nil, err
	}
	// The tracker reads the IDs of its inventory, kept by events: take
	// them once, as its start-up snapshot does.
	ids, err := sysK.ProgramIDs()
	if err != nil {
		return nil, nil, err
	}
	readAll := func(k *loader.Kernel) func() (int, error) {
		return func() (int, error) {
			n := 0
			err := k.ReadPrograms(ids, func(id uint32, info *loader.ProgramInfo, err error) {
				if err == nil {
					n++
				}
			})
			return n, err
		}
	}
	tr := state.New(iterK, state.Options{Node: "bench", Source: "bench"})
	if _, _, err := tr.Resync(); err != nil {
		return nil, nil, err
	}
	raw := newRawSweeper()
	floor, err := newEmptyIter()
	if err != nil {
		return nil, nil, fmt.Errorf("empty bpf_prog iterator: %w", err)
	}
	defer floor.Close()
	return timeMethods(reps, []method{
		{sweepTrackerIter, readAll(iterK)},
		{sweepIterFloor, func() (int, error) { return len(ids), floor.run() }},
		{sweepTrackerSyscall, readAll(sysK)},
		{sweepTrackerFull, func() (int, error) {
			snap, err := tr.Sweep()
			if err != nil {
				return 0, err
			}
			return len(snap.Programs), nil
		}},
		{sweepCiliumIG, sweepCilium},
		{sweepBpftool, raw.sweep},
	})
}

// Method names of the pid/comm resolution.
const (
	pidsTrackerIter = "tracker: Holders (iter/task_file) + ReadProcess per holder"
	pidsTrackerProc = "tracker fallback: Holders (/proc walk) + ReadProcess per holder"
	pidsProcWalk    = "/proc/*/fd walk + fdinfo + comm (os package)"
)

// measurePids times the pid/comm resolution of every program.
func measurePids(reps int, helperPID int) (map[string]float64, map[string]int, error) {
	iterK, err := loader.NewKernel("")
	if err != nil {
		return nil, nil, err
	}
	defer iterK.Close()
	if _, herr := iterK.Iterators(); herr != nil {
		return nil, nil, fmt.Errorf("task_file iterator does not load: %w", herr)
	}
	procK, err := loader.NewKernelWithOptions(loader.KernelOptions{NoIterators: true})
	if err != nil {
		return nil, nil, err
	}
	tracker := func(k *loader.Kernel) func() (int, error) {
		return func() (int, error) {
			holders, err := k.Holders()
			if err != nil {
				return 0, err
			}
			comms := make(map[uint32]string)
			for _, pids := range holders {
				for _, pid := range pids {
					if _, ok := comms[pid]; ok {
						continue
					}
					if p, err := k.ReadProcess(pid); err == nil {
						comms[pid] = p.Comm
					}
				}
			}
			if _, ok := comms[uint32(helperPID)]; !ok {
				return 0, fmt.Errorf("helper %d not found among holders", helperPID)
			}
			return len(holders), nil
		}
	}
	return timeMethods(reps, []method{
		{pidsTrackerIter, tracker(iterK)},
		{pidsTrackerProc, tracker(procK)},
		{pidsProcWalk, func() (int, error) {
			h, err := procHolders()
			return len(h), err
		}},
	})
}

// freshness is the latency of one event source, in milliseconds.
type freshness struct {
	source                 string
	loadP50, loadP99       float64
	releaseP50, releaseP99 float64
	loads, releases        int // events seen, of want each
	want                   int
	loadCall               float64 // median BPF_PROG_LOAD time, ms
	err                    error
}

// measureFreshness runs a tracker (state.Tracker.Run, 1 s sweeps) on the
// source in this process, loads count programs one every pace, then
// releases them, and times each from the start of its load (or close)
// call to the tracker's OnEvent for it.
func measureFreshness(source string, count int, pace time.Duration) freshness {
	f := freshness{source: source, want: count}
	k, err := loader.NewKernel("")
	if err != nil {
		f.err = err
		return f
	}
	defer k.Close()
	src, err := loader.OpenSource(source, loader.SourceOptions{PollInterval: time.Second})
	if err != nil {
		f.err = err
		return f
	}
	tr := state.New(k, state.Options{Node: "bench", Source: src.Name()})

	var mu sync.Mutex
	loadSeen := make(map[uint32]time.Time)
	releaseSeen := make(map[uint32]time.Time)
	closing := make(map[uint32]bool) // closed by the harness, under mu
	ready := make(chan struct{})
	var readyOnce sync.Once
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() {
		runErr <- tr.Run(ctx, state.RunConfig{
			Source:   src,
			Interval: time.Second,
			Log:      zerolog.Nop(),
			OnSnapshot: func(snap *state.Snapshot) {
				readyOnce.Do(func() { close(ready) })
				// A sweep also drops programs that are gone, before their
				// release event arrives (which then changes nothing).
				now := time.Now()
				present := make(map[uint32]bool, len(snap.Programs))
				for _, r := range snap.Programs {
					present[r.ProgID] = true
				}
				mu.Lock()
				defer mu.Unlock()
				for id := range closing {
					if _, ok := releaseSeen[id]; !ok && !present[id] {
						releaseSeen[id] = now
					}
				}
			},
			OnEvent: func(ev *state.Event) {
				now := time.Now()
				mu.Lock()
				defer mu.Unlock()
				switch ev.Kind {
				case "load":
					loadSeen[ev.ProgID] = now
				case "release":
					if _, ok := releaseSeen[ev.ProgID]; !ok {
						releaseSeen[ev.ProgID] = now
					}
				}
			},
		})
	}()
	defer func() {
		cancel()
		src.Close()
		<-runErr
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		f.err = errors.New("no first sweep within 30 s")
		return f
	}

	spec := &ebpf.ProgramSpec{
		Name: "bench_fresh", Type: ebpf.SocketFilter, License: "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	}
	type loaded struct {
		prog      *ebpf.Program
		id        uint32
		loadStart time.Time
		closed    time.Time
	}
	progs := make([]loaded, 0, count)
	defer func() {
		for _, p := range progs {
			p.prog.Close()
		}
	}()
	var calls []float64
	next := time.Now()
	for range count {
		time.Sleep(time.Until(next))
		next = next.Add(pace)
		start := time.Now()
		p, err := ebpf.NewProgram(spec)
		calls = append(calls, float64(time.Since(start).Microseconds())/1000)
		if err != nil {
			f.err = fmt.Errorf("loading: %w", err)
			return f
		}
		info, err := p.Info()
		if err != nil {
			p.Close()
			f.err = err
			return f
		}
		id, _ := info.ID()
		progs = append(progs, loaded{prog: p, id: uint32(id), loadStart: start})
	}
	f.loadCall = median(calls)
	waitAll := func(seen map[uint32]time.Time) {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			n := 0
			for _, p := range progs {
				if _, ok := seen[p.id]; ok {
					n++
				}
			}
			mu.Unlock()
			if n == len(progs) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitAll(loadSeen)
	next = time.Now()
	for i := range progs {
		time.Sleep(time.Until(next))
		next = next.Add(pace)
		mu.Lock()
		closing[progs[i].id] = true
		mu.Unlock()
		progs[i].closed = time.Now()
		progs[i].prog.Close()
	}
	waitAll(releaseSeen)

	mu.Lock()
	defer mu.Unlock()
	var loads, releases []float64
	for _, p := range progs {
		if t, ok := loadSeen[p.id]; ok {
			loads = append(loads, float64(t.Sub(p.loadStart).Microseconds())/1000)
		}
		if t, ok := releaseSeen[p.id]; ok {
			releases = append(releases, float64(t.Sub(p.closed).Microseconds())/1000)
		}
	}
	progs = nil // closed above
	f.loads, f.releases = len(loads), len(releases)
	f.loadP50, f.loadP99 = percentile(loads, 50), percentile(loads, 99)
	f.releaseP50, f.releaseP99 = percentile(releases, 50), percentile(releases, 99)
	return f
}

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

// cliRun is the cost of one command run.
type cliRun struct {
	wallMs, cpuMs float64
	rows          int
}

// commandTimes runs each command reps times, interleaved, and returns the
// median wall and CPU (user+sys) times in milliseconds and the number of
// JSON rows it printed.
func commandTimes(reps int, cmds map[string][]string) (map[string]cliRun, error) {
	walls := make(map[string][]float64)
	cpus := make(map[string][]float64)
	rows := make(map[string]int)
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range cmds {
			if !yield(n) {
				return
			}
		}
	})
	for rep := range reps + 1 {
		for _, name := range names {
			argv := cmds[name]
			cmd := exec.Command(argv[0], argv[1:]...)
			var stderr strings.Builder
			cmd.Stderr = &limitedWriter{w: &stderr, n: 16 << 10}
			start := time.Now()
			out, err := cmd.Output()
			wall := time.Since(start)
			if err != nil {
				return nil, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, stderr.String())
			}
			var parsed []json.RawMessage
			if err := json.Unmarshal(out, &parsed); err != nil {
				return nil, fmt.Errorf("%s: output is not a JSON array: %v", strings.Join(argv, " "), err)
			}
			if rep == 0 {
				rows[name] = len(parsed)
				continue // warm-up: page cache, binary
			}
			ps := cmd.ProcessState
			walls[name] = append(walls[name], float64(wall.Microseconds())/1000)
			cpus[name] = append(cpus[name], float64((ps.UserTime()+ps.SystemTime()).Microseconds())/1000)
		}
	}
	out := make(map[string]cliRun)
	for _, name := range names {
		out[name] = cliRun{wallMs: median(walls[name]), cpuMs: median(cpus[name]), rows: rows[name]}
	}
	return out, nil
}

// timedKernel times the kernel reads a state.Tracker makes.
type timedKernel struct {
	*loader.Kernel
	programs, maps, holders, procs time.Duration
	nMaps, nProcs                  int
}

func (t *timedKernel) ReadPrograms(ids []uint32, fn func(uint32, *loader.ProgramInfo, error)) error {
	start := time.Now()
	defer func() { t.programs += time.Since(start) }()
	return t.Kernel.ReadPrograms(ids, fn)
}

func (t *timedKernel) ReadMap(id uint32) (loader.MapInfo, error) {
	start := time.Now()
	defer func() { t.maps += time.Since(start); t.nMaps++ }()
	return t.Kernel.ReadMap(id)
}

func (t *timedKernel) Holders() (map[uint32][]uint32, error) {
	start := time.Now()
	defer func() { t.holders += time.Since(start) }()
	return t.Kernel.Holders()
}

func (t *timedKernel) ReadProcess(pid uint32) (loader.Process, error) {
	start := time.Now()
	defer func() { t.procs += time.Since(start); t.nProcs++ }()
	return t.Kernel.ReadProcess(pid)
}

// phase is one step of "tracker stats --count 1".
type phase struct {
	name string
	ms   float64
}

// measureStatsPhases replays what "tracker stats --all --count 1 -o json"
// does, in this process, timing each step.
func measureStatsPhases() ([]phase, error) {
	var phases []phase
	start := time.Now()
	lap := func(name string) {
		phases = append(phases, phase{name, float64(time.Since(start).Microseconds()) / 1000})
		start = time.Now()
	}
	k, err := loader.NewKernel("")
	if err != nil {
		return nil, err
	}
	defer k.Close()
	stats, err := loader.EnableStats()
	if err != nil {
		return nil, err
	}
	defer stats.Close()
	lap("BPF_ENABLE_STATS")
	src, err := loader.OpenSource(loader.SourceAuto, loader.SourceOptions{PollInterval: time.Second})
	if err != nil {
		return nil, err
	}
	defer src.Close()
	lap("open the event source (auto: fentry tried, then " + src.Name() + ")")
	k.Iterators()
	lap("load and check the iterators (kernel BTF decoded here)")
	tk := &timedKernel{Kernel: k}
	tr := state.New(tk, state.Options{Node: "bench", Source: src.Name()})
	if _, _, err := tr.Resync(); err != nil {
		return nil, err
	}
	lap("Resync: list program IDs")
	snap, err := tr.Sweep()
	if err != nil {
		return nil, err
	}
	sweep := float64(time.Since(start).Microseconds()) / 1000
	start = time.Now()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	phases = append(phases,
		phase{"first sweep: ReadPrograms (iterator with map IDs)", ms(tk.programs)},
		phase{fmt.Sprintf("first sweep: ReadMap × %d (bpf(2) + fdinfo)", tk.nMaps), ms(tk.maps)},
		phase{"first sweep: Holders (task_file iterator)", ms(tk.holders)},
		phase{fmt.Sprintf("first sweep: ReadProcess × %d", tk.nProcs), ms(tk.procs)},
		phase{"first sweep: the rest (internal/state)", sweep - ms(tk.programs+tk.maps+tk.holders+tk.procs)},
	)
	if _, err := json.Marshal(snap.Programs); err != nil {
		return nil, err
	}
	lap("encode the rows as JSON")
	return phases, nil
}

// emptyIter is an iter/bpf_prog whose program does nothing: the kernel's
// own cost of visiting every program, below which no iterator-based sweep
// can go.
type emptyIter struct {
	prog *ebpf.Program
	link *link.Iter
}

func newEmptyIter() (*emptyIter, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter, AttachTo: "bpf_prog", License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return nil, err
	}
	l, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		prog.Close()
		return nil, err
	}
	return &emptyIter{prog: prog, link: l}, nil
}

func (e *emptyIter) run() error {
	r, err := e.link.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(io.Discard, r)
	return err
}

func (e *emptyIter) Close() {
	e.link.Close()
	e.prog.Close()
}
