#!/bin/sh
# Benchmarks of the tracker against its peers' ways of reading the kernel;
# writes docs/benchmarks.md. Called by "make bench"; needs root. Bounded
# in time (about 15 minutes on 2 CPUs): the Go benchmarks take two or
# three minutes, the harness the rest. Arguments go to the harness, e.g.
#   ./test/bench/run.sh -n 1000,5000 -daemon-n 5000 -window 20s
# It refuses to write docs/benchmarks.md from a tree with uncommitted
# changes (the report goes to bin/benchmarks-dirty.md) unless given
# -allow-dirty, which marks it NOT FOR PUBLICATION.
set -eu
cd "$(dirname "$0")/../.."

GO=${GO:-go}
if [ "$(id -u)" -ne 0 ]; then
	echo "bench: needs root (loads BPF programs); run: sudo make bench" >&2
	exit 1
fi

$GO build -trimpath -o bin/tracker ./cmd/tracker
$GO build -trimpath -o bin/bench ./test/bench
# A standalone nats-server at the version go.mod pins, as users run it.
$GO build -trimpath -o bin/nats-server github.com/nats-io/nats-server/v2

gobench=$(mktemp)
trap 'rm -f "$gobench"' EXIT
echo "bench: Go benchmarks" >&2
# A failing benchmark does not stop the harness: its FAIL lines go into
# the report with the rest.
timeout 4m $GO test -run '^$' -bench . -benchtime 1s ./internal/state >"$gobench" 2>&1 ||
	echo "bench: a Go benchmark of internal/state failed (see the report)" >&2
BENCH_PROGRAMS=1000 timeout 2m $GO test -run '^$' -bench 'ReadPrograms|HoldersMany' -benchtime 1s ./internal/loader >>"$gobench" 2>&1 ||
	echo "bench: a Go benchmark of internal/loader failed (see the report)" >&2

# The harness stops itself after -time-limit; timeout is the backstop.
timeout 12m ./bin/bench -tracker bin/tracker -nats-server bin/nats-server -out docs/benchmarks.md -go-bench "$gobench" "$@"
