#!/bin/sh
# nbd-guest.sh - the blockdev NBD-client backend (uio-ramdisk -nbd) with the
# block device on top, run by /init inside the qemu guest (busybox sh) when
# run.sh is started by nbd-test.sh. The peer is Debian's nbdkit with its
# memory plugin, listening on 127.0.0.1 inside the guest. For each kernel
# interface the guest has (ABUSE always; ublk where ublk_drv loads):
# badblocks -w, discard, the QD32 verifying workload, ext4 with checksums
# across a remount + e2fsck -fn, the filesystem read back by a second daemon
# from the same export (the blocks live in nbdkit, not in the daemon), and
# SIGKILL of nbdkit during I/O: every I/O gets EIO within 1 s, no hang, and
# the daemon still removes its device on SIGTERM.
# Prints "KMODLAB: PASS|FAIL|SKIP <check>"; exit status = number of FAILs.

. /bin/guest-lib.sh # FAILS, pass, fail, up, run, wait_ready, wait_gone, discard_check, fill_fs
PORT=10809
limits() {
	q=/sys/block/$1/queue
	l="lbs=$(cat $q/logical_block_size) max_hw_kb=$(cat $q/max_hw_sectors_kb) disc=$(cat $q/discard_max_hw_bytes)"
	l="$l wz=$(cat $q/write_zeroes_max_bytes) wc='$(cat $q/write_cache)' fua=$(cat $q/fua 2>/dev/null)"
	echo "$l hwq=$(ls /sys/block/$1/mq | wc -l) size=$(cat /sys/block/$1/size) ro=$(cat /sys/block/$1/ro)"
}

# nbdkit_start SIZE: nbdkit's memory plugin on 127.0.0.1:$PORT; sets NPID.
# -P writes the pid file once nbdkit accepts connections.
nbdkit_start() {
	rm -f /tmp/nbdkit.pid
	nbdkit -f -i 127.0.0.1 -p $PORT -P /tmp/nbdkit.pid memory "$1" >/tmp/nbdkit.log 2>&1 &
	NPID=$!
	if wait_ready /tmp/nbdkit.pid; then
		pass "nbdkit $(nbdkit --version 2>&1 | head -1) memory $1 on 127.0.0.1:$PORT (pid $NPID)"
		return 0
	fi
	fail "nbdkit start"; cat /tmp/nbdkit.log
	return 1
}
nbdkit_stop() {
	kill -TERM $NPID 2>/dev/null
	wait_gone $NPID >/dev/null 2>&1
}

# daemon DRV NAME ARGS...: uio-ramdisk -driver DRV -nbd 127.0.0.1:$PORT in
# the background, wait for its device; sets SPID and DEV
daemon() {
	drv=$1 n=$2; shift 2
	rm -f /tmp/ready.$n
	uio-ramdisk -driver $drv -nbd 127.0.0.1:$PORT -ready /tmp/ready.$n "$@" >/tmp/daemon.log.$n 2>&1 &
	SPID=$!
	if wait_ready /tmp/ready.$n; then
		DEV=$(cat /tmp/ready.$n)
		pass "uio-ramdisk-$drv-nbd-$n created $DEV (pid $SPID)"
		grep 'NBD backend' /tmp/daemon.log.$n | sed 's/^/    /'
		return 0
	fi
	fail "uio-ramdisk-$drv-nbd-$n create"; cat /tmp/daemon.log.$n
	DEV=
	return 1
}
# stop NAME TAG: SIGTERM the daemon, the device must go away
stop() {
	kill -TERM $SPID
	wait_gone $SPID
	rc=$?
	if [ ! -e "/sys/block/${DEV#/dev/}" ]; then pass "daemon-sigterm-removes-device-$2 (exit $rc)"; else
		fail "daemon-sigterm-removes-device-$2 exit=$rc"; tail -5 /tmp/daemon.log.$1; fi
}

