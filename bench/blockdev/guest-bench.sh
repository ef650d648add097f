#!/bin/sh
# guest-bench.sh - runs inside the qemu guest (see run.sh): the same fio jobs
# on each block device, one device at a time, each backed by RAM, in ROUNDS
# interleaved rounds (every device once per round, the order rotated by
# one each round, a fresh device and server each time):
#   loop    the kernel loop driver on a tmpfs file (the in-kernel floor)
#   brd     the kernel's RAM disk (brd.ko), where the kernel ships it
#   nbdkit  nbd.ko attached (nbdserver -connect) to nbdkit's memory plugin
#           on 127.0.0.1: the reference, a server no one here wrote
#   nbd     nbd.ko served by bench/blockdev/nbdserver (blockdev.RAM)
#   aio     /dev/abuseN served by uio-ramdisk on the AIO engine
#   uring   /dev/abuseN served by uio-ramdisk on the io_uring engine
#   ubuf    the same with -abuse-copy buffers -fetch-wait 0 (per-tag
#           buffers, poll before every fetch: the path of older modules)
#   uspin   the same as uring with -fetch-spin 1ms (the waiting fetch
#           busy-polls for up to 1 ms before it sleeps)
#   ublk    /dev/ublkbN served by uio-ramdisk -driver ublk, where ublk_drv loads
#   nbdc    /dev/abuseN served by uio-ramdisk -nbd (our NBD client) from nbdkit
# Prints "BENCH <round> <device> <job> <iops> <KiB/s>" lines, and after the
# last round "SYSCALLS <device> <requests> <syscalls> <top calls>" for one
# 4k random-read QD1 job per uio-ramdisk device under strace -c -f (not
# timed). SIZE is in MiB ("256M").

. /bin/guest-lib.sh # FAILS, pass, fail, up, run, wait_ready, wait_gone, discard_check, fill_fs
SIZE=256M
RT=4
ROUNDS=3

# job name rw bs iodepth
JOBS="rr4k-qd1:randread:4k:1 rr4k-qd32:randread:4k:32 rw4k-qd1:randwrite:4k:1 rw4k-qd32:randwrite:4k:32 seqr1m:read:1M:4 seqw1m:write:1M:4"

bench() { # bench NAME DEV
	n=$1 dev=$2
	# fill the device first: every read below hits written data
	timeout 300 fio --name=fill --filename="$dev" --ioengine=libaio --direct=1 --rw=write --bs=1M \
		--iodepth=4 --size="$SIZE" --eta=never --output=/dev/null || { fail "bench-$n fill"; return; }
	for j in $JOBS; do
		IFS=: read -r jn rw bs qd <<EOF
$j
EOF
		out=$(timeout 120 fio --name="$jn" --filename="$dev" --ioengine=libaio --direct=1 --rw="$rw" \
			--bs="$bs" --iodepth="$qd" --size="$SIZE" --time_based --runtime="$RT" --ramp_time=1 \
			--norandommap --randrepeat=0 --eta=never --output-format=terse --terse-version=3 2>/tmp/fio.err)
		if [ $? != 0 ] || [ -z "$out" ]; then
			fail "bench-$n-$jn"; cat /tmp/fio.err; continue
		fi
		case $rw in
		*read) echo "$out" | awk -F';' -v r="$ROUND" -v n="$n" -v j="$jn" '{print "BENCH", r, n, j, $8, $7}' ;;
		*) echo "$out" | awk -F';' -v r="$ROUND" -v n="$n" -v j="$jn" '{print "BENCH", r, n, j, $49, $48}' ;;
		esac
	done
	pass "bench-$n round $ROUND"
}

# syscalls NAME DEV PID: syscalls of process PID per request of a 4k QD1
# random-read job (strace -c -f), after the timed jobs
syscalls() {
	n=$1 dev=$2 pid=$3
	command -v strace >/dev/null || return 0
	strace -c -f -p "$pid" -o /tmp/strace.$n 2>/dev/null &
	STP=$!
	sleep 1
	kb=$(fio --name=sc --filename="$dev" --ioengine=libaio --direct=1 --rw=randread --bs=4k --iodepth=1 \
		--size="$SIZE" --time_based --runtime=3 --eta=never --output-format=terse --terse-version=3 | cut -d';' -f6)
	kill -INT $STP
	wait $STP
	awk '$1 ~ /^[0-9.]+$/ { print $4, $NF }' /tmp/strace.$n | sort -rn >/tmp/sc.$n
	total=$(awk '$2 == "total" { print $1 }' /tmp/sc.$n)
	top=$(grep -v ' total$' /tmp/sc.$n | head -4 | awk '{ printf "%s=%s,", $2, $1 }')
	echo "SYSCALLS $n $((kb / 4)) ${total:-0} ${top%,}"
}

