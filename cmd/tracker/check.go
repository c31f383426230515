package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/timerslack"
)

// checkReport prints the lines of "run --check" and remembers a failure.
type checkReport struct {
	out    io.Writer
	failed bool
}

// line prints what passed (err nil) or failed.
func (r *checkReport) line(what string, err error, okText string) {
	if err != nil {
		fmt.Fprintf(r.out, "%-14s FAIL %v\n", what, err)
		r.failed = true
		return
	}
	fmt.Fprintf(r.out, "%-14s ok   %s\n", what, okText)
}

// warn prints a problem that does not stop the tracker.
func (r *checkReport) warn(what string, err error) {
	fmt.Fprintf(r.out, "%-14s warn %v\n", what, err)
}

// runCheck validates what "tracker run" would need and prints one line per
// check. It fails when the tracker could not run: without privileges or
// an event source, with a port in use, with unreadable credential or TLS
// files, or with a NATS URL that does not answer or refuses the
// credentials.
func runCheck(out io.Writer, d *daemonFlags) error {
	r := &checkReport{out: out}
	checkKernel(r, d)
	checkTimerSlack(r, d.timerSlack)
	r.line("subject", publish.ValidateSubjectPrefix(d.nats.prefix), d.nats.prefix+".<node>.<gadget>")
	checkNATS(r, d)
	if d.metricsAddr == "" {
		r.line("metrics", nil, "disabled")
	} else {
		r.line("metrics", checkListen(d.metricsAddr), "http://"+d.metricsAddr+"/metrics")
	}
	if r.failed {
		return errors.New("check failed")
	}
	fmt.Fprintln(out, "check passed")
	return nil
}

// checkKernel checks the privileges, BPF stats and event sources.
func checkKernel(r *checkReport, d *daemonFlags) {
	privErr := loader.CheckPrivileges()
	r.line("privileges", privErr, "CAP_SYS_ADMIN")
	if w := loader.AttributionWarning(); w != "" {
		fmt.Fprintf(r.out, "%-14s warn %s\n", "attribution", w)
	} else {
		r.line("attribution", nil, "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH")
	}
	if w := pidNamespaceWarning(); w != "" {
		fmt.Fprintf(r.out, "%-14s warn %s\n", "pid namespace", w)
	} else {
		r.line("pid namespace", nil, "the host's: event PIDs name the loaders")
	}
	if err := loader.CheckBTF(); err != nil {
		r.warn("btf", fmt.Errorf("%w (the fentry source needs it)", err))
	} else {
		r.line("btf", nil, "/sys/kernel/btf/vmlinux")
	}
	if privErr != nil {
		return
	}
	stats, err := loader.EnableStats()
	r.line("bpf stats", err, "BPF_ENABLE_STATS")
	if err == nil {
		stats.Close()
		if cost, err := loader.MeasureStatsCost(); err != nil {
			r.warn("stats cost", err)
		} else {
			r.line("stats cost", nil, fmt.Sprintf("%v per program run (BPF_PROG_TEST_RUN, stats on minus off)", cost))
		}
	}
	chosen := checkSources(r.out, d)
	switch want := d.common.source; {
	case want == loader.SourceAuto && chosen != "":
		r.line("--source", nil, "auto would use "+chosen)
	case want == loader.SourceAuto:
		r.line("--source", errors.New("no event source works"), "")
	default:
		src, err := loader.OpenSource(want, loader.SourceOptions{PollInterval: d.common.interval})
		if err == nil {
			src.Close()
		}
		r.line("--source", err, want)
	}
}

// checkTimerSlack says whether "run" can give every thread its timer
// slack. Without, it runs on, with more wakes of the Go runtime: a warning.
func checkTimerSlack(r *checkReport, slack time.Duration) {
	if slack == 0 {
		r.line("timer slack", nil, "kept as inherited (--timer-slack 0)")
		return
	}
	if err := timerslack.Settable(slack); err != nil {
		r.warn("timer slack", fmt.Errorf("%w: only the tracker's first thread gets it, the Go runtime wakes more often (systemd: TimerSlackNSec=)", err))
		return
	}
	r.line("timer slack", nil, slack.String()+" on every thread")
}

