#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# run.sh KERNEL... : run the VM tests of internal/loader (TestVM*: the fentry
# source) in Debian cloud kernels booted with qemu (TCG), one boot per kernel.
#
#   ./test/vm/run.sh 5.10 6.1 6.12
#
# KERNEL is 5.10 (bullseye), 6.1 (bookworm) or 6.12 (bookworm-backports).
# Kernels are downloaded once with apt-get through a private sources list and
# lists directory (the system's apt configuration is not touched) into
# .cache/vm/, which also keeps one console log per kernel in .cache/vm/logs/.
#
# With 6.1 among the kernels, test/vm/systemd.sh then checks the systemd
# unit under systemd as PID 1 in that kernel (one more boot).
#
# Prints two lines per kernel:
#   vmtest kernel=6.1 source=fentry hooks=load:X,release:Y passed=N failed=M seconds=S uname=...
#   vmtest-fresh kernel=6.1 fentry load=P50/P99 release=P50/P99 ms; perf load=... (TCG-emulated)
# the second from internal/state's TestVMFreshness (load and release ->
# the tracker's OnEvent, on the fentry and the perf source in the same
# boot), and, for a kernel that fails, its console log. At the end it
# prints the freshness figures as a Markdown table (also kept in
# .cache/vm/vmtest.md). Exits non-zero if any kernel fails or prints no
# result marker. The figures are reported, never judged: the guest is
# emulated (TCG), so they are far slower than on hardware.
#
# Needs (Debian packages): qemu-system-x86, busybox-static, cpio, apt,
# dpkg, debian-archive-keyring; and go.
#
# Environment:
#   VMTEST_RUN      -test.run pattern inside the VM (default ^TestVM and
#                   the iterators' own load, ^TestIterRawLoad)
#   VMTEST_TIMEOUT  seconds per boot before qemu is killed (default 180)
#   VMTEST_SMP      guest CPUs (default 2: cross-CPU load and release)
#   VMTEST_REPORT   also write the Markdown report there (make vmtest-docs:
#                   docs/vmtest.md)
#   DEBIAN_MIRROR   default http://deb.debian.org/debian
#   GO              go command (default go)

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=$ROOT/.cache/vm
LOGS=$CACHE/logs
BUILD=$CACHE/build
RUN_PATTERN=${VMTEST_RUN:-^TestVM|^TestIterRawLoad}
# The inventory's integration tests, run on the forced fentry source.
STATE_PATTERN=${VMTEST_STATE_RUN:-^TestInventoryMatchesKernelAfterBurst\$|^TestSweepsSeeRisingStats\$|^TestAuditRepairsLostEvents\$|^TestLoadsAndReleasesPairAcrossCPUs\$}
# The freshness measurement (TestVMFreshness), on fentry and perf.
FRESH_PATTERN=${VMTEST_FRESH_RUN:-^TestVMFreshness\$}
BOOT_TIMEOUT=${VMTEST_TIMEOUT:-240}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
GO=${GO:-go}

die() {
	echo "vmtest: $*" >&2
	exit 2
}

[ $# -gt 0 ] || die "usage: $0 KERNEL... (5.10 6.1 6.12)"

suite_for() {
	case $1 in
	5.10) echo bullseye ;;
	6.1) echo bookworm ;;
	6.12) echo bookworm-backports ;;
	*) return 1 ;;
	esac
}

for k in "$@"; do
	suite_for "$k" >/dev/null || die "unknown kernel $k (known: 5.10 6.1 6.12)"
done
for cmd in qemu-system-x86_64 cpio apt-get apt-cache dpkg-deb timeout "$GO"; do
	command -v "$cmd" >/dev/null || die "$cmd not found (apt-get install qemu-system-x86 cpio)"
done
BUSYBOX=/bin/busybox
[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] ||
	die "busybox-static is not installed (apt-get install busybox-static)"
[ -r "$KEYRING" ] || die "$KEYRING missing (apt-get install debian-archive-keyring)"

mkdir -p "$LOGS" "$BUILD"

