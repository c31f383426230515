package state

// The holders scan (which processes hold an fd to which program: one
// task_file iterator run, or a /proc walk, about 1 µs per program) runs
// only when its answer may have changed, not on every sweep:
//
//   - the inventory changed since the last scan (a load, a release, an
//     audit repair, a resync): see inventoryChanged;
//   - a process the inventory knows (a gadget owner or a program holder)
//     exited, or its PID names another instance now: one start-time read
//     per such process, not per program;
//   - the last scan left a program to settle again (not read yet, or its
//     labels not final);
//   - otherwise every holdersRescanSweeps sweeps.
//
// What no cheap check sees (a process that takes an fd to a program
// already held, by fork, SCM_RIGHTS or BPF_PROG_GET_FD_BY_ID; a holder
// that closes its fd while another keeps the program) shows in the pids
// and comms columns, and in ownership, within holdersRescanSweeps sweeps.

// holdersRescanSweeps is the longest run of sweeps without a holders
// scan: 10 s at the default 1 s interval.
const holdersRescanSweeps = 10

// processStarter is an extension point of Kernel: loader.Kernel reads a
// process's start time alone (its stat file), the cheap way to tell that
// a process seen before still runs. Without it ReadProcess is used.
type processStarter interface {
	// ProcessStartTime returns the start time of process pid, as
	// loader.Process.StartTime; os.ErrNotExist when it has exited.
	ProcessStartTime(pid uint32) (uint64, error)
}

// holdersDue reports whether this sweep scans the holders (see above).
func (t *Tracker) holdersDue() bool {
	t.sweepsSinceScan++
	return t.holdersStale || t.sweepsSinceScan >= holdersRescanSweeps || t.processesChanged()
}

// processesChanged reports whether a gadget owner or a holder the last
// scan saw exited or was replaced by another instance at its PID.
func (t *Tracker) processesChanged() bool {
	for key := range t.gadgets {
		if _, ok := t.processes[key.owner.pid]; key.owner.pid != 0 && !ok {
			return true
		}
	}
	for pid, proc := range t.processes {
		if start, err := t.startTime(pid); err != nil || start != proc.StartTime {
			return true
		}
	}
	return false
}

// startTime is the start time of process pid.
func (t *Tracker) startTime(pid uint32) (uint64, error) {
	if ps, ok := t.kernel.(processStarter); ok {
		return ps.ProcessStartTime(pid)
	}
	proc, err := t.kernel.ReadProcess(pid)
	return proc.StartTime, err
}
