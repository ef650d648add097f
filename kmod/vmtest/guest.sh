#!/bin/sh
# guest.sh - abuse.ko checks, run by /init inside the qemu guest (busybox sh).
# Prints "KMODLAB: PASS|FAIL <check> ..." lines; exit status = number of FAILs.
# Each step is bounded by busybox timeout; the host bounds the whole VM.

. /bin/guest-lib.sh # FAILS, pass, fail, up, run, wait_ready, wait_gone, discard_check, fill_fs

# ------------------------------------------------------------- module
if insmod /lib/modules/extra/abuse.ko; then pass "insmod abuse.ko"; else
	fail "insmod abuse.ko"; exit $FAILS
fi
mode=$(stat -c '%a %U %G %F' /dev/abctl 2>/dev/null)
if [ "$mode" = "600 root root character special file" ]; then pass "abctl-mode /dev/abctl $mode"; else
	fail "abctl-mode got '$mode'"
fi
run abctl-nonroot 20 ramserver nonroot

# limits N: the queue limits of /dev/abuseN, one line
limits() {
	q=/sys/block/abuse$1/queue
	l="lbs=$(cat $q/logical_block_size) max_hw_kb=$(cat $q/max_hw_sectors_kb) max_kb=$(cat $q/max_sectors_kb)"
	l="$l segs=$(cat $q/max_segments) disc=$(cat $q/discard_max_hw_bytes) wz=$(cat $q/write_zeroes_max_bytes)"
	l="$l wc='$(cat $q/write_cache)' fua=$(cat $q/fua 2>/dev/null) rot=$(cat $q/rotational)"
	echo "$l hwq=$(ls /sys/block/abuse$1/mq | wc -l) size=$(cat /sys/block/abuse$1/size) ro=$(cat /sys/block/abuse$1/ro)"
}
# ext4check DEV TAG: mkfs, mount, write files, checksums across a remount, fsck
ext4check() {
	run "mkfs.ext4-$2" 120 mkfs.ext4 -F -q "$1"
	mkdir -p /mnt
	if timeout 60 mount -t ext4 "$1" /mnt; then
		fill_fs
		if [ "$2" = aio ]; then
			out=$(timeout 10 ramserver remove -id 0 2>&1)
			rc=$?
			if [ $rc = 1 ]; then pass "remove-foreign-refused EPERM ($out)"; else fail "remove-foreign-refused rc=$rc $out"; fi
			out=$(timeout 10 ramserver remove -id 0 -token-file /tmp/tok0 2>&1)
			rc=$?
			if [ $rc = 16 ]; then pass "remove-mounted-refused ($out)"; else fail "remove-mounted-refused rc=$rc $out"; fi
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

# ------------------------- device 0: the uio-ramdisk daemon on the AIO engine
rm -f /tmp/ready0
uio-ramdisk -size 64M -bs 4096 -queues 2 -depth 32 -backend aio -index 0 -token-file /tmp/tok0 -ready /tmp/ready0 &
SPID=$!
if wait_ready /tmp/ready0; then pass "uio-ramdisk-aio created $(cat /tmp/ready0) (pid $SPID)"; else fail "uio-ramdisk-aio create /dev/abuse0"; fi
DEV=/dev/abuse0
lim=$(limits 0)
if [ "$(cat /sys/block/abuse0/queue/logical_block_size)" = 4096 ] && [ "$(cat /sys/block/abuse0/queue/max_hw_sectors_kb)" -ge 1024 ] &&
	[ "$(cat /sys/block/abuse0/queue/write_cache)" = "write through" ] && [ "$(ls /sys/block/abuse0/mq | wc -l)" = 2 ] &&
	[ "$(cat /sys/block/abuse0/queue/discard_max_hw_bytes)" -gt 0 ] && [ "$(cat /sys/block/abuse0/queue/write_zeroes_max_bytes)" -gt 0 ]; then
	pass "queue-limits-ram $lim"
else
	fail "queue-limits-ram $lim"
fi

run rwcheck-aio 120 ramserver rwcheck -dev $DEV
run badblocks-w-aio 600 badblocks -w -b 4096 -c 256 -e 1 $DEV

# discard: the range reads back as zeroes
discard_check $DEV "discard"
ext4check $DEV aio
run verify-qd32-daemon-aio 600 ramserver verify -dev $DEV -qd 32 -bytes $((256 << 20)) -engine uring -name verify-qd32-daemon-aio
kill -TERM $SPID
if wait_gone $SPID && [ ! -e /sys/block/abuse0 ]; then
	pass "daemon-sigterm-removes-device-aio"
else
	fail "daemon-sigterm-removes-device-aio"
fi

# ----------------------- device 0 again: the daemon on the io_uring engine
rm -f /tmp/ready0
# (per-tag buffers and no fetch wait: the path of modules without USER_COPY/WAIT)
uio-ramdisk -size 64M -bs 512 -queues 2 -depth 64 -backend uring -abuse-copy buffers -fetch-wait 0 -index 0 -ready /tmp/ready0 &
SPID=$!
if wait_ready /tmp/ready0; then pass "uio-ramdisk-uring created $(cat /tmp/ready0) (pid $SPID)"; else fail "uio-ramdisk-uring create /dev/abuse0"; fi
run badblocks-w-uring 600 badblocks -w -b 4096 -c 64 -e 1 $DEV
run verify-qd32-daemon-uring 600 ramserver verify -dev $DEV -qd 32 -bytes $((256 << 20)) -engine aio -name verify-qd32-daemon-uring
ext4check $DEV uring
kill -INT $SPID
if wait_gone $SPID && [ ! -e /sys/block/abuse0 ]; then
	pass "daemon-sigint-removes-device-uring"
else
	fail "daemon-sigint-removes-device-uring"
fi

# ------------------ the daemon's setup errors: clear message, exit status 2
out=$(uio-ramdisk -size 1000 2>&1); rc=$?
rm -f /tmp/ready9
uio-ramdisk -size 16M -index 0 -ready /tmp/ready9 >/dev/null 2>&1 &
SPID=$!
wait_ready /tmp/ready9
out2=$(uio-ramdisk -size 16M -index 0 2>&1); rc2=$?
kill -TERM $SPID
wait_gone $SPID
if [ $rc = 2 ] && [ $rc2 = 2 ] && echo "$out2" | grep -q 'busy'; then
	pass "daemon-setup-errors exit 2: '$out' / '$out2'"
else
	fail "daemon-setup-errors rc=$rc '$out' rc2=$rc2 '$out2'"
fi
ls /sys/block | grep -q abuse && { fail "daemon-setup-errors left $(ls /sys/block | grep abuse)"; }

# ------------------ the daemon with a file backend: a file on tmpfs (buffered)
rm -f /tmp/ready4
uio-ramdisk -file /tmp/disk.img -size 64M -queues 2 -depth 32 -backend uring -index 4 -ready /tmp/ready4 &
SPID=$!
if wait_ready /tmp/ready4; then
	pass "uio-ramdisk-file-tmpfs created $(cat /tmp/ready4)"
	lim=$(limits 4)
	if [ "$(cat /sys/block/abuse4/queue/write_cache)" = "write back" ] && [ "$(cat /sys/block/abuse4/queue/fua)" = 1 ]; then
		pass "queue-limits-file $lim"
	else
		fail "queue-limits-file $lim"
	fi
	run verify-qd32-file-tmpfs 600 ramserver verify -dev /dev/abuse4 -qd 32 -bytes $((128 << 20)) -engine aio -name verify-qd32-file-tmpfs
	ext4check /dev/abuse4 file
else
	fail "uio-ramdisk-file-tmpfs create"
fi
kill -TERM $SPID
wait_gone $SPID || fail "file daemon shutdown"

# --------- the file backend with O_DIRECT: a file on ext4 on a RAM abuse device
rm -f /tmp/ready0 /tmp/ready5
uio-ramdisk -size 160M -queues 1 -backend aio -index 0 -ready /tmp/ready0 &
RPID=$!
if wait_ready /tmp/ready0 && mkfs.ext4 -F -q /dev/abuse0 && mkdir -p /mnt2 && mount -t ext4 /dev/abuse0 /mnt2; then
	uio-ramdisk -file /mnt2/disk.img -size 64M -queues 2 -depth 32 -backend aio -index 5 -ready /tmp/ready5 >/tmp/d5.out 2>&1 &
	SPID=$!
	if wait_ready /tmp/ready5 && grep -q 'o_direct.*true' /tmp/d5.out; then
		pass "uio-ramdisk-file-ext4 O_DIRECT on $(cat /tmp/ready5)"
	else
		fail "uio-ramdisk-file-ext4"; cat /tmp/d5.out
	fi
	run verify-qd32-file-odirect 600 ramserver verify -dev /dev/abuse5 -qd 32 -bytes $((128 << 20)) -engine uring -name verify-qd32-file-odirect
	kill -TERM $SPID
	wait_gone $SPID || fail "file daemon (ext4) shutdown"
	timeout 60 umount /mnt2 || fail "umount /mnt2"
else
	fail "ext4 for the O_DIRECT file backend"
fi
kill -TERM $RPID
wait_gone $RPID || fail "RAM daemon under ext4 shutdown"

# ------------------------ device 1: kill -9 the daemon during I/O
rm -f /tmp/ready1
uio-ramdisk -size 32M -bs 512 -queues 2 -depth 16 -backend aio -index 1 -ready /tmp/ready1 &
SPID=$!
wait_ready /tmp/ready1 || fail "create /dev/abuse1"
run killtest-daemon 30 ramserver killtest -pid $SPID -dev /dev/abuse1
wait $SPID 2>/dev/null
run remove-after-server-death 20 ramserver remove -id 1
[ -e /sys/block/abuse1 ] && fail "abuse1 still present after remove"

# ---------------------------------- device 2: a new daemon serves a new device
rm -f /tmp/ready2
uio-ramdisk -size 16M -queues 1 -depth 8 -backend uring -ready /tmp/ready2 &
SPID=$!
if wait_ready /tmp/ready2; then
	run new-daemon-rwcheck 60 ramserver rwcheck -dev "$(cat /tmp/ready2)"
else
	fail "create device after kill"
fi
kill -TERM $SPID
wait_gone $SPID || fail "daemon 2 shutdown"

# --------------- device 3: reconnect window (I/O held, then served by a new daemon)
rm -f /tmp/ready3 /tmp/ready3b
uio-ramdisk -index 3 -size 16M -queues 2 -depth 8 -reconnect-ms 4000 -token-file /tmp/tok3 -ready /tmp/ready3 &
SPID=$!
wait_ready /tmp/ready3 || fail "create /dev/abuse3"
kill -KILL $SPID
wait $SPID 2>/dev/null
ramserver rwcheck -dev /dev/abuse3 >/tmp/rw3.out 2>&1 &
RWPID=$!
sleep 1
if kill -0 $RWPID 2>/dev/null; then pass "reconnect-io-held (I/O waits for a new server)"; else
	fail "reconnect-io-held: I/O ended without a server"; cat /tmp/rw3.out; fi
out=$(uio-ramdisk -attach -index 3 -size 16M -token-file /tmp/tok0 2>&1); rc=$?
if [ $rc = 2 ] && echo "$out" | grep -q 'operation not permitted'; then pass "reconnect-wrong-token-refused ($out)"; else
	fail "reconnect-wrong-token-refused rc=$rc $out"; fi
uio-ramdisk -attach -index 3 -size 16M -token-file /tmp/tok3 -ready /tmp/ready3b &
SPID=$!
if wait_ready /tmp/ready3b && timeout 60 sh -c "while kill -0 $RWPID 2>/dev/null; do sleep 0.1; done" &&
	wait $RWPID; then
	pass "reconnect-attach-serves-held-io $(grep PASS /tmp/rw3.out | cut -d' ' -f4-)"
else
	fail "reconnect-attach-serves-held-io"; cat /tmp/rw3.out
fi
# the window expires: held I/O fails with EIO
kill -KILL $SPID
wait $SPID 2>/dev/null
t0=$(up)
if ramserver rwcheck -dev /dev/abuse3 >/tmp/rw3.out 2>&1; then
	fail "reconnect-window-expiry: I/O succeeded without a server"
elif grep -q 'input/output error' /tmp/rw3.out; then
	pass "reconnect-window-expiry EIO after $(awk -v a="$t0" -v b="$(up)" 'BEGIN{printf "%.1fs", b-a}') (window 4s)"
else
	fail "reconnect-window-expiry"; cat /tmp/rw3.out
fi
run remove-after-expiry 20 ramserver remove -id 3

# ------------------ examples/ramdisk: the smallest custom backend (XOR RAM disk)
xorramdisk -size 16M >/tmp/xor.out 2>&1 &
SPID=$!
i=0
while ! grep -q '^/dev/abuse' /tmp/xor.out && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
if grep -q '^/dev/abuse' /tmp/xor.out; then
	run example-xorramdisk-rwcheck 60 ramserver rwcheck -dev "$(grep '^/dev/abuse' /tmp/xor.out)"
else
	fail "example-xorramdisk start"; cat /tmp/xor.out
fi
kill -TERM $SPID
wait_gone $SPID || fail "example-xorramdisk shutdown"

# ------------------------------------------ hardening: races, stuck servers
# ADD, ATTACH and REMOVE racing on one index (thousands of devices)
run add-attach-remove-race 600 ramserver race -n "${RACE_N:-2000}" -id 40

# the queue count and depth as blk-mq applied them (2 vCPUs: 8 queues -> 2)
rm -f /tmp/ready7
ramserver serve -queues 8 -depth 256 -id 7 -ready /tmp/ready7 >/tmp/s7.out 2>&1 &
SPID=$!
if wait_ready /tmp/ready7; then
	got=$(sed -n 's/.* \([0-9]*\) queues x \([0-9]*\),.*/\1 \2/p' /tmp/s7.out)
	sys="$(ls /sys/block/abuse7/mq | wc -l) $(cat /sys/block/abuse7/mq/0/nr_tags)"
	if [ "$got" = "$sys" ] && [ "${got%% *}" = "$(nproc)" ]; then
		pass "queue-clamp requested 8x256, kernel applied and reported '$got' (sysfs mq dirs, nr_tags: '$sys'; $(nproc) CPUs)"
	else
		fail "queue-clamp reported '$got' sysfs '$sys' cpus $(nproc)"; cat /tmp/s7.out
	fi
else
	fail "queue-clamp: create"; cat /tmp/s7.out
fi
kill -TERM $SPID
wait_gone $SPID || fail "queue-clamp server shutdown"

run write-cache-reconnect-rule 120 ramserver wcrule
run fetch-copy-faults 60 ramserver faults
run user-copy-wait 60 ramserver usercopy
run device-ownership 60 ramserver owner

# SIGSTOP of the daemon during I/O: EIO after -io-timeout, no task left in D
for mode in fail fatal; do
	rm -f /tmp/ready8
	flags=""
	[ $mode = fatal ] && flags="-io-timeout-fatal"
	uio-ramdisk -size 32M -queues 2 -depth 16 -backend aio -index 8 -io-timeout 3s $flags -ready /tmp/ready8 >/tmp/d8.out 2>&1 &
	SPID=$!
	if wait_ready /tmp/ready8; then
		sflags=""
		[ $mode = fatal ] && sflags="-fatal"
		run "sigstop-io-timeout-$mode" 60 ramserver stoptest -pid $SPID -dev /dev/abuse8 -timeout 3s -margin 3s $sflags
	else
		fail "sigstop-io-timeout-$mode: create"; cat /tmp/d8.out
	fi
	kill -CONT $SPID 2>/dev/null
	kill -TERM $SPID 2>/dev/null
	wait_gone $SPID
	[ -e /sys/block/abuse8 ] && ramserver remove -id 8
	[ -e /sys/block/abuse8 ] && fail "abuse8 left after sigstop-io-timeout-$mode"
done

# forced removal of a mounted device whose daemon is stopped: returns, and
# the mount gets errors instead of hanging (the I/O timeout is far away)
rm -f /tmp/ready6
uio-ramdisk -size 64M -index 6 -io-timeout 60s -token-file /tmp/tok6 -ready /tmp/ready6 >/tmp/d6.out 2>&1 &
SPID=$!
if wait_ready /tmp/ready6 && mkfs.ext4 -F -q /dev/abuse6 && mkdir -p /mnt6 && timeout 60 mount -t ext4 /dev/abuse6 /mnt6; then
	dd if=/dev/urandom of=/mnt6/before bs=1k count=512 2>/dev/null && sync
	dd if=/dev/urandom of=/mnt6/dirty bs=1M count=4 2>/dev/null
	kill -STOP $SPID
	t0=$(up)
	out=$(timeout 30 ramserver remove -id 6 -token-file /tmp/tok6 -force 2>&1); rc=$?
	dt=$(awk -v a="$t0" -v b="$(up)" 'BEGIN{printf "%.1f", b-a}')
	if [ $rc = 0 ] && [ ! -e /sys/block/abuse6 ]; then
		pass "forced-remove-mounted returned in ${dt}s with the daemon stopped"
	else
		fail "forced-remove-mounted rc=$rc after ${dt}s: $out"
	fi
	if timeout 30 dd if=/dev/zero of=/mnt6/after bs=4k count=16 conv=fsync >/tmp/dd6.out 2>&1; then
		fail "forced-remove-mount-errors: a synced write to the mount succeeded"
	else
		rc=$?
		if [ $rc = 124 ] || [ $rc = 143 ]; then fail "forced-remove-mount-errors: write hung"; else
			pass "forced-remove-mount-errors synced write fails: $(tail -1 /tmp/dd6.out)"; fi
	fi
	t0=$(up)
	if timeout 60 umount /mnt6; then pass "forced-remove-umount in $(awk -v a="$t0" -v b="$(up)" 'BEGIN{printf "%.1fs", b-a}')"; else
		fail "forced-remove-umount"; fi
else
	fail "forced-remove: device 6 with ext4"; cat /tmp/d6.out
fi
kill -CONT $SPID 2>/dev/null
if wait_gone $SPID; then pass "forced-remove-daemon-exits"; else fail "forced-remove-daemon-exits"; cat /tmp/d6.out; fi

# ------------------------------------------------------------- fuzzing
run ioctl-fuzz 300 ramserver fuzz -n "${FUZZ_N:-3000}"

# --------------------------------------------------------------- unload
ls /sys/block | grep abuse && fail "devices left: $(ls /sys/block | grep abuse)"
if timeout 30 rmmod abuse && [ ! -e /dev/abctl ]; then pass "rmmod abuse"; else fail "rmmod abuse"; fi
exit $FAILS