# apt_opts SUITE MIRROR: sets APT_OPTS, the apt-get/apt-cache options for a
# private apt state under .cache/vm/apt/SUITE: its own sources list (Packages
# indexes only), lists and caches, no status file and no preferences.
apt_opts() {
	local dir=$CACHE/apt/$1
	rm -rf "$dir"
	mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
	echo "deb [signed-by=$KEYRING target=Packages] $2 $1 main" >"$dir/sources.list"
	APT_OPTS=(
		-o "Dir::Etc::SourceList=$dir/sources.list"
		-o "Dir::Etc::SourceParts=/dev/null"
		-o "Dir::Etc::Preferences=/dev/null"
		-o "Dir::Etc::PreferencesParts=/dev/null"
		-o "Dir::State::Lists=$dir/lists"
		-o "Dir::State::status=/dev/null"
		-o "Dir::Cache=$dir/cache"
		-o "APT::Architecture=amd64"
		-o "APT::Architectures=amd64"
		-o "APT::Sandbox::User=root"
		-o "Acquire::Languages=none"
	)
}

# fetch_kernel K: leaves the kernel image at .cache/vm/kernel/K/vmlinuz.
# Called where set -e does not apply: every step checks its status.
fetch_kernel() {
	local k=$1 dir=$CACHE/kernel/$1 suite pkg deb
	[ -s "$dir/vmlinuz" ] && return 0
	suite=$(suite_for "$k") || return 1
	apt_opts "$suite" "$MIRROR"
	apt-get "${APT_OPTS[@]}" -qq update || return 1
	# The metapackage depends on the versioned image package.
	pkg=$(apt-cache "${APT_OPTS[@]}" show --no-all-versions linux-image-cloud-amd64 |
		sed -n 's/^Depends: *//p' | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1)
	case $pkg in
	linux-image-"$k"*) ;;
	*)
		echo "linux-image-cloud-amd64 in $suite depends on '$pkg', not a $k kernel"
		return 1
		;;
	esac
	rm -rf "$dir.tmp" && mkdir -p "$dir.tmp" || return 1
	(cd "$dir.tmp" && apt-get "${APT_OPTS[@]}" -qq download "$pkg") || return 1
	deb=$(ls "$dir.tmp"/*.deb) || return 1
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir.tmp" --wildcards './boot/vmlinuz-*' || return 1
	mv "$dir.tmp"/boot/vmlinuz-* "$dir.tmp/vmlinuz" || return 1
	dpkg-deb -f "$deb" Package Version >"$dir.tmp/package" || return 1
	rm -rf "$dir.tmp/boot" "$deb" "$dir" && mv "$dir.tmp" "$dir" || return 1
	# The indexes are only needed to find the next kernel: fetch them again then.
	rm -rf "$CACHE/apt/$suite"
}

# build_initramfs: a static test binary, busybox and an /init that runs the
# tests and prints VMTEST-RESULT rc=N.
build_initramfs() {
	local root=$BUILD/root
	rm -rf "$root"
	mkdir -p "$root"/{bin,dev,proc,sys,tmp,run}
	(cd "$ROOT" && CGO_ENABLED=0 "$GO" test -c -o "$root/loader.test" ./internal/loader)
	# The inventory (internal/state) on the fentry source: burst and stats.
	(cd "$ROOT" && CGO_ENABLED=0 "$GO" test -c -o "$root/state.test" ./internal/state)
	cp "$BUSYBOX" "$root/bin/busybox"
	cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
echo "VMTEST-KERNEL \$(uname -r)"
cd /tmp
TRACKER_VM=1 /loader.test -test.v -test.count=1 -test.timeout=$((BOOT_TIMEOUT - 30))s -test.run '$RUN_PATTERN'
rc=\$?
TRACKER_TEST_SOURCE=fentry /state.test -test.v -test.count=1 -test.timeout=120s -test.run '$STATE_PATTERN' || rc=1
TRACKER_VM=1 /state.test -test.v -test.count=1 -test.timeout=120s -test.run '$FRESH_PATTERN' || rc=1
echo "VMTEST-RESULT rc=\$rc"
poweroff -f
EOF
	chmod 0755 "$root/init"
	(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$BUILD/initramfs.cpio"
}

# run_kernel K: boots K, writes its log and prints the summary line.
# boot KERNEL RAWLOG: one boot of the test initramfs, console to RAWLOG.
# -cpu qemu64,-cx16: qemu 7.2's TCG corrupts EFLAGS after cmpxchg16b, which
# 6.12's SLUB uses (random double faults); without CX16 the kernel falls
# back. -accel tcg,thread=single: the vCPUs take turns on one host thread,
# so neither starves the other (two host cores are shared with the host).
# -nodefaults: no NIC, so no iPXE ROM is needed.
boot() {
	timeout "$BOOT_TIMEOUT" qemu-system-x86_64 -nodefaults -accel tcg,thread=single -cpu qemu64,-cx16 -m 1G \
		-smp "${VMTEST_SMP:-2}" -nographic -serial stdio -monitor none -no-reboot \
		-kernel "$CACHE/kernel/$1/vmlinuz" -initrd "$BUILD/initramfs.cpio" \
		-append "console=ttyS0 panic=-1 quiet" </dev/null >"$2" 2>&1 || true
}

run_kernel() {
	local k=$1 start log raw rc hooks source load release passed failed uname
	start=$(date +%s)
	log=$LOGS/$k.log
	raw=$LOGS/$k.raw
	if ! fetch_kernel "$k" >"$LOGS/$k.fetch" 2>&1; then
		echo "vmtest kernel=$k source=? hooks=? passed=0 failed=0 seconds=$(($(date +%s) - start)) error=download"
		cat "$LOGS/$k.fetch" >&2
		return 1
	fi
	# A boot that prints no result marker hung in the emulator (a TCG vCPU
	# starved: soft lockups, seen once on 6.1 with two vCPUs), not in a
	# test: it is booted once more, and says so. A test failure prints its
	# marker and is never retried.
	for attempt in 1 2; do
		boot "$k" "$raw"
		tr -d '\r' <"$raw" >"$log"
		rm -f "$raw"
		rc=$(grep -ao 'VMTEST-RESULT rc=[0-9]*' "$log" | tail -n1 | cut -d= -f2 || true)
		[ -z "$rc" ] && [ "$attempt" = 1 ] || break
		echo "vmtest: kernel $k printed no result marker (emulator hang), booting it once more" >&2
		cp "$log" "$LOGS/$k.hung.log"
	done
	hooks=$(grep -ao 'VMTEST-HOOKS source=[a-z]* load=[a-z_0-9]* release=[a-z_0-9]*' "$log" | head -n1 || true)
	source=$(sed -n 's/.*source=\([^ ]*\).*/\1/p' <<<"$hooks")
	load=$(sed -n 's/.* load=\([^ ]*\).*/\1/p' <<<"$hooks")
	release=$(sed -n 's/.* release=\([^ ]*\).*/\1/p' <<<"$hooks")
	passed=$(grep -ac -- '--- PASS: ' "$log" || true)
	failed=$(grep -ac -- '--- FAIL: ' "$log" || true)
	uname=$(sed -n 's/.*VMTEST-KERNEL \([^ ]*\).*/\1/p' "$log" | head -n1)
	echo "vmtest kernel=$k source=${source:-?} hooks=load:${load:-?},release:${release:-?} passed=$passed failed=$failed seconds=$(($(date +%s) - start)) uname=${uname:-?}"
	fresh_report "$k" "${uname:-?}" "$log"
	if [ "$rc" != 0 ]; then
		echo "vmtest: kernel $k failed (rc=${rc:-no marker}); console log $log:" >&2
		cat "$log" >&2
		return 1
	fi
}

