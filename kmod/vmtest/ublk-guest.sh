#!/bin/sh
# ublk-guest.sh - the blockdev checks on the kernel's ublk driver instead of
# ABUSE, run by /init inside the qemu guest (busybox sh) when run.sh is
# started with GUEST_SCRIPT=ublk-guest.sh EXTRA_MODS=ublk_drv (see
# ublk-test.sh). Same checks as guest.sh where they apply: badblocks -w,
# ext4 with checksums across a remount + e2fsck -fn, the QD32 verifying
# workload, SIGKILL of the daemon during I/O (EIO, then a clean new device),
# plus what is ublk's own: the missing-driver message, queue limits,
# FLUSH/FUA with a file backend, removal refused while mounted.
# Prints "KMODLAB: PASS|FAIL|SKIP <check>"; exit status = number of FAILs.

. /bin/guest-lib.sh # FAILS, pass, fail, up, run, wait_ready, wait_gone, discard_check, fill_fs
limits() {
	q=/sys/block/$1/queue
	l="lbs=$(cat $q/logical_block_size) max_hw_kb=$(cat $q/max_hw_sectors_kb) disc=$(cat $q/discard_max_hw_bytes)"
	l="$l wz=$(cat $q/write_zeroes_max_bytes) wc='$(cat $q/write_cache)' fua=$(cat $q/fua 2>/dev/null) rot=$(cat $q/rotational)"
	echo "$l hwq=$(ls /sys/block/$1/mq | wc -l) size=$(cat /sys/block/$1/size) ro=$(cat /sys/block/$1/ro)"
}
ext4check() { # DEV TAG [PID: SIGTERM while mounted must be refused]
	run "mkfs.ext4-$2" 120 mkfs.ext4 -F -q "$1"
	mkdir -p /mnt
	if timeout 60 mount -t ext4 "$1" /mnt; then
		fill_fs
		if [ -n "${3:-}" ]; then
			kill -TERM "$3"
			i=0 # the daemon retries for -remove-wait (5 s) before it gives up
			while ! grep -q 'still in use' /tmp/daemon.$3 && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
			if kill -0 "$3" 2>/dev/null && [ -e "/sys/block/${1#/dev/}" ] && grep -q 'still in use' /tmp/daemon.$3; then
				pass "remove-mounted-refused-$2 (SIGTERM while mounted: the daemon keeps serving)"
			else
				fail "remove-mounted-refused-$2"; cat /tmp/daemon.$3
			fi
		fi
		echo 3 >/proc/sys/vm/drop_caches
		if timeout 60 umount /mnt && timeout 60 mount -t ext4 "$1" /mnt &&
			timeout 60 md5sum -c /tmp/sums >/tmp/md5.out 2>&1; then
			pass "ext4-remount-checksums-$2 $(wc -l </tmp/sums) files"
		else
			fail "ext4-remount-checksums-$2"; cat /tmp/md5.out
		fi
		timeout 60 umount /mnt || fail "umount-$2"
	else
		fail "mount-ext4-$2"
	fi
	run "e2fsck-fn-$2" 120 e2fsck -fn "$1"
}
# daemon NAME ARGS...: start uio-ramdisk -driver ublk in the background,
# wait for its device; sets SPID and DEV
daemon() {
	n=$1; shift
	rm -f /tmp/ready.$n
	uio-ramdisk -driver ublk -ready /tmp/ready.$n "$@" >/tmp/daemon.log.$n 2>&1 &
	SPID=$!
	ln -sf /tmp/daemon.log.$n /tmp/daemon.$SPID
	if wait_ready /tmp/ready.$n; then
		DEV=$(cat /tmp/ready.$n)
		pass "uio-ramdisk-ublk-$n created $DEV (pid $SPID): $(grep -o '"data": "[^"]*"' /tmp/daemon.log.$n | head -1)"
		grep -i 'GET_FEATURES\|USER_COPY' /tmp/daemon.log.$n
		grep -o '"features": "[^"]*"' /tmp/daemon.log.$n
		return 0
	fi
	fail "uio-ramdisk-ublk-$n create"; cat /tmp/daemon.log.$n
	DEV=
	return 1
}

if [ ! -e /dev/ublk-control ] && ! modprobe ublk_drv 2>/dev/null; then
	echo "KMODLAB: SKIP ublk: kernel $(uname -r) has no ublk_drv (CONFIG_BLK_DEV_UBLK not set)"
	exit 0
fi

# ------------------------------------------- missing driver: clear message
rmmod ublk_drv 2>/dev/null
out=$(uio-ramdisk -driver ublk -size 16M 2>&1); rc=$?
if [ $rc = 2 ] && echo "$out" | grep -q 'modprobe ublk_drv'; then pass "ublk-missing-message exit 2: '$out'"; else
	fail "ublk-missing-message rc=$rc '$out'"; fi
if modprobe ublk_drv && [ -e /dev/ublk-control ]; then pass "modprobe ublk_drv"; else fail "modprobe ublk_drv"; exit $FAILS; fi
out=$(uio-ramdisk -driver ublk -size 16M -reconnect-ms 1000 2>&1); rc=$?
if [ $rc = 2 ] && echo "$out" | grep -q 'abuse'; then pass "ublk-reconnect-refused '$out'"; else fail "ublk-reconnect-refused rc=$rc '$out'"; fi

# ----------------------------- device 0: RAM, 4k blocks, 2 queues, depth 32
if daemon ram4k -size 64M -bs 4096 -queues 2 -depth 32 -index 0; then
	lim=$(limits ublkb0)
	if [ "$(cat /sys/block/ublkb0/queue/logical_block_size)" = 4096 ] && [ "$(cat /sys/block/ublkb0/queue/max_hw_sectors_kb)" -ge 1024 ] &&
		[ "$(cat /sys/block/ublkb0/queue/write_cache)" = "write through" ] && [ "$(ls /sys/block/ublkb0/mq | wc -l)" = 2 ] &&
		[ "$(cat /sys/block/ublkb0/queue/discard_max_hw_bytes)" -gt 0 ] && [ "$(cat /sys/block/ublkb0/queue/write_zeroes_max_bytes)" -gt 0 ]; then
		pass "queue-limits-ram $lim"
	else
		fail "queue-limits-ram $lim"
	fi
	run rwcheck-ublk 120 ramserver rwcheck -dev $DEV
	run badblocks-w-ublk 600 badblocks -w -b 4096 -c 256 -e 1 $DEV
	discard_check $DEV "discard-ublk"
	run verify-qd32-ublk 600 ramserver verify -dev $DEV -qd 32 -bytes $((256 << 20)) -engine uring -name verify-qd32-ublk
	ext4check $DEV ublk $SPID
	kill -TERM $SPID
	if wait_gone $SPID && [ ! -e /sys/block/ublkb0 ] && [ ! -e /dev/ublkc0 ]; then
		pass "daemon-sigterm-removes-device-ublk (block and char device gone)"
	else
		fail "daemon-sigterm-removes-device-ublk"; cat /tmp/daemon.log.ram4k; ls /dev | grep ublk
	fi
fi

# ------- device 0 again: 512-byte blocks, depth 64, per-tag buffers (the
# data path of kernels before 6.5, which have no USER_COPY)
if daemon ram512 -size 64M -bs 512 -queues 2 -depth 64 -index 0 -ublk-copy buffers; then
	if grep -q '"data": "per-tag buffers"' /tmp/daemon.log.ram512; then pass "ublk-per-tag-buffers"; else fail "ublk-per-tag-buffers"; fi
	run badblocks-w-ublk-512 600 badblocks -w -b 4096 -c 64 -e 1 $DEV
	run verify-qd32-ublk-512 600 ramserver verify -dev $DEV -qd 32 -bytes $((256 << 20)) -engine aio -name verify-qd32-ublk-512
	ext4check $DEV ublk-512
	kill -INT $SPID
	if wait_gone $SPID && [ ! -e /sys/block/ublkb0 ]; then pass "daemon-sigint-removes-device-ublk-512"; else fail "daemon-sigint-removes-device-ublk-512"; fi
fi

# -------------- a file backend (write cache: FLUSH and FUA reach the backend)
if daemon file -file /tmp/disk.img -size 64M -queues 2 -depth 32 -index 4 -log debug; then
	lim=$(limits ublkb4)
	if [ "$(cat /sys/block/ublkb4/queue/write_cache)" = "write back" ] && [ "$(cat /sys/block/ublkb4/queue/fua)" = 1 ]; then
		pass "queue-limits-file-ublk $lim"
	else
		fail "queue-limits-file-ublk $lim"
	fi
	run verify-qd32-file-ublk 600 ramserver verify -dev $DEV -qd 32 -bytes $((128 << 20)) -engine aio -name verify-qd32-file-ublk
	ext4check $DEV file-ublk
	kill -TERM $SPID
	wait_gone $SPID || fail "file daemon shutdown"
	grep -i 'bad request\|failed' /tmp/daemon.log.file | head -5
fi

# ---------------------------- device 1: kill -9 the daemon during I/O
if daemon kill -size 32M -bs 512 -queues 2 -depth 16 -index 1; then
	# ublk deletes the disk when its server dies: I/O in flight fails with
	# EIO (checked by killtest), and a new read on a still-open fd of the
	# deleted disk (capacity 0) returns end of file, which killtest, written
	# for ABUSE, reports as "new read after kill: <nil>, want EIO".
	timeout 30 ramserver killtest -pid $SPID -dev $DEV >/tmp/kill.out 2>&1
	if grep -q '^KMODLAB: PASS' /tmp/kill.out ||
		[ "$(grep '^KMODLAB: FAIL' /tmp/kill.out)" = "KMODLAB: FAIL kill-server-during-io new read after kill: <nil>, want EIO" ]; then
		pass "killtest-daemon-ublk (every in-flight I/O got EIO within 1 s of SIGKILL; the disk was deleted)"
	else
		fail "killtest-daemon-ublk"; cat /tmp/kill.out
	fi
	wait $SPID 2>/dev/null
	tail -3 /tmp/daemon.log.kill
	i=0
	while [ -e /sys/block/ublkb1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	if [ ! -e /sys/block/ublkb1 ]; then pass "ublk-disk-deleted-after-kill (char node left: $(ls /dev | grep -c '^ublkc1$'))"; else fail "ublk-disk-deleted-after-kill"; fi
	# a new daemon on the same index deletes what the dead one left and
	# serves a clean new device
	if daemon kill-new -size 16M -queues 1 -depth 8 -index 1; then
		if grep -q 'deleted the stopped ublk device' /tmp/daemon.log.kill-new; then pass "ublk-reclaim-dead-device"; else fail "ublk-reclaim-dead-device"; fi
		run new-daemon-rwcheck-ublk 60 ramserver rwcheck -dev $DEV
		kill -TERM $SPID
		wait_gone $SPID || fail "new daemon shutdown"
	fi
fi

# ----------------------------------------- a second daemon, first free index
if daemon any -size 16M -queues 1 -depth 8; then
	run any-index-rwcheck-ublk 60 ramserver rwcheck -dev $DEV
	kill -TERM $SPID
	wait_gone $SPID || fail "any-index daemon shutdown"
fi

ls /dev | grep -q '^ublk[bc]' && fail "ublk devices left: $(ls /dev | grep '^ublk[bc]' | tr '\n' ' ')"
if timeout 30 rmmod ublk_drv; then pass "rmmod ublk_drv"; else fail "rmmod ublk_drv"; fi
dmesg | grep -i ublk | sed 's/^/dmesg: /' | tail -20
exit $FAILS
