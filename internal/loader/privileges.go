package loader

import (
	"bufio"
	"fmt"
	"golang.org/x/sys/unix"
	"os"
	"strconv"
	"strings"
)

// Capability numbers from linux/capability.h.
const (
	capDacReadSearch = 2
	capSysPtrace     = 19
	capSysAdmin      = 21
)

// CheckPrivileges returns an error naming what is missing when the process
// cannot run the tracker. CAP_SYS_ADMIN is needed: BPF_ENABLE_STATS and the
// program ID walk (BPF_PROG_GET_NEXT_ID, GET_FD_BY_ID) require it even where
// CAP_BPF exists; CAP_PERFMON (or CAP_SYS_ADMIN) opens perf events.
func CheckPrivileges() error {
	eff, err := effectiveCaps("/proc/self/status")
	if err != nil {
		return err
	}
	if eff&(1<<capSysAdmin) == 0 {
		return fmt.Errorf("missing privileges: need CAP_SYS_ADMIN (BPF stats and program IDs); run as root or grant it")
	}
	return nil
}

// AttributionWarning returns a non-empty text when the process cannot read
// other processes' fds and environment, so programs cannot be attributed
// to their owners: CAP_SYS_PTRACE for /proc/<pid>/fd and environ, and
// CAP_DAC_READ_SEARCH for processes of other users.
func AttributionWarning() string {
	eff, err := effectiveCaps("/proc/self/status")
	if err != nil {
		return err.Error()
	}
	var missing []string
	if eff&(1<<capSysPtrace) == 0 {
		missing = append(missing, "CAP_SYS_PTRACE")
	}
	if eff&(1<<capDacReadSearch) == 0 {
		missing = append(missing, "CAP_DAC_READ_SEARCH")
	}
	if len(missing) == 0 {
		return ""
	}
	return "without " + strings.Join(missing, " and ") + " programs of other processes cannot be attributed to gadgets"
}

func effectiveCaps(statusPath string) (uint64, error) {
	f, err := os.Open(statusPath)
	if err != nil {
		return 0, fmt.Errorf("reading capabilities: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing CapEff %q: %w", v, err)
			}
			return caps, nil
		}
	}
	return 0, fmt.Errorf("reading capabilities: no CapEff line in %s", statusPath)
}

// vmlinuxBTF is where the kernel exposes its own BTF (CONFIG_DEBUG_INFO_BTF).
const vmlinuxBTF = "/sys/kernel/btf/vmlinux"

// CheckBTF returns an error when the kernel exposes no BTF, which the
// fentry source needs (CO-RE). Requires Linux 5.4.
func CheckBTF() error {
	if _, err := os.Stat(vmlinuxBTF); err != nil {
		return fmt.Errorf("kernel BTF: %w", err)
	}
	return nil
}

// KernelRelease returns the running kernel's release (uname -r), or "" when
// uname fails.
func KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
