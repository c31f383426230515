#!/bin/sh
# Benchmarks of the tracker against its peers' ways of reading the kernel;
# writes docs/benchmarks.md. Called by "make bench"; needs root. Bounded
# in time: the Go benchmarks take about a minute, the harness a few.
set -eu
cd "$(dirname "$0")/../.."

GO=${GO:-go}
if [ "$(id -u)" -ne 0 ]; then
	echo "bench: needs root (loads BPF programs); run: sudo make bench" >&2
	exit 1
fi

$GO build -trimpath -o bin/tracker ./cmd/tracker
$GO build -trimpath -o bin/bench ./test/bench

gobench=$(mktemp)
trap 'rm -f "$gobench"' EXIT
echo "bench: Go benchmarks" >&2
timeout 5m $GO test -run '^$' -bench . -benchtime 1s ./internal/state >"$gobench"
BENCH_PROGRAMS=1000 timeout 5m $GO test -run '^$' -bench 'ReadPrograms|HoldersMany' -benchtime 1s ./internal/loader >>"$gobench"

# The harness stops itself after -time-limit; timeout is the backstop.
timeout 14m ./bin/bench -tracker bin/tracker -out docs/benchmarks.md -go-bench "$gobench" "$@"
