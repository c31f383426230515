package loader

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Capability numbers from linux/capability.h.
const (
	capSysAdmin = 21
	capPerfmon  = 38 // Linux 5.8
	capBPF      = 39 // Linux 5.8
)

// CheckPrivileges returns an error naming what is missing when the process
// cannot read BPF programs and open perf events: CAP_BPF and CAP_PERFMON, or
// CAP_SYS_ADMIN on kernels before 5.8.
func CheckPrivileges() error {
	eff, err := effectiveCaps("/proc/self/status")
	if err != nil {
		return err
	}
	has := func(c uint) bool { return eff&(1<<c) != 0 }
	if has(capSysAdmin) || (has(capBPF) && has(capPerfmon)) {
		return nil
	}
	var missing []string
	if !has(capBPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(capPerfmon) {
		missing = append(missing, "CAP_PERFMON")
	}
	return fmt.Errorf("missing privileges: need %s (or CAP_SYS_ADMIN); run as root or grant the capabilities", strings.Join(missing, " and "))
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