# ramdisk NAME ARGS...: bench a uio-ramdisk device
ramdisk() {
	n=$1; shift
	rm -f /tmp/ab.ready
	uio-ramdisk -queues 1 -depth 128 -log warn -ready /tmp/ab.ready "$@" &
	SPID=$!
	if wait_ready /tmp/ab.ready; then
		bench "$n" "$(cat /tmp/ab.ready)"
		[ "$ROUND" = "$ROUNDS" ] && syscalls "$n" "$(cat /tmp/ab.ready)" $SPID
	else
		fail "uio-ramdisk $n start"
	fi
	kill -TERM $SPID
	wait_gone $SPID || fail "uio-ramdisk $n shutdown"
}

nbdkit_start() {
	rm -f /tmp/nbdkit.pid
	nbdkit -f -i 127.0.0.1 -p 10809 -P /tmp/nbdkit.pid memory "$SIZE" &
	NPID=$!
	wait_ready /tmp/nbdkit.pid || { fail "nbdkit start"; return 1; }
}

dev_loop() {
	mkdir -p /lo && mount -t tmpfs -o size=$((${SIZE%M} + 64))M tmpfs /lo
	truncate -s "$SIZE" /lo/disk.img
	if losetup /dev/loop0 /lo/disk.img; then
		bench loop /dev/loop0
		losetup -d /dev/loop0
	else
		fail "losetup"
	fi
	rm -f /lo/disk.img
	umount /lo
}
dev_nbd() { # nbd.ko + our NBD server on the RAM backend
	rm -f /tmp/nbd.ready
	nbdserver -dev /dev/nbd0 -size "$SIZE" -ready /tmp/nbd.ready &
	SPID=$!
	if wait_ready /tmp/nbd.ready; then
		sleep 0.5
		bench nbd /dev/nbd0
	else
		fail "nbdserver start"
	fi
	kill -TERM $SPID
	wait_gone $SPID
}
dev_aio() { ramdisk aio -driver abuse -size "$SIZE" -backend aio; }
dev_uring() { ramdisk uring -driver abuse -size "$SIZE" -backend uring; }
dev_ubuf() { ramdisk ubuf -driver abuse -size "$SIZE" -backend uring -abuse-copy buffers -fetch-wait 0; }
dev_uspin() { ramdisk uspin -driver abuse -size "$SIZE" -backend uring -fetch-spin 1ms; }
dev_ublk() {
	if [ -e /dev/ublk-control ]; then ramdisk ublk -driver ublk -size "$SIZE"; else
		echo "KMODLAB: SKIP ublk: no ublk_drv in $(uname -r)"; fi
}
dev_brd() { # the kernel's RAM disk, sized like the others
	if rmmod brd 2>/dev/null; modprobe brd rd_nr=1 rd_size=$((${SIZE%M} * 1024)) && [ -e /dev/ram0 ]; then
		bench brd /dev/ram0
		rmmod brd
	else
		echo "KMODLAB: SKIP brd: no brd.ko in $(uname -r)"
	fi
}
dev_nbdkit() { # nbdkit's memory plugin behind nbd.ko
	nbdkit_start || return
	rm -f /tmp/nbd.ready
	nbdserver -dev /dev/nbd1 -connect 127.0.0.1:10809 -ready /tmp/nbd.ready &
	SPID=$!
	if wait_ready /tmp/nbd.ready; then
		sleep 0.5
		bench nbdkit /dev/nbd1
	else
		fail "nbdserver -connect start"
	fi
	kill -TERM $SPID
	wait_gone $SPID
	kill -TERM $NPID; wait_gone $NPID
}
dev_nbdc() { # nbdkit's memory plugin behind our NBD client on ABUSE
	nbdkit_start || return
	ramdisk nbdc -driver abuse -nbd 127.0.0.1:10809
	kill -TERM $NPID; wait_gone $NPID
}

insmod /lib/modules/extra/abuse.ko || { fail "insmod abuse.ko"; exit 1; }
ip link set lo up
echo "fio $(fio --version); kernel $(uname -r); $(nproc) vCPUs; $ROUNDS rounds"
DEVS="nbdkit aio uring ublk nbdc loop brd nbd ubuf uspin"
ROUND=1
while [ $ROUND -le $ROUNDS ]; do
	echo "KMODLAB: round $ROUND: $DEVS"
	for d in $DEVS; do "dev_$d"; done
	DEVS="$(echo "$DEVS" | cut -d' ' -f2-) $(echo "$DEVS" | cut -d' ' -f1)" # rotate
	ROUND=$((ROUND + 1))
done
exit $FAILS
