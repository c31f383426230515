// Package testutil holds what the real-kernel tests share.
package testutil

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// errENOTSUPP is the kernel's ENOTSUPP (524), which bpf(2) returns for a
// feature the kernel lacks; x/sys/unix has no name for it.
const errENOTSUPP = syscall.Errno(524)

// lockdownPath says which kernel lockdown mode is active ("none
// [integrity] confidentiality"), where securityfs is mounted.
const lockdownPath = "/sys/kernel/security/lockdown"

// Unsupported reports whether err says that the kernel does not support
// what was asked: ENOTSUPP, EOPNOTSUPP, or cilium/ebpf's ErrNotSupported
// (which its feature probes' errors wrap).
func Unsupported(err error) bool {
	return errors.Is(err, errENOTSUPP) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, ebpf.ErrNotSupported)
}

// SkipIfUnsupported does nothing when err is nil, skips tb with the reason
// when the kernel said it does not support what (see Unsupported), and
// fails tb on any other error: a test that needs a feature must not turn a
// regression into a skip.
func SkipIfUnsupported(tb testing.TB, err error, what string) {
	tb.Helper()
	switch {
	case err == nil:
	case Unsupported(err):
		tb.Skipf("%s: not supported by this kernel: %v", what, err)
	default:
		tb.Fatalf("%s: %v", what, err)
	}
}

// SkipIfUnknownAttachType is SkipIfUnsupported for a test about an attach
// type (or program type) the kernel may not know, which it refuses with
// EINVAL: there EINVAL skips too.
func SkipIfUnknownAttachType(tb testing.TB, err error, what string) {
	tb.Helper()
	if errors.Is(err, unix.EINVAL) {
		tb.Skipf("%s: attach type unknown to this kernel: %v", what, err)
		return
	}
	SkipIfUnsupported(tb, err, what)
}

// SkipIfLockdown is for tests about what kernel lockdown refuses (fentry
// and other trampoline programs, on a lockdown=integrity host). It does
// nothing when err is nil and skips tb when err is EPERM for a root
// process while lockdown is not known to be off, or when the kernel does
// not support the feature (see Unsupported); any other error fails tb.
// Call RequireRoot first: EPERM without root is a missing privilege.
func SkipIfLockdown(tb testing.TB, err error) {
	tb.Helper()
	skipIfLockdown(tb, err, os.Geteuid() == 0, readLockdown)
}

// readLockdown returns the contents of lockdownPath.
func readLockdown() (string, error) {
	b, err := os.ReadFile(lockdownPath)
	return string(b), err
}

func skipIfLockdown(tb testing.TB, err error, root bool, lockdown func() (string, error)) {
	tb.Helper()
	switch {
	case err == nil:
	case Unsupported(err):
		tb.Skipf("not supported by this kernel: %v", err)
	case !errors.Is(err, unix.EPERM):
		tb.Fatalf("not a lockdown refusal: %v", err)
	case !root:
		tb.Fatalf("EPERM without root is a missing privilege, not lockdown (call RequireRoot first): %v", err)
	default:
		mode, rerr := lockdown()
		if rerr == nil && strings.Contains(mode, "[none]") {
			tb.Fatalf("EPERM as root while %s says lockdown is off (%s): %v", lockdownPath, strings.TrimSpace(mode), err)
			return
		}
		tb.Skipf("refused by kernel lockdown: %v", err)
	}
}

// RequireRoot skips tb when the process is not root: tests that load BPF
// objects or read other processes need it, and run as root in CI.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skipf("needs root (euid %d)", os.Geteuid())
	}
}
