package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/bpfstats/tracker/internal/testutil"
)

// runCheckArgs runs "tracker run --check" in-process with the test's free
// ports and args, and returns the exit code and report.
func runCheckArgs(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"run", "--check"}, daemonTestArgs(t, args...)...), &out, io.Discard)
	return exitCode(err, io.Discard), out.String()
}

// validCreds writes a .creds file of a fresh user and returns its path.
func validCreds(t *testing.T) string {
	t.Helper()
	account, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := user.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	token, err := jwt.NewUserClaims(pub).Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := user.Seed()
	if err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(token, seed)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "user.creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// "run --check" fails exactly where "run" would: ports in use, files that
// do not parse, a NATS URL that does not answer or refuses the password.
func TestRunCheckFailsWhereRunWould(t *testing.T) {
	requireRoot(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	garbage := filepath.Join(t.TempDir(), "garbage")
	if err := os.WriteFile(garbage, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testutil.StartNATS(t, &server.Options{Username: "tracker", Password: "right"})
	url := srv.ClientURL()

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 0, "check passed"},
		{nil, 0, "timer slack    ok   1ms on every thread"},
		{[]string{"--timer-slack", "0"}, 0, "timer slack    ok   kept as inherited"},
		{[]string{"--metrics-addr", taken.Addr().String()}, 1, "metrics        FAIL"},
		// daemonTestArgs' own --nats-listen comes first: this one wins.
		{[]string{"--nats-listen", taken.Addr().String()}, 1, "nats           FAIL"},
		{[]string{"--nats-creds", garbage}, 1, "--nats-creds   FAIL"},
		{[]string{"--nats-creds", filepath.Join(t.TempDir(), "missing")}, 1, "--nats-creds   FAIL"},
		{[]string{"--nats-creds", validCreds(t)}, 0, "--nats-creds   ok"},
		{[]string{"--nats-nkey", garbage}, 1, "--nats-nkey    FAIL"},
		{[]string{"--nats-tls-ca", garbage}, 1, "--nats-tls-ca  FAIL"},
		{[]string{"--nats-tls-cert", garbage, "--nats-tls-key", garbage}, 1, "--nats-tls-cert FAIL"},
		{[]string{"--nats-url", "nats://" + testutil.FreeAddr(t)}, 1, "nats           FAIL"},
		{[]string{"--nats-url", url, "--nats-user", "tracker", "--nats-password", "wrong"}, 1, "credentials rejected"},
		{[]string{"--nats-url", url, "--nats-user", "tracker", "--nats-password", "right"}, 0, "nats           ok   connected to"},
	} {
		code, report := runCheckArgs(t, tc.args...)
		if code != tc.code || !strings.Contains(report, tc.want) {
			t.Errorf("run --check %v: exit %d, want %d and %q in:\n%s", tc.args, code, tc.code, tc.want, report)
		}
		if tc.code == 1 && strings.Contains(report, "check passed") {
			t.Errorf("run --check %v: failed but says passed:\n%s", tc.args, report)
		}
	}
}

// In a child PID namespace (a container without hostPID) the fentry
// source's PIDs are host PIDs: --check says they are not used.
func TestRunCheckInChildPIDNamespace(t *testing.T) {
	requireRoot(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare (util-linux) is needed: %v", err)
	}
	for _, tc := range []struct {
		wrapper []string
		want    string
	}{
		{nil, "pid namespace  ok   the host's"},
		// Without CAP_SYS_NICE the slack reaches only the tracker's own
		// thread: a warning, not a failure.
		{[]string{setpriv(t), "--bounding-set=-sys_nice", "--inh-caps=-sys_nice"}, "timer slack    warn timer slack 1ms: setting another thread's timer slack needs CAP_SYS_NICE"},
		{[]string{unshare, "--pid", "--fork", "--mount-proc"}, "pid namespace  warn running in a child PID namespace"},
	} {
		argv := append(append(tc.wrapper, os.Args[0]), "run", "--check", "--nats-listen", testutil.FreeAddr(t), "--metrics-addr", "")
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), childEnv+"=1")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: report lacks %q:\n%s", argv, tc.want, out)
		}
	}
}

// setpriv returns the path of setpriv (util-linux).
func setpriv(t *testing.T) string {
	path, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv (util-linux) is needed: %v", err)
	}
	return path
}
