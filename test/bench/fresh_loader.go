package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// freshLoaderArg turns the harness binary into the process that loads and
// releases the programs of a freshness run. A tracker never shares its
// process with the loads it watches: in the harness's own process the
// loading goroutine would compete with the tracker's for the same Ps.
const freshLoaderArg = "__fresh-loader"

// runFreshLoader loads COUNT tiny socket filters, one every PACE, writing
// "load ID START CALL" for each (START: CLOCK_MONOTONIC ns at the start of
// BPF_PROG_LOAD; CALL: its duration in ns), then "loaded". On the line
// "release" from stdin it closes them the same way, writing "release ID
// START" (the start of close), then "released", and exits when stdin
// closes.
func runFreshLoader(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: " + freshLoaderArg + " COUNT PACE")
	}
	count, err := strconv.Atoi(args[0])
	if err != nil || count <= 0 {
		return fmt.Errorf("bad program count %q", args[0])
	}
	pace, err := time.ParseDuration(args[1])
	if err != nil || pace <= 0 {
		return fmt.Errorf("bad pace %q", args[1])
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raising RLIMIT_MEMLOCK: %w", err)
	}
	spec := &ebpf.ProgramSpec{
		Name: "bench_fresh", Type: ebpf.SocketFilter, License: "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	}
	out := bufio.NewWriter(os.Stdout)
	progs := make([]*ebpf.Program, 0, count)
	ids := make([]uint32, 0, count)
	next := time.Now()
	for range count {
		time.Sleep(time.Until(next))
		next = next.Add(pace)
		start := monotonicNs()
		p, err := ebpf.NewProgram(spec)
		call := monotonicNs() - start
		if err != nil {
			return fmt.Errorf("loading: %w", err)
		}
		info, err := p.Info()
		if err != nil {
			return err
		}
		id, _ := info.ID()
		progs, ids = append(progs, p), append(ids, uint32(id))
		fmt.Fprintf(out, "load %d %d %d\n", id, start, call)
		if err := out.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "loaded")
	if err := out.Flush(); err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return in.Err() // the harness gave up
	}
	if in.Text() != "release" {
		return fmt.Errorf("want \"release\" on stdin, got %q", in.Text())
	}
	next = time.Now()
	for i, p := range progs {
		time.Sleep(time.Until(next))
		next = next.Add(pace)
		start := monotonicNs()
		if err := p.Close(); err != nil {
			return err
		}
		fmt.Fprintf(out, "release %d %d\n", ids[i], start)
		if err := out.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "released")
	if err := out.Flush(); err != nil {
		return err
	}
	for in.Scan() {
	}
	return nil
}

// monotonicNs is CLOCK_MONOTONIC in ns, the clock of Go's monotonic
// readings on Linux, comparable across processes.
func monotonicNs() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // CLOCK_MONOTONIC always exists on Linux
	}
	return ts.Nano()
}

// monoClock turns CLOCK_MONOTONIC readings of other processes into
// time.Time values of this one, which compare by their monotonic reading.
type monoClock struct {
	at   time.Time
	mono int64
}

func newMonoClock() monoClock {
	at := time.Now()
	return monoClock{at: at, mono: monotonicNs()}
}

func (c monoClock) time(ns int64) time.Time { return c.at.Add(time.Duration(ns - c.mono)) }

// freshLoader is a running freshness loader.
type freshLoader struct{ *helper }

func startFreshLoader(count int, pace time.Duration) (freshLoader, error) {
	h, err := startSelf(freshLoaderArg, strconv.Itoa(count), pace.String())
	return freshLoader{h}, err
}

// each reads the loader's lines of kind until the line end, calling fn
// with the words after kind.
func (l freshLoader) each(kind, end string, fn func(words []string) error) error {
	for {
		line, err := l.stdout.ReadString('\n')
		if err != nil {
			return fmt.Errorf("freshness loader stopped before %q: %w", end, err)
		}
		words := strings.Fields(line)
		switch {
		case len(words) == 1 && words[0] == end:
			return nil
		case len(words) > 1 && words[0] == kind:
			if err := fn(words[1:]); err != nil {
				return err
			}
		default:
			return fmt.Errorf("freshness loader said %q", line)
		}
	}
}

// loads reads the loads of the loader, telling w of each, and returns the
// programs and the duration of each BPF_PROG_LOAD call in ms.
func (l freshLoader) loads(w *watch, clock monoClock) ([]freshProgram, []float64, error) {
	var progs []freshProgram
	var calls []float64
	err := l.each("load", "loaded", func(words []string) error {
		var id uint32
		var start, call int64
		if _, err := fmt.Sscan(strings.Join(words, " "), &id, &start, &call); err != nil {
			return fmt.Errorf("freshness loader: %w", err)
		}
		w.loading(id)
		progs = append(progs, freshProgram{id: id, loadStart: clock.time(start)})
		calls = append(calls, float64(call)/1e6)
		return nil
	})
	return progs, calls, err
}

// releases has the loader release progs and notes when each close began.
func (l freshLoader) releases(progs []freshProgram, clock monoClock) error {
	index := make(map[uint32]int, len(progs))
	for i, p := range progs {
		index[p.id] = i
	}
	if _, err := fmt.Fprintln(l.stdin, "release"); err != nil {
		return fmt.Errorf("freshness loader: %w", err)
	}
	return l.each("release", "released", func(words []string) error {
		var id uint32
		var start int64
		if _, err := fmt.Sscan(strings.Join(words, " "), &id, &start); err != nil {
			return fmt.Errorf("freshness loader: %w", err)
		}
		i, ok := index[id]
		if !ok {
			return fmt.Errorf("freshness loader released unknown program %d", id)
		}
		progs[i].closed = clock.time(start)
		return nil
	})
}
