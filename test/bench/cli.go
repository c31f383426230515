package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

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

// startupTime runs argv reps times after one warm-up run and returns its
// median wall time in milliseconds.
func startupTime(reps int, argv ...string) (float64, error) {
	var walls []float64
	for rep := range reps + 1 {
		cmd := exec.Command(argv[0], argv[1:]...)
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
		if rep > 0 {
			walls = append(walls, float64(time.Since(start).Microseconds())/1000)
		}
	}
	return median(walls), nil
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

func (t *timedKernel) ReadAllPrograms(ids []uint32, fn func(uint32, *loader.ProgramInfo, error)) error {
	start := time.Now()
	defer func() { t.programs += time.Since(start) }()
	return t.Kernel.ReadAllPrograms(ids, fn)
}

func (t *timedKernel) ReadMap(id uint32) (loader.MapInfo, error) {
	start := time.Now()
	defer func() { t.maps += time.Since(start); t.nMaps++ }()
	return t.Kernel.ReadMap(id)
}

func (t *timedKernel) ReadMaps(ids []uint32, fn func(uint32, *loader.MapInfo, error)) {
	start := time.Now()
	defer func() { t.maps += time.Since(start); t.nMaps += len(ids) }()
	t.Kernel.ReadMaps(ids, fn)
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

// phase is one building block of a one-shot, timed.
type phase struct {
	name string
	ms   float64
}

// measureStatsPhases times, in this process, the building blocks a
// "tracker stats --all --count 1 -o json" may use: enabling stats, an
// event source, the iterators, the first sweep's kernel reads, encoding.
// Which of them the command really uses depends on its version.
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
	lap("load and check the iterators")
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
		phase{fmt.Sprintf("first sweep: %d maps read (ReadMaps: %s)", tk.nMaps, mapReadHow(k)), ms(tk.maps)},
		phase{"first sweep: Holders (task_file iterator)", ms(tk.holders)},
		phase{fmt.Sprintf("first sweep: ReadProcess × %d", tk.nProcs), ms(tk.procs)},
		phase{"first sweep: the rest (internal/state)", sweep - ms(tk.programs+tk.maps+tk.holders+tk.procs)},
	)
	if err := publish.WriteRowsJSON(io.Discard, snap.Programs, src.Name()); err != nil {
		return nil, err
	}
	lap("encode the rows as JSON (publish.WriteRowsJSON, as stats -o json)")
	return phases, nil
}

// mapReadHow says how ReadMaps reads many maps on k.
func mapReadHow(k *loader.Kernel) string {
	if k.MapIterator() != nil {
		return "bpf(2) + fdinfo once per shape, on 4 workers"
	}
	return "map iterator + fdinfo once per shape"
}
