#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# systemd.sh [KERNEL]: boots a Debian kernel (default 6.1, Debian 12's, the
# release whose systemd this host has) under qemu with this host's systemd
# as PID 1, and starts deploy/systemd/bpfstats-tracker.service as
# "make install" installs it (the unit file unchanged, the tracker built
# from this tree at /usr/local/bin/bpfstats-tracker, the default
# /etc/default/bpfstats-tracker). A check service then asserts, from
# outside the unit's sandbox, that:
#   - the unit reached "active" (Type=notify: READY=1 after the first sweep)
#     and runs as uid 0 with exactly its five capabilities, and every
#     thread has the timer slack of TimerSlackNSec=1ms;
#   - the tracker created its registry /sys/fs/bpf/bpfstats/registry
#     (directory 0700, map 0600, root's), which ProtectSystem=strict would
#     leave read-only without ReadWritePaths=-/sys/fs/bpf;
#   - "systemctl stop" ends it with result "success".
# And, as a control that the check can fail, that the same unit with
# DynamicUser=yes and without ReadWritePaths= and ExecStartPre= (the unit before the
# registry needed them) starts but creates no registry.
#
# Prints "vmtest-systemd kernel=K result=pass|fail" and the check's lines;
# exits non-zero on failure. The kernel comes from test/vm/run.sh's cache
# (run "make vmtest KERNEL=6.1" once). Systemd runs only inside the VM:
# nothing on the host is touched.
#
# Needs: qemu-system-x86, busybox-static, cpio, systemd (the binaries
# copied into the VM), go.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
K=${1:-6.1}
CACHE=$ROOT/.cache/vm
KERNEL_IMAGE=$CACHE/kernel/$K/vmlinuz
BUILD=$CACHE/systemd
LOG=$CACHE/logs/systemd-$K.log
BOOT_TIMEOUT=${VMTEST_TIMEOUT:-240}
GO=${GO:-go}
UNIT=$ROOT/deploy/systemd/bpfstats-tracker.service

die() {
	echo "vmtest-systemd: $*" >&2
	exit 2
}

[ -s "$KERNEL_IMAGE" ] || die "no kernel $K in $CACHE/kernel (run ./test/vm/run.sh $K first)"
for f in /lib/systemd/systemd /bin/systemctl /bin/busybox; do
	[ -x "$f" ] || die "$f missing (apt-get install systemd busybox-static)"
done

# copy_bin FILE: FILE and the shared libraries it needs, at the same paths.
copy_bin() {
	local lib
	cp -L "$1" "$R$1"
	for lib in $(ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
		[ -e "$R$lib" ] || cp -L "$lib" "$R$lib"
	done
}

R=$BUILD/root
rm -rf "$R"
mkdir -p "$R"/usr/{bin,sbin,lib/x86_64-linux-gnu/systemd,lib64,lib/systemd/system} \
	"$R"/{dev,proc,sys,tmp,run,root,var,etc/systemd/system,etc/default,usr/local/bin}
# Debian 12 is usr-merged.
ln -s usr/bin "$R/bin"
ln -s usr/sbin "$R/sbin"
ln -s usr/lib "$R/lib"
ln -s usr/lib64 "$R/lib64"
ln -s ../run "$R/var/run"
copy_bin /lib/systemd/systemd
copy_bin /bin/systemctl
ln -s /lib/systemd/systemd "$R/init"
cp /bin/busybox "$R/usr/bin/busybox"
for applet in sh cat echo grep sed stat test ls sleep poweroff tr head mkdir; do
	ln -s busybox "$R/usr/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo "root:x:0:" >"$R/etc/group"
printf 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="vmtest"\n' >"$R/etc/os-release"
echo 0123456789abcdef0123456789abcdef >"$R/etc/machine-id"

# The unit and its files where "make install" puts them.
(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -trimpath -o "$R/usr/local/bin/bpfstats-tracker" ./cmd/tracker)
cp "$UNIT" "$R/etc/systemd/system/bpfstats-tracker.service"
cp "$ROOT/deploy/systemd/bpfstats-tracker.env" "$R/etc/default/bpfstats-tracker"
# The control: the unit before the registry fix, on other ports and path.
sed -e '/^ReadWritePaths=/d' -e '/^ExecStartPre=/d' -e 's/^\[Service\]$/[Service]\nDynamicUser=yes/' \
	-e 's|^ExecStart=.*|& --registry /sys/fs/bpf/control/registry --nats-listen 127.0.0.1:4223 --metrics-addr 127.0.0.1:2225|' \
	"$UNIT" >"$R/etc/systemd/system/bpfstats-tracker-control.service"
# No journald in the VM: the trackers' logs go to a file the check prints
# (opened by systemd before the sandbox is set up).
for u in bpfstats-tracker bpfstats-tracker-control; do
	mkdir -p "$R/etc/systemd/system/$u.service.d"
	printf '[Service]\nStandardOutput=append:/run/%s.log\nStandardError=inherit\n' "$u" \
		>"$R/etc/systemd/system/$u.service.d/log.conf"
done

# The few targets the units' default dependencies name.
for t in sysinit basic shutdown network-online multi-user; do
	printf '[Unit]\nDescription=%s\n' "$t" >"$R/usr/lib/systemd/system/$t.target"
done
cat >"$R/usr/lib/systemd/system/default.target" <<'EOF'
[Unit]
Description=vmtest
Wants=vmtest-check.service
EOF
cat >"$R/usr/lib/systemd/system/vmtest-check.service" <<'EOF'
[Unit]
Description=vmtest check of bpfstats-tracker.service
DefaultDependencies=no
[Service]
Type=simple
ExecStart=/bin/sh /vmtest-check.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
EOF
cp "$ROOT/test/vm/systemd-check.sh" "$R/vmtest-check.sh"

(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$BUILD/initramfs.cpio"

mkdir -p "$(dirname "$LOG")"
start=$(date +%s)
timeout "$BOOT_TIMEOUT" qemu-system-x86_64 -nodefaults -accel tcg,thread=single -cpu qemu64,-cx16 -m 1G \
	-smp 2 -nographic -serial stdio -monitor none -no-reboot \
	-kernel "$KERNEL_IMAGE" -initrd "$BUILD/initramfs.cpio" \
	-append "console=ttyS0 panic=-1 quiet systemd.show_status=0 systemd.log_target=console" \
	</dev/null 2>&1 | tr -d '\r' >"$LOG" || true
rc=$(grep -ao 'VMTEST-SYSTEMD rc=[0-9]*' "$LOG" | tail -n1 | cut -d= -f2 || true)
result=fail
[ "$rc" = 0 ] && result=pass
echo "vmtest-systemd kernel=$K result=$result seconds=$(($(date +%s) - start)) systemd=$(/lib/systemd/systemd --version | head -n1 | cut -d' ' -f2)"
grep -a '^check: ' "$LOG" || true
if [ "$result" != pass ]; then
	echo "vmtest-systemd: console log $LOG:" >&2
	cat "$LOG" >&2
	exit 1
fi
