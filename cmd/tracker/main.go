// Command tracker reports what every eBPF program on a node costs: CPU time,
// run count and map memory, grouped by the gadget that loaded it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// version is set by the Makefile with -ldflags "-X main.version=...".
var version = "dev"

// usageError marks bad input: it exits with code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

const mainUsage = `Usage: tracker <command> [flags]

Commands:
  stats     print the bpfstats table every interval (in-process pipeline)
  run       the node daemon: track, publish to NATS, serve metrics
  top       the fleet view: read every tracker's NATS messages
  simulate  publish what K synthetic nodes' trackers would, for fleet tests
  aggregate roll up one partition of a partitioned fleet (docs/fleet.md)
  version   print the version

Run "tracker <command> --help" for a command's flags.
`

func main() {
	os.Exit(runMain())
}

// runMain runs the command line until it is done or SIGINT, SIGTERM or
// SIGHUP (a closed terminal or a service manager's stop: the same clean
// shutdown; there is no reload), and returns the exit code.
func runMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	return exitCode(run(ctx, os.Args[1:], os.Stdout, os.Stderr), os.Stderr)
}

func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		// Bad input is one line, whatever a value held.
		fmt.Fprintln(stderr, "tracker:", strings.ReplaceAll(err.Error(), "\n", `\n`))
		return 2
	}
	fmt.Fprintln(stderr, "tracker:", err)
	return 1
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef(`no command given (run "tracker --help" for the commands)`)
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "stats":
		return runStats(ctx, rest, stdout, stderr)
	case "run":
		return runDaemon(ctx, rest, stdout, stderr)
	case "top":
		return runTop(ctx, rest, stdout, stderr)
	case "simulate":
		return runSimulate(ctx, rest, stdout, stderr)
	case "aggregate":
		return runAggregate(ctx, rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "tracker %s\n", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, mainUsage)
		return nil
	}
	return usagef(`unknown command %.100q (run "tracker --help" for the commands)`, cmd)
}