# field NAME LINE: the value of NAME=value in a VMTEST-FRESH line.
field() {
	sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"
}

# fresh_report K UNAME LOG: prints the kernel's freshness line and appends
# its rows to the Markdown table.
fresh_report() {
	local k=$1 uname=$2 line src summary="" load
	load=$(cut -d' ' -f1 /proc/loadavg)
	while read -r line; do
		[ -n "$line" ] || continue
		src=$(field source "$line")
		summary+=" $src load=$(field load_p50 "$line")/$(field load_p99 "$line")"
		summary+=" release=$(field release_p50 "$line")/$(field release_p99 "$line") ms;"
		FRESH_SETUP="$(field programs "$line") programs loaded one every $(field pace_ms "$line") ms, then closed one every $(field pace_ms "$line") ms, with $(field background "$line") others loaded; sweeps every $(field interval_ms "$line") ms"
		printf '| %s (%s) | %s | %s (%s) | %s (%s) | %s | %s (%s) | %s (%s) | %s | %s+%s of %s+%s | %s | %s | %s |\n' "$k" "$uname" "$src" \
			"$(field load_p50 "$line")" "$(field read_load_p50 "$line")" \
			"$(field load_p99 "$line")" "$(field read_load_p99 "$line")" "$(field inv_load_p99 "$line")" \
			"$(field release_p50 "$line")" "$(field read_release_p50 "$line")" \
			"$(field release_p99 "$line")" "$(field read_release_p99 "$line")" "$(field inv_release_p99 "$line")" \
			"$(field loads "$line")" "$(($(field releases "$line") + $(field audit_first "$line")))" \
			"$(field programs "$line")" "$(field programs "$line")" \
			"$(field audit_first "$line")" "$(field load_call "$line")" "$load" >>"$FRESH_ROWS"
	done < <(grep -ao 'VMTEST-FRESH .*' "$3" || true)
	if [ -z "$summary" ]; then
		echo "vmtest-fresh kernel=$k no figures (TestVMFreshness did not run or failed)"
		printf '| %s (%s) | - | - | - | - | - | - | - | not measured | - | - | %s |\n' "$k" "$uname" "$load" >>"$FRESH_ROWS"
		return
	fi
	echo "vmtest-fresh kernel=$k p50/p99:${summary%;} (TCG-emulated guest: slower than hardware)"
}