# suite DRV: the checks on one kernel interface
suite() {
	d=$1
	nbdkit_start 64M || return
	if daemon $d main -bs 4096 -queues 2 -depth 32 -index 0; then
		b=${DEV#/dev/}
		lim=$(limits $b)
		# the memory plugin offers FLUSH, TRIM and WRITE_ZEROES (and
		# multi-conn, so two queues get two connections)
		if [ "$(cat /sys/block/$b/size)" = $((64 << 11)) ] && [ "$(cat /sys/block/$b/queue/write_cache)" = "write back" ] &&
			[ "$(ls /sys/block/$b/mq | wc -l)" = 2 ] && [ "$(cat /sys/block/$b/queue/discard_max_hw_bytes)" -gt 0 ] &&
			[ "$(cat /sys/block/$b/queue/write_zeroes_max_bytes)" -gt 0 ]; then
			pass "queue-limits-nbd-$d $lim"
		else
			fail "queue-limits-nbd-$d $lim"
		fi
		run rwcheck-nbd-$d 120 ramserver rwcheck -dev $DEV
		run badblocks-w-nbd-$d 600 badblocks -w -b 4096 -c 256 -e 1 $DEV
		discard_check $DEV "discard-nbd-$d"
		run verify-qd32-nbd-$d 600 ramserver verify -dev $DEV -qd 32 -bytes $((128 << 20)) -engine uring -name verify-qd32-nbd-$d
		run mkfs.ext4-nbd-$d 120 mkfs.ext4 -F -q -O metadata_csum $DEV
		mkdir -p /mnt
		if timeout 60 mount -t ext4 $DEV /mnt; then
			fill_fs
			echo 3 >/proc/sys/vm/drop_caches
			if timeout 60 umount /mnt && timeout 60 mount -t ext4 $DEV /mnt &&
				timeout 60 md5sum -c /tmp/sums >/tmp/md5.out 2>&1; then
				pass "ext4-remount-checksums-nbd-$d $(wc -l </tmp/sums) files"
			else
				fail "ext4-remount-checksums-nbd-$d"; cat /tmp/md5.out
			fi
			timeout 60 umount /mnt || fail "umount-nbd-$d"
		else
			fail "mount-ext4-nbd-$d"
		fi
		run e2fsck-fn-nbd-$d 120 e2fsck -fn $DEV
		stop main nbd-$d
	fi
	# a second daemon on the same export finds the filesystem: the blocks
	# live in nbdkit, and the first daemon's shutdown flushed them there
	if daemon $d again -queues 1 -depth 16 -index 0; then
		run e2fsck-fn-nbd-$d-second-daemon 120 e2fsck -fn $DEV
		if timeout 60 mount -t ext4 -o ro $DEV /mnt && timeout 60 md5sum -c /tmp/sums >/tmp/md5.out 2>&1; then
			pass "ext4-checksums-second-daemon-nbd-$d $(wc -l </tmp/sums) files"
		else
			fail "ext4-checksums-second-daemon-nbd-$d"; cat /tmp/md5.out
		fi
		timeout 60 umount /mnt 2>/dev/null
		# SIGKILL of the NBD server during I/O: every I/O in flight and every
		# new one fails with EIO within 1 s (killtest), not a hang
		timeout 30 ramserver killtest -pid $NPID -dev $DEV >/tmp/kill.out 2>&1
		if grep -q '^KMODLAB: PASS' /tmp/kill.out && ! grep -q '^KMODLAB: FAIL' /tmp/kill.out; then
			pass "kill-nbdkit-during-io-$d: $(grep '^KMODLAB: PASS' /tmp/kill.out | cut -d' ' -f4-)"
		else
			fail "kill-nbdkit-during-io-$d"; cat /tmp/kill.out
		fi
		wait $NPID 2>/dev/null
		grep -i 'broken\|connection' /tmp/daemon.log.again | head -3 | sed 's/^/    /'
		if kill -0 $SPID 2>/dev/null; then pass "daemon-survives-dead-server-$d"; else fail "daemon-survives-dead-server-$d"; fi
		# a read on a fresh open still fails fast
		t0=$(up)
		if timeout 10 dd if=$DEV of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null; then
			fail "read-after-server-death-eio-$d (read succeeded)"
		else
			rc=$?
			if [ $rc != 124 ]; then pass "read-after-server-death-eio-$d (dd exit $rc in $(awk -v a="$t0" -v b="$(up)" 'BEGIN{printf "%.2fs", b-a}'))"; else
				fail "read-after-server-death-eio-$d (hang)"; fi
		fi
		stop again nbd-$d-after-kill
	fi
	nbdkit_stop
}

# ------------------------------------------------------ the guest's loopback
if ip link set lo up && ip addr show lo | grep -q 127.0.0.1; then pass "loopback up"; else fail "loopback up"; exit $FAILS; fi
if ! nbdkit --dump-config >/tmp/nbdkit.cfg 2>&1; then fail "nbdkit runs in the guest"; cat /tmp/nbdkit.cfg; exit $FAILS; fi
grep '^version=' /tmp/nbdkit.cfg

# -------------------------------------------------- a bad peer: clear errors
out=$(timeout 20 uio-ramdisk -driver abuse -nbd 127.0.0.1:$PORT 2>&1); rc=$?
if [ $rc = 2 ] && echo "$out" | grep -q 'refused'; then pass "nbd-no-server exit 2: '$out'"; else fail "nbd-no-server rc=$rc '$out'"; fi

# ----------------------------------------------------------------- ABUSE
if insmod /lib/modules/extra/abuse.ko; then pass "insmod abuse.ko"; else fail "insmod abuse.ko"; exit $FAILS; fi
suite abuse
ls /sys/block | grep -q abuse && fail "abuse devices left: $(ls /sys/block | grep abuse | tr '\n' ' ')"
if timeout 30 rmmod abuse; then pass "rmmod abuse"; else fail "rmmod abuse"; fi

# ------------------------------------------------------------------ ublk
if [ ! -e /dev/ublk-control ] && ! modprobe ublk_drv 2>/dev/null; then
	echo "KMODLAB: SKIP ublk: kernel $(uname -r) has no ublk_drv (CONFIG_BLK_DEV_UBLK not set)"
else
	suite ublk
	ls /dev | grep -q '^ublkb' && fail "ublk devices left: $(ls /dev | grep '^ublk[bc]' | tr '\n' ' ')"
	if timeout 30 rmmod ublk_drv; then pass "rmmod ublk_drv"; else fail "rmmod ublk_drv"; fi
fi
dmesg | grep -i 'abuse\|ublk' | sed 's/^/dmesg: /' | tail -20
exit $FAILS
