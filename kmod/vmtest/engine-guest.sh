#!/bin/sh
# engine-guest.sh - the engine's own Go tests (the root package and the aio
# and uring bindings), run by /init inside the qemu guest (busybox sh) when
# run.sh is started by engine-test.sh: what the engine relies on of the
# kernel (opcodes, multishot, buffer rings, CQ sizing, AIO polls) is checked
# on the kernels users run, not only on the build machine's.
# Prints "KMODLAB: PASS|FAIL <check>"; exit status = number of FAILs.

. /bin/guest-lib.sh # FAILS, pass, fail, run
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
echo "io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo n/a) aio-max-nr=$(cat /proc/sys/fs/aio-max-nr)"
ulimit -n 20000 2>/dev/null || ulimit -n 4096
cd /tmp
# engine-test.sh's binaries, copied in at their host path (run.sh EXTRA_FILES)
for t in $(find / -xdev -type f -name '*.test' 2>/dev/null | sort); do
	n=${t##*/}
	# -test.v: the console log shows which test ran long or failed
	run "go-test-${n%.test}" 1500 "$t" -test.count=1 -test.timeout=20m -test.v
done
exit "$FAILS"
