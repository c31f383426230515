#!/bin/sh
# Start the two example gadgets of the bpfstats guide in the background,
# labelled the way the tracker reads them:
#   mytraceopen  trace_open:latest
#   mytraceexec  trace_exec:latest
#
# Usage (as root):  examples/demo.sh [start|stop|status]
# Pids go to bin/demo.pids, logs to bin/<gadget>.log.
set -eu

cd "$(dirname "$0")/.."
GO=${GO:-go}
PIDS=bin/demo.pids

die() { echo "demo: $*" >&2; exit 1; }

# alive PID EXE: PID is running and is our binary (pids get reused).
alive() {
	[ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$2" ]
}

status() {
	[ -f "$PIDS" ] || { echo "demo: not running"; return 1; }
	running=0
	while read -r pid name exe; do
		if alive "$pid" "$exe"; then
			echo "demo: $name running, pid $pid"
			running=1
		else
			echo "demo: $name (pid $pid) is gone; see bin/$(basename "$exe").log"
		fi
	done <"$PIDS"
	[ "$running" = 1 ]
}

stop() {
	[ -f "$PIDS" ] || { echo "demo: not running"; return 0; }
	while read -r pid name exe; do
		alive "$pid" "$exe" && kill -TERM "$pid"
	done <"$PIDS"
	# Wait for them to exit (they detach and close their BPF objects on SIGTERM).
	while read -r pid name exe; do
		i=0
		while alive "$pid" "$exe"; do
			i=$((i + 1))
			[ "$i" -le 100 ] || die "$name (pid $pid) did not exit after SIGTERM"
			sleep 0.1
		done
		echo "demo: stopped $name (pid $pid)"
	done <"$PIDS"
	rm -f "$PIDS"
}

# launch NAME IMAGE BINARY: start one gadget and wait until it has attached.
launch() {
	name=$1 image=$2 bin=$3
	log=bin/$(basename "$bin").log
	# The gadget copies name and image into its programs' labels. No
	# BPFSTATS_GADGET_ID: the tracker derives a stable 11-digit one.
	BPFSTATS_GADGET_NAME=$name BPFSTATS_GADGET_IMAGE=$image \
		nohup "$bin" -interval 10s >"$log" 2>&1 </dev/null &
	pid=$!
	echo "$pid $name $(pwd)/$bin" >>"$PIDS"
	i=0
	until grep -q "programs attached" "$log" 2>/dev/null; do
		kill -0 "$pid" 2>/dev/null || die "$name failed to start: $(cat "$log")"
		i=$((i + 1))
		[ "$i" -le 100 ] || die "$name did not attach within 10s; see $log"
		sleep 0.1
	done
	echo "demo: started $name ($image), pid $pid, log $log"
}

start() {
	[ "$(id -u)" = 0 ] || die "run as root: sudo make demo"
	if [ -f "$PIDS" ]; then
		status >/dev/null && die "already running; stop with: examples/demo.sh stop"
		rm -f "$PIDS"
	fi
	mkdir -p bin
	"$GO" build -o bin/trace_open ./examples/trace_open
	"$GO" build -o bin/trace_exec ./examples/trace_exec
	launch mytraceopen trace_open:latest bin/trace_open
	launch mytraceexec trace_exec:latest bin/trace_exec
	cat <<EOF

See them with:   sudo bin/tracker stats     (build it with: make build)
                 sudo bpftool prog show     (the kernel's view)
Stop them with:  examples/demo.sh stop
EOF
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 [start|stop|status]" ;;
esac