# write_report FILE: the freshness table with what was measured, where and
# from which commit.
write_report() {
	local commit qemu cpu
	commit=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
	qemu=$(qemu-system-x86_64 --version | head -n1)
	cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
	cat >"$1" <<EOF
# Kernel matrix: event freshness in qemu-booted kernels

Generated by \`make vmtest-docs\` (test/vm/run.sh, internal/state TestVMFreshness) on
$(date -u +%Y-%m-%d) from commit \`$commit\`. The fentry source cannot load on hosts with kernel
lockdown, so it is measured here, in Debian cloud kernels booted with qemu, with the perf source
in the same boot for comparison.

**The guest is emulated** (qemu TCG, one host thread for ${VMTEST_SMP:-2} vCPUs, \`-cpu qemu64\`,
$qemu, host CPU: $cpu): every figure is many times slower than on hardware. Compare sources
and kernels with each other, not with docs/benchmarks.md. Nothing here is a pass/fail threshold:
the test asserts only that every load and release was published, and delivered by the source
unless the source reported lost records or, for the perf source before Linux 6.0 (no lost counter;
on 5.10 it was seen to miss two or three of 300 releases without reporting a loss), a sweep
published it; the test's log counts those.

A tracker (state.Tracker.Run, stats enabled) in the test process; ${FRESH_SETUP:-no run}.
Load: from the start of the BPF_PROG_LOAD call to the tracker's OnEvent for that ID; release: from
close() of the last fd to OnEvent; in brackets, to when the source's Read returned the event (the
rest is the tracker's: queueing, applying, publishing). "in inventory": p99 until the tracker applied
the event to its inventory (state.Event.Time, one goroutine hop before OnEvent), the figure
docs/benchmarks.md judges on the host. Times in ms. "by a sweep" counts releases
a sweep's audit published before their event was applied (their event still arrived): they are
left out of the release percentiles (not out of the bracketed ones). "load call": the emulated
BPF_PROG_LOAD itself. "host load": the host's 1-minute load average after the boot; the emulator
is one host thread, so a busy host slows every figure.

| kernel | source | load p50 | load p99 | load p99 in inventory | release p50 | release p99 | release p99 in inventory | seen | by a sweep | load call p50 | host load |
|---|---|---|---|---|---|---|---|---|---|---|---|
EOF
	cat "$FRESH_ROWS" >>"$1"
}

build_initramfs

FRESH_ROWS=$BUILD/fresh.rows
FRESH_SETUP=
: >"$FRESH_ROWS"
status=0
for k in "$@"; do
	run_kernel "$k" || status=1
done
# The systemd unit, under systemd as PID 1, in Debian 12's kernel.
if [[ " $* " == *" 6.1 "* ]]; then
	if [ -x /lib/systemd/systemd ] && [ -x /bin/systemctl ]; then
		"$ROOT/test/vm/systemd.sh" 6.1 || status=1
	else
		echo "vmtest-systemd: not run: systemd is not installed (apt-get install systemd)"
	fi
fi
write_report "$CACHE/vmtest.md"
echo
sed -n '/^| kernel/,$p' "$CACHE/vmtest.md"
if [ -n "${VMTEST_REPORT:-}" ]; then
	cp "$CACHE/vmtest.md" "$VMTEST_REPORT"
	echo "vmtest: report written to $VMTEST_REPORT"
fi
exit $status
