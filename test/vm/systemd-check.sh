#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# systemd-check.sh: runs inside the VM that test/vm/systemd.sh boots, as a
# service of systemd (PID 1), outside the tracker's sandbox. Prints one
# "check: " line per assertion, then VMTEST-SYSTEMD rc=N, and powers off.

rc=0
ok() { echo "check: ok: $*"; }
bad() {
	echo "check: FAIL: $*"
	rc=1
}

# The control: the unit before the registry fix must start and create
# nothing, or this check could not tell.
if systemctl start bpfstats-tracker-control.service; then
	ok "control (DynamicUser=yes, no ReadWritePaths=, no ExecStartPre=) started"
	if [ -e /sys/fs/bpf/control ]; then
		bad "control created /sys/fs/bpf/control"
	else
		ok "control created no registry (/sys/fs/bpf/control absent), it logged: $(grep -a -m1 registry /run/bpfstats-tracker-control.log)"
	fi
	systemctl stop bpfstats-tracker-control.service
else
	bad "control unit did not start"
fi

# The unit as installed. Type=notify: start returns once READY=1 is sent.
if systemctl start bpfstats-tracker.service; then
	ok "bpfstats-tracker.service started: $(systemctl is-active bpfstats-tracker.service)"
else
	bad "bpfstats-tracker.service did not start"
fi
pid=$(systemctl show -p MainPID --value bpfstats-tracker.service)
if [ -n "$pid" ] && [ "$pid" != 0 ]; then
	uid=$(sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$pid/status")
	capeff=$(sed -n 's/^CapEff:[[:space:]]*//p' "/proc/$pid/status")
	nnp=$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' "/proc/$pid/status")
	# CAP_DAC_READ_SEARCH 2, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21,
	# CAP_PERFMON 38, CAP_BPF 39.
	if [ "$uid" = 0 ] && [ "$capeff" = 000000c000280004 ] && [ "$nnp" = 1 ]; then
		ok "tracker pid $pid: uid 0, CapEff $capeff (the five capabilities), NoNewPrivs 1"
	else
		bad "tracker pid $pid: uid $uid, CapEff $capeff, NoNewPrivs $nnp; want 0, 000000c000280004, 1"
	fi
	# TimerSlackNSec=1ms: every thread has it, the Go runtime's monitor
	# thread included, although the unit grants no CAP_SYS_NICE.
	slacks=$(for t in /proc/"$pid"/task/*; do cat "/proc/${t##*/}/timerslack_ns"; done | sort -u | tr '\n' ' ')
	if [ "$slacks" = "1000000 " ]; then
		ok "tracker pid $pid: every thread's timer slack is 1000000 ns"
	else
		bad "tracker pid $pid: thread timer slacks '$slacks'; want 1000000 only"
	fi
else
	bad "no main PID"
fi
dir=$(stat -c '%a %u' /sys/fs/bpf/bpfstats 2>&1)
reg=$(stat -c '%a %u' /sys/fs/bpf/bpfstats/registry 2>&1)
if [ "$dir" = "700 0" ] && [ "$reg" = "600 0" ]; then
	ok "registry created: /sys/fs/bpf/bpfstats mode 700 uid 0, registry mode 600 uid 0"
else
	bad "registry: directory '$dir', map '$reg'; want '700 0', '600 0'"
fi
systemctl stop bpfstats-tracker.service
result=$(systemctl show -p Result --value bpfstats-tracker.service)
if [ "$result" = success ]; then
	ok "stopped, result $result"
else
	bad "stopped with result $result"
fi

if [ "$rc" != 0 ]; then
	for log in /run/bpfstats-tracker-control.log /run/bpfstats-tracker.log; do
		echo "--- $log"
		cat "$log"
	done
fi
echo "VMTEST-SYSTEMD rc=$rc"
poweroff -f
