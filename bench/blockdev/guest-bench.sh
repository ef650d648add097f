#!/bin/sh
# guest-bench.sh - runs inside the qemu guest (see run.sh): the same fio jobs
# on each block device, one device at a time, each backed by RAM:
#   loop    the kernel loop driver on a tmpfs file (the in-kernel floor)
#   brd     the kernel's RAM disk (brd.ko), where the kernel ships it
#   nbdkit  nbd.ko attached (nbdserver -connect) to nbdkit's memory plugin
#           on 127.0.0.1: the reference, a server no one here wrote
#   nbd     nbd.ko served by bench/blockdev/nbdserver (blockdev.RAM)
#   aio     /dev/abuseN served by uio-ramdisk on the AIO engine
#   uring   /dev/abuseN served by uio-ramdisk on the io_uring engine
#   ublk    /dev/ublkbN served by uio-ramdisk -driver ublk, where ublk_drv loads
#   nbdc    /dev/abuseN served by uio-ramdisk -nbd (our NBD client) from nbdkit
# Prints "BENCH <device> <job> <iops> <KiB/s>" lines. SIZE is in MiB ("256M").

. /bin/guest-lib.sh # FAILS, pass, fail, up, run, wait_ready, wait_gone, discard_check, fill_fs
SIZE=256M
RT=4

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
			--norandommap --randrepeat=0 --output-format=terse --terse-version=3 2>/tmp/fio.err)
		if [ $? != 0 ] || [ -z "$out" ]; then
			fail "bench-$n-$jn"; cat /tmp/fio.err; continue
		fi
		case $rw in
		*read) echo "$out" | awk -F';' -v n="$n" -v j="$jn" '{print "BENCH", n, j, $8, $7, $5}' ;;
		*) echo "$out" | awk -F';' -v n="$n" -v j="$jn" '{print "BENCH", n, j, $49, $48, $5}' ;;
		esac
	done
	pass "bench-$n"
}

insmod /lib/modules/extra/abuse.ko || { fail "insmod abuse.ko"; exit 1; }
echo "fio $(fio --version); kernel $(uname -r); $(nproc) vCPUs"

# loop on tmpfs
mkdir -p /lo && mount -t tmpfs -o size=400M tmpfs /lo
truncate -s "$SIZE" /lo/disk.img
if losetup /dev/loop0 /lo/disk.img; then
	bench loop /dev/loop0
	losetup -d /dev/loop0
else
	fail "losetup"
fi
rm -f /lo/disk.img
umount /lo

# nbd.ko + our NBD server on the RAM backend
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

# ramdisk NAME ARGS...: bench a uio-ramdisk device
ramdisk() {
	n=$1; shift
	rm -f /tmp/ab.ready
	uio-ramdisk -queues 1 -depth 128 -log warn -ready /tmp/ab.ready "$@" &
	SPID=$!
	if wait_ready /tmp/ab.ready; then
		bench "$n" "$(cat /tmp/ab.ready)"
	else
		fail "uio-ramdisk $n start"
	fi
	kill -TERM $SPID
	wait_gone $SPID || fail "uio-ramdisk $n shutdown"
}
# ABUSE + uio-ramdisk, both engine backends
for e in aio uring; do ramdisk $e -driver abuse -size "$SIZE" -backend $e; done
# the same daemon over ublk
if [ -e /dev/ublk-control ]; then ramdisk ublk -driver ublk -size "$SIZE"; else
	echo "KMODLAB: SKIP ublk: no ublk_drv in $(uname -r)"; fi

# brd, the kernel's RAM disk, sized like the others
if rmmod brd 2>/dev/null; modprobe brd rd_nr=1 rd_size=$((${SIZE%M} * 1024)) && [ -e /dev/ram0 ]; then
	bench brd /dev/ram0
	rmmod brd
else
	echo "KMODLAB: SKIP brd: no brd.ko in $(uname -r)"
fi

# nbdkit's memory plugin: behind nbd.ko, and behind our NBD client on ABUSE
ip link set lo up
nbdkit_start() {
	rm -f /tmp/nbdkit.pid
	nbdkit -f -i 127.0.0.1 -p 10809 -P /tmp/nbdkit.pid memory "$SIZE" &
	NPID=$!
	wait_ready /tmp/nbdkit.pid || { fail "nbdkit start"; return 1; }
}
if nbdkit_start; then
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
fi
if nbdkit_start; then
	ramdisk nbdc -driver abuse -nbd 127.0.0.1:10809
	kill -TERM $NPID; wait_gone $NPID
fi
exit $FAILS
