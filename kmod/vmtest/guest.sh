#!/bin/sh
# guest.sh - abuse.ko checks, run by /init inside the qemu guest (busybox sh).
# Prints "KMODLAB: PASS|FAIL <check> ..." lines; exit status = number of FAILs.
# Each step is bounded by busybox timeout; the host bounds the whole VM.

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
# wait_ready FILE: wait up to 20 s for a server's ready file
wait_ready() {
	i=0
	while [ ! -s "$1" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
	[ -s "$1" ]
}

# ------------------------------------------------------------- module
if insmod /lib/modules/extra/abuse.ko; then pass "insmod abuse.ko"; else
	fail "insmod abuse.ko"; exit $FAILS
fi
mode=$(stat -c '%a %U %G %F' /dev/abctl 2>/dev/null)
if [ "$mode" = "600 root root character special file" ]; then pass "abctl-mode /dev/abctl $mode"; else
	fail "abctl-mode got '$mode'"
fi
run abctl-nonroot 20 ramserver nonroot

# -------------------------------------------------- device 0: data checks
rm -f /tmp/ready0
ramserver serve -id 0 -size $((64 << 20)) -lbs 4096 -queues 2 -depth 32 -ready /tmp/ready0 &
SPID=$!
if wait_ready /tmp/ready0; then pass "create /dev/abuse0 (server pid $SPID)"; else fail "create /dev/abuse0"; fi
DEV=/dev/abuse0
Q=/sys/block/abuse0/queue
lim="lbs=$(cat $Q/logical_block_size) max_hw_kb=$(cat $Q/max_hw_sectors_kb) max_kb=$(cat $Q/max_sectors_kb)"
lim="$lim segs=$(cat $Q/max_segments) disc=$(cat $Q/discard_max_hw_bytes) wz=$(cat $Q/write_zeroes_max_bytes)"
lim="$lim wc='$(cat $Q/write_cache)' fua=$(cat $Q/fua 2>/dev/null) rot=$(cat $Q/rotational)"
lim="$lim hwq=$(ls /sys/block/abuse0/mq | wc -l) size=$(cat /sys/block/abuse0/size) ro=$(cat /sys/block/abuse0/ro)"
if [ "$(cat $Q/logical_block_size)" = 4096 ] && [ "$(cat $Q/max_hw_sectors_kb)" -ge 1024 ] &&
	[ "$(cat $Q/write_cache)" = "write back" ] && [ "$(ls /sys/block/abuse0/mq | wc -l)" = 2 ] &&
	[ "$(cat $Q/discard_max_hw_bytes)" -gt 0 ] && [ "$(cat $Q/write_zeroes_max_bytes)" -gt 0 ]; then
	pass "queue-limits $lim"
else
	fail "queue-limits $lim"
fi

run rwcheck 120 ramserver rwcheck -dev $DEV
run badblocks-w 600 badblocks -w -b 4096 -c 256 -e 1 $DEV

# discard: the range reads back as zeroes
dd if=/dev/urandom of=$DEV bs=1M count=2 conv=fsync 2>/dev/null
z=$(dd if=/dev/zero bs=1M count=2 2>/dev/null | md5sum | cut -d' ' -f1)
if timeout 30 blkdiscard -o 0 -l $((2 << 20)) $DEV &&
	[ "$(dd if=$DEV bs=1M count=2 2>/dev/null | md5sum | cut -d' ' -f1)" = "$z" ]; then
	pass "discard"
else
	fail "discard"
fi

run mkfs.ext4 120 mkfs.ext4 -F -q $DEV
mkdir -p /mnt
if timeout 60 mount -t ext4 $DEV /mnt; then
	i=1
	for kb in 4 64 700 4096 16384; do
		dd if=/dev/urandom of=/mnt/file$i bs=1k count=$kb 2>/dev/null
		i=$((i + 1))
	done
	mkdir -p /mnt/dir && cp /bin/ramserver /mnt/dir/
	# absolute paths: busybox timeout leaves a watcher process in the cwd
	md5sum /mnt/file* /mnt/dir/* >/tmp/sums
	sync
	out=$(timeout 10 ramserver remove -id 0 2>&1)
	rc=$?
	if [ $rc = 16 ]; then pass "remove-mounted-refused ($out)"; else fail "remove-mounted-refused rc=$rc $out"; fi
	if timeout 60 umount /mnt && timeout 60 mount -t ext4 $DEV /mnt &&
		timeout 60 md5sum -c /tmp/sums >/tmp/md5.out 2>&1; then
		pass "ext4-remount-checksums $(wc -l </tmp/sums) files"
	else
		fail "ext4-remount-checksums"; cat /tmp/md5.out
	fi
	timeout 60 umount /mnt || fail "umount"
else
	fail "mount ext4"
fi
run e2fsck-fn 120 e2fsck -fn $DEV
kill -TERM $SPID
if timeout 20 sh -c "while kill -0 $SPID 2>/dev/null; do sleep 0.1; done" && wait $SPID &&
	[ ! -e /sys/block/abuse0 ]; then
	pass "server-shutdown-removes-device"
else
	fail "server-shutdown-removes-device"
fi

# ------------------------------------ device 1: kill -9 the server during I/O
rm -f /tmp/ready1
ramserver serve -id 1 -size $((32 << 20)) -lbs 512 -queues 2 -depth 16 -ready /tmp/ready1 &
SPID=$!
wait_ready /tmp/ready1 || fail "create /dev/abuse1"
run killtest 30 ramserver killtest -pid $SPID -dev /dev/abuse1
wait $SPID 2>/dev/null
run remove-after-server-death 20 ramserver remove -id 1
[ -e /sys/block/abuse1 ] && fail "abuse1 still present after remove"

# ---------------------------------- device 2: a new server serves a new device
rm -f /tmp/ready2
ramserver serve -size $((16 << 20)) -queues 1 -depth 8 -ready /tmp/ready2 &
SPID=$!
if wait_ready /tmp/ready2; then
	run new-server-rwcheck 60 ramserver rwcheck -dev "$(cat /tmp/ready2)"
else
	fail "create device after kill"
fi
kill -TERM $SPID
timeout 20 sh -c "while kill -0 $SPID 2>/dev/null; do sleep 0.1; done"
wait $SPID || fail "server 2 shutdown"

# --------------- device 3: reconnect window (I/O held, then served by a new server)
rm -f /tmp/ready3 /tmp/ready3b
ramserver serve -id 3 -size $((16 << 20)) -queues 2 -depth 8 -reconnect-ms 4000 -ready /tmp/ready3 &
SPID=$!
wait_ready /tmp/ready3 || fail "create /dev/abuse3"
kill -KILL $SPID
wait $SPID 2>/dev/null
ramserver rwcheck -dev /dev/abuse3 >/tmp/rw3.out 2>&1 &
RWPID=$!
sleep 1
if kill -0 $RWPID 2>/dev/null; then pass "reconnect-io-held (I/O waits for a new server)"; else
	fail "reconnect-io-held: I/O ended without a server"; cat /tmp/rw3.out; fi
ramserver serve -attach 3 -ready /tmp/ready3b &
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

# ------------------------------------------------------------- fuzzing
run ioctl-fuzz 300 ramserver fuzz -n "${FUZZ_N:-3000}"

# --------------------------------------------------------------- unload
ls /sys/block | grep abuse && fail "devices left: $(ls /sys/block | grep abuse)"
if timeout 30 rmmod abuse && [ ! -e /dev/abctl ]; then pass "rmmod abuse"; else fail "rmmod abuse"; fi
exit $FAILS
