package loader

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// raiseMemlock lifts RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF
// maps and programs to (later ones charge the memory cgroup, and the limit
// does not matter): to infinity with CAP_SYS_RESOURCE, else the soft limit
// to the hard one, which needs no privilege. cilium/ebpf's rlimit package
// does the former after a probe at init: a map created and freed at every
// start of every tracker command.
func raiseMemlock() error {
	var limit unix.Rlimit
	if err := unix.Prlimit(0, unix.RLIMIT_MEMLOCK, nil, &limit); err != nil {
		return fmt.Errorf("reading memlock rlimit: %w", err)
	}
	if limit.Cur == unix.RLIM_INFINITY {
		return nil
	}
	infinity := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	if unix.Prlimit(0, unix.RLIMIT_MEMLOCK, &infinity, nil) == nil || limit.Cur == limit.Max {
		return nil
	}
	hard := unix.Rlimit{Cur: limit.Max, Max: limit.Max}
	if err := unix.Prlimit(0, unix.RLIMIT_MEMLOCK, &hard, nil); err != nil {
		return fmt.Errorf("raising memlock rlimit to its hard limit %d: %w", limit.Max, err)
	}
	return nil
}