// checkNATS checks the credential and TLS files, then the embedded
// server's port or the configured servers: reachable, and accepting the
// credentials.
func checkNATS(r *checkReport, d *daemonFlags) {
	filesOK := true
	for _, c := range natsFileChecks(&d.nats) {
		err := c.check()
		r.line(c.what, err, c.path)
		filesOK = filesOK && err == nil
	}
	if d.nats.url == "" {
		r.line("nats", checkListen(d.natsListen), "embedded server on "+d.natsListen)
		return
	}
	if !filesOK {
		r.line("nats", errors.New("not tried: fix the files above"), "")
		return
	}
	opts := d.nats.conn(d.nats.url, "bpfstats-tracker-check", zerolog.Nop())
	opts.FailFast = true
	nc, err := publish.ConnectNATS(opts)
	if err != nil {
		r.line("nats", err, "")
		return
	}
	url := nc.ConnectedUrlRedacted()
	nc.Close()
	r.line("nats", nil, "connected to "+url)
}

// natsFileCheck reads and parses one file a NATS flag names.
type natsFileCheck struct {
	what, path string
	check      func() error
}

// natsFileChecks are the checks of the files n names.
func natsFileChecks(n *natsFlags) []natsFileCheck {
	var checks []natsFileCheck
	add := func(what, path string, check func() error) {
		if path != "" {
			checks = append(checks, natsFileCheck{what, path, check})
		}
	}
	add("--nats-creds", n.creds, func() error { return checkCreds(n.creds) })
	add("--nats-nkey", n.nkey, func() error {
		_, err := nats.NkeyOptionFromSeed(n.nkey)
		return err
	})
	add("--nats-tls-ca", n.tlsCA, func() error { return checkCA(n.tlsCA) })
	if n.tlsCert != "" || n.tlsKey != "" {
		add("--nats-tls-cert", n.tlsCert+" "+n.tlsKey, func() error {
			if n.tlsCert == "" || n.tlsKey == "" {
				return errors.New("--nats-tls-cert and --nats-tls-key go together")
			}
			_, err := tls.LoadX509KeyPair(n.tlsCert, n.tlsKey)
			return err
		})
	}
	return checks
}

// checkCreds parses a .creds file: a user JWT and a user nkey seed.
func checkCreds(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	token, err := nkeys.ParseDecoratedJWT(data)
	if err != nil {
		return err
	}
	if _, err := jwt.DecodeUserClaims(token); err != nil {
		return fmt.Errorf("no user JWT in %s: %w", path, err)
	}
	if _, err := nkeys.ParseDecoratedUserNKey(data); err != nil {
		return fmt.Errorf("no user nkey seed in %s: %w", path, err)
	}
	return nil
}

// checkCA reads a PEM file of at least one CA certificate.
func checkCA(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		return fmt.Errorf("no PEM certificate in %s", path)
	}
	return nil
}

// checkListen tells whether addr can be listened on now.
func checkListen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}

// checkSources opens and closes every registered event source, prints one
// line for each, and returns the first that works: what auto would use.
func checkSources(out io.Writer, d *daemonFlags) (chosen string) {
	for _, spec := range loader.Sources() {
		src, err := loader.OpenSource(spec.Name, loader.SourceOptions{PollInterval: d.common.interval})
		if err != nil {
			fmt.Fprintf(out, "%-14s no   %v\n", "source "+spec.Name, errors.Unwrap(err))
			continue
		}
		src.Close()
		fmt.Fprintf(out, "%-14s ok\n", "source "+spec.Name)
		if chosen == "" {
			chosen = spec.Name
		}
	}
	return chosen
}
