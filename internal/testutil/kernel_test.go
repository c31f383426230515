package testutil

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// fakeTB records what a helper did instead of ending the test.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
}

// outcome is what a helper did with one error.
type outcome string

const (
	pass outcome = "pass"
	skip outcome = "skip"
	fail outcome = "fail"
)

func (f *fakeTB) outcome() outcome {
	switch {
	case f.skipped && f.failed:
		return "skip and fail"
	case f.skipped:
		return skip
	case f.failed:
		return fail
	}
	return pass
}

// featureProbeError stands for cilium/ebpf's internal feature-probe error,
// which is ebpf.ErrNotSupported by its Is method.
type featureProbeError struct{}

func (featureProbeError) Error() string        { return "BPF_PROG_BIND_MAP not supported (requires >= v5.10)" }
func (featureProbeError) Is(target error) bool { return target == ebpf.ErrNotSupported }

func TestSkipHelpers(t *testing.T) {
	errs := []struct {
		name string
		err  error
		// want is the outcome of SkipIfUnsupported, SkipIfUnknownAttachType
		// and SkipIfLockdown (as root, lockdown state unknown).
		want [3]outcome
	}{
		{"nil", nil, [3]outcome{pass, pass, pass}},
		{"ENOTSUPP", fmt.Errorf("loading program: %w", errENOTSUPP), [3]outcome{skip, skip, skip}},
		{"EOPNOTSUPP", fmt.Errorf("creating map: %w", unix.EOPNOTSUPP), [3]outcome{skip, skip, skip}},
		{"ErrNotSupported", fmt.Errorf("kfunc %q: %w", "bpf_rdonly_cast", ebpf.ErrNotSupported), [3]outcome{skip, skip, skip}},
		{"feature probe", fmt.Errorf("binding map: %w", featureProbeError{}), [3]outcome{skip, skip, skip}},
		{"EINVAL", fmt.Errorf("attaching: %w", unix.EINVAL), [3]outcome{fail, skip, fail}},
		{"EPERM", fmt.Errorf("loading fentry program: %w", unix.EPERM), [3]outcome{fail, fail, skip}},
		{"ENOENT", fmt.Errorf("opening: %w", unix.ENOENT), [3]outcome{fail, fail, fail}},
		{"other", errors.New("verifier: invalid mem access"), [3]outcome{fail, fail, fail}},
	}
	unknown := func() (string, error) { return "", os.ErrNotExist }
	for _, c := range errs {
		t.Run(c.name, func(t *testing.T) {
			helpers := [3]func(*fakeTB){
				func(tb *fakeTB) { SkipIfUnsupported(tb, c.err, "feature") },
				func(tb *fakeTB) { SkipIfUnknownAttachType(tb, c.err, "attach type") },
				func(tb *fakeTB) { skipIfLockdown(tb, c.err, true, unknown) },
			}
			for i, helper := range helpers {
				tb := &fakeTB{}
				helper(tb)
				if got := tb.outcome(); got != c.want[i] {
					t.Errorf("helper %d with %v: %s (%q), want %s", i, c.err, got, tb.msg, c.want[i])
				}
				if tb.outcome() != pass && c.err != nil && tb.msg == "" {
					t.Errorf("helper %d with %v: no reason given", i, c.err)
				}
			}
		})
	}
}

func TestSkipIfLockdownChecksMode(t *testing.T) {
	eperm := fmt.Errorf("loading fentry program: %w", unix.EPERM)
	for _, c := range []struct {
		name string
		root bool
		mode string
		want outcome
	}{
		{"integrity", true, "none [integrity] confidentiality\n", skip},
		{"confidentiality", true, "none integrity [confidentiality]\n", skip},
		{"off", true, "[none] integrity confidentiality\n", fail},
		{"not root", false, "none [integrity] confidentiality\n", fail},
	} {
		t.Run(c.name, func(t *testing.T) {
			tb := &fakeTB{}
			skipIfLockdown(tb, eperm, c.root, func() (string, error) { return c.mode, nil })
			if got := tb.outcome(); got != c.want {
				t.Errorf("%s: %s (%q), want %s", c.name, got, tb.msg, c.want)
			}
		})
	}
}

func TestRequireRoot(t *testing.T) {
	tb := &fakeTB{}
	RequireRoot(tb)
	if want := os.Geteuid() != 0; tb.skipped != want || tb.failed {
		t.Errorf("euid %d: skipped %v failed %v", os.Geteuid(), tb.skipped, tb.failed)
	}
}
