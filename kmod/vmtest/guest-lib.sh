#!/bin/sh
# guest-lib.sh - what every guest script shares (guest.sh, ublk-guest.sh,
# nbd-guest.sh, bench/blockdev/guest-bench.sh): the KMODLAB result lines and
# bounded waits, the discard and file-system fill steps. run.sh copies it to /bin/guest-lib.sh; scripts source it.

FAILS=0
pass() { echo "KMODLAB: PASS $*"; }
fail() { echo "KMODLAB: FAIL $*"; FAILS=$((FAILS + 1)); }
up() { read -r u _ </proc/uptime; echo "$u"; }
# run NAME SECS CMD...: run a command with a time limit, PASS/FAIL on its status
run() {
	n=$1 t=$2; shift 2
	t0=$(up)
	if timeout "$t" "$@" >/tmp/out.$$ 2>&1; then
		pass "$n ($(awk -v a="$t0" -v b="$(up)" 'BEGIN{printf "%.1fs", b-a}'))"
		rc=0
	else
		rc=$?
		fail "$n exit=$rc"
	fi
	sed "s/^/    [$n] /" /tmp/out.$$ | grep -v '^    \[[^]]*\] KMODLAB' || true
	grep '^KMODLAB' /tmp/out.$$ | grep -v "^KMODLAB: PASS" || true
	grep '^KMODLAB: PASS' /tmp/out.$$ | sed 's/^KMODLAB: PASS/    detail:/' || true
	return $rc
}
# wait_ready FILE: wait up to 30 s for a server's ready file
wait_ready() {
	i=0
	while [ ! -s "$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
	[ -s "$1" ]
}
# wait_gone PID: wait up to 30 s for a child to exit; its exit status
wait_gone() {
	timeout 30 sh -c "while kill -0 $1 2>/dev/null; do sleep 0.1; done"
	wait "$1"
}
# discard_check DEV NAME: 2 MiB of random data, discarded, read back as zeroes
discard_check() {
	dd if=/dev/urandom of="$1" bs=1M count=2 conv=fsync 2>/dev/null
	z=$(dd if=/dev/zero bs=1M count=2 2>/dev/null | md5sum | cut -d' ' -f1)
	if timeout 30 blkdiscard -o 0 -l $((2 << 20)) "$1" &&
		[ "$(dd if="$1" bs=1M count=2 2>/dev/null | md5sum | cut -d' ' -f1)" = "$z" ]; then
		pass "$2"
	else
		fail "$2"
	fi
}
# fill_fs: files of 4 KiB to 16 MiB and a binary on the file system mounted
# at /mnt, their checksums in /tmp/sums (absolute paths: busybox timeout
# leaves a watcher process in the cwd), synced
fill_fs() {
	i=1
	for kb in 4 64 700 4096 16384; do
		dd if=/dev/urandom of=/mnt/file$i bs=1k count=$kb 2>/dev/null
		i=$((i + 1))
	done
	mkdir -p /mnt/dir && cp /bin/uio-ramdisk /mnt/dir/
	md5sum /mnt/file* /mnt/dir/* >/tmp/sums
	sync
}
