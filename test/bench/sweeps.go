package main

import (
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
)

// Method names of the stats sweep.
const (
	sweepTrackerIter    = "tracker: ReadAllPrograms (a sweep's read), iter/bpf_prog"
	sweepIterFloor      = "floor: iter/bpf_prog running an empty program, output read"
	sweepTrackerSyscall = "tracker fallback: ReadAllPrograms, GET_NEXT_ID + bpf(2)"
	sweepTrackerFull    = "tracker: whole state.Sweep (stats, maps, holders, rows)"
	sweepCiliumIG       = "Inspektor Gadget: cilium ID walk + NewProgramFromID + Info()"
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
			err := k.ReadAllPrograms(ids, func(id uint32, info *loader.ProgramInfo, err error) {
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
			// As tracker run does: the next sweep builds its rows in
			// this one's storage.
			defer tr.Recycle(snap)
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

// measurePids times the pid/comm resolution of every program; each of
// holderPIDs must be found holding some.
func measurePids(reps int, holderPIDs []int) (map[string]float64, map[string]int, error) {
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
			for _, pid := range holderPIDs {
				if _, ok := comms[uint32(pid)]; !ok {
					return 0, fmt.Errorf("holder %d not found among holders", pid)
				}
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
