package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/bpfstats/tracker/internal/loader"
)

// runCheck validates what "tracker run" would need and prints one line per
// check. It fails when the tracker could not run.
func runCheck(out io.Writer, d *daemonFlags) error {
	failed := false
	line := func(what string, err error, okText string) {
		switch {
		case err == nil:
			fmt.Fprintf(out, "%-14s ok   %s\n", what, okText)
		default:
			fmt.Fprintf(out, "%-14s FAIL %v\n", what, err)
		}
	}
	privErr := loader.CheckPrivileges()
	line("privileges", privErr, "CAP_SYS_ADMIN")
	failed = failed || privErr != nil
	if w := loader.AttributionWarning(); w != "" {
		fmt.Fprintf(out, "%-14s warn %s\n", "attribution", w)
	} else {
		line("attribution", nil, "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH")
	}

	if err := loader.CheckBTF(); err != nil {
		fmt.Fprintf(out, "%-14s warn %v (the fentry source needs it)\n", "btf", err)
	} else {
		line("btf", nil, "/sys/kernel/btf/vmlinux")
	}

	if privErr == nil {
		stats, err := loader.EnableStats()
		line("bpf stats", err, "BPF_ENABLE_STATS")
		if err == nil {
			stats.Close()
		}
		failed = failed || err != nil

		chosen := checkSources(out, d)
		switch want := d.common.source; {
		case want == loader.SourceAuto && chosen != "":
			fmt.Fprintf(out, "%-14s ok   auto would use %s\n", "--source", chosen)
		case want == loader.SourceAuto:
			line("--source", errors.New("no event source works"), "")
			failed = true
		default:
			src, err := loader.OpenSource(want, loader.SourceOptions{PollInterval: d.common.interval})
			if err == nil {
				src.Close()
			}
			line("--source", err, want)
			failed = failed || err != nil
		}
	}

	if d.nats.url == "" {
		line("nats", nil, "embedded server on "+d.natsListen)
	} else {
		line("nats", nil, d.nats.url)
	}
	if d.metricsAddr == "" {
		line("metrics", nil, "disabled")
	} else {
		line("metrics", nil, "http://"+d.metricsAddr+"/metrics")
	}
	if failed {
		return errors.New("check failed")
	}
	fmt.Fprintln(out, "check passed")
	return nil
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
