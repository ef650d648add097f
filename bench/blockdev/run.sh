#!/bin/bash
# bench/blockdev/run.sh [6.1|6.12] - ABUSE (uio-ramdisk, aio and uring
# engines), ublk (uio-ramdisk -driver ublk), uio-ramdisk's NBD client
# (-nbd) against nbdkit, nbd.ko against nbdkit (the reference) and against
# our NBD server, the loop device on tmpfs and brd, with fio (libaio,
# direct=1) inside a qemu TCG guest booting Debian's kernel.
# Writes the ratio table into bench/RESULTS.md (between the blockdev-bench markers).
# Bounded: the VM is killed after BOOT_TIMEOUT (default 900 s).
# Environment: BENCH_RUNTIME=4 (seconds per fio job), BENCH_SIZE=256M.
set -euo pipefail
FLAVOUR=${1:-6.12}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-$HERE/../RESULTS.md}
source "$HERE/../lib.sh" # write_results
export LAB=${LAB:-/var/tmp/abuse-bench/$FLAVOUR}
export BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
mkdir -p "$LAB"
sed "s/^SIZE=.*/SIZE=${BENCH_SIZE:-256M}/; s/^RT=.*/RT=${BENCH_RUNTIME:-4}/" "$HERE/guest-bench.sh" >"$LAB/guest-bench.sh"
for p in fio nbdkit; do
	command -v $p >/dev/null || apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $p
done
# nbdkit dlopen()s its memory plugin from its plugin directory: copy it in too
plugin=$(nbdkit --dump-config | sed -n 's/^plugindir=//p')/nbdkit-memory-plugin.so
export GUEST_SCRIPT=$LAB/guest-bench.sh VM_MEM=2G EXTRA_BINS="fio nbdkit" EXTRA_FILES=$plugin \
	EXTRA_GO=./bench/blockdev/nbdserver EXTRA_MODS="nbd loop ublk_drv brd"

T0=$SECONDS
set +e
"$REPO/kmod/vmtest/run.sh" "$FLAVOUR" >"$LAB.log" 2>&1
rc=$?
set -e
tail -3 "$LAB.log"
[ $rc = 0 ] || { echo "bench VM failed (exit $rc); log $LAB.log"; exit 1; }
KVER=$(grep -o 'guest kernel [^;]*' "$LAB.log" | head -1 | cut -d' ' -f3)
FIO=$(grep -o 'fio fio-[0-9.]*' "$LAB/console.log" | head -1 | cut -d' ' -f2)

grep -o 'BENCH .*' "$LAB/console.log" | tr -d '\r' >"$LAB/bench.txt"
table=$(awk '
{ iops[$2, $3] = $4; bw[$2, $3] = $5; seen[$2] = 1 }
function val(d, j) { return (j ~ /1m/) ? bw[d, j] : iops[d, j] }
function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2fx", a / b) : "n/a" }
END {
	split("rr4k-qd1 rr4k-qd32 rw4k-qd1 rw4k-qd32 seqr1m seqw1m", order, " ")
	desc["rr4k-qd1"] = "4k random read, QD1 (IOPS)"; desc["rr4k-qd32"] = "4k random read, QD32 (IOPS)"
	desc["rw4k-qd1"] = "4k random write, QD1 (IOPS)"; desc["rw4k-qd32"] = "4k random write, QD32 (IOPS)"
	desc["seqr1m"] = "1 MiB sequential read, QD4 (MB/s)"; desc["seqw1m"] = "1 MiB sequential write, QD4 (MB/s)"
	# the reference: nbd.ko + nbdkit (else nbd.ko + our server)
	ref = ("nbdkit" in seen) ? "nbdkit" : "nbd"
	nc = split("nbdkit nbd aio uring ublk nbdc loop brd", cols, " ")
	name["nbdkit"] = "nbd.ko + nbdkit memory"; name["nbd"] = "nbd.ko + our server"
	name["aio"] = "ABUSE, uio-ramdisk aio"; name["uring"] = "ABUSE, uio-ramdisk uring"
	name["ublk"] = "ublk, uio-ramdisk"; name["nbdc"] = "ABUSE, uio-ramdisk -nbd (our client) + nbdkit"
	name["loop"] = "loop on tmpfs"; name["brd"] = "brd (kernel RAM disk)"
	bold["aio"] = bold["uring"] = bold["ublk"] = bold["nbdc"] = 1
	h = "| workload |"; s = "|---|"
	for (c = 1; c <= nc; c++) if (cols[c] in seen) { h = h " " name[cols[c]] " |"; s = s "---|" }
	h = h " ABUSE uring / ublk | brd / ABUSE uring |"; s = s "---|---|"
	print h; print s
	for (i = 1; i <= 6; i++) {
		j = order[i]; r = val(ref, j); line = "| " desc[j] " |"
		for (c = 1; c <= nc; c++) {
			d = cols[c]
			if (!(d in seen)) continue
			x = (d == ref) ? "1.00" : ratio(val(d, j), r)
			line = line " " (bold[d] ? "**" x "**" : x) " |"
		}
		line = line " " ratio(val("uring", j), val("ublk", j)) " | " ratio(val("brd", j), val("uring", j)) " |"
		print line
	}
}' "$LAB/bench.txt")
raw=$(awk '{printf "%s/%s %s IOPS %s KiB/s; ", $2, $3, $4, $5}' "$LAB/bench.txt")

frag=$(cat <<EOF
<!-- blockdev-bench:begin -->
## Userspace block devices: ABUSE vs ublk vs NBD vs loop/brd (bench/blockdev/run.sh)

Ratios to nbd.ko + nbdkit's memory plugin (higher is better), same VM. ABUSE,
ublk and nbd.ko + our server serve the same RAM backend (\`blockdev.RAM\`,
1 MiB chunks); "-nbd" is uio-ramdisk's NBD-client backend on ABUSE with
nbdkit's memory plugin (in the guest, over 127.0.0.1 TCP) as its peer, the
same nbdkit that serves the nbd.ko reference; every device is prefilled.
One hardware queue / one connection each. fio $FIO, \`--ioengine=libaio --direct=1\`, ${BENCH_RUNTIME:-4} s per job
after 1 s ramp, ${BENCH_SIZE:-256M} devices; guest kernel $KVER under qemu TCG
(2 vCPU, software emulation). **TCG distorts absolute numbers** (memcpy-heavy
paths run ~30-40x slower than on hardware, syscall-bound ones ~10x), so only
the ratios within one run mean anything.

$table

Targets (issue #12): ABUSE at least 1.0x ublk in every row; both at least 4x
nbd.ko + nbdkit at 4k and 1.5x at 1 MiB. One run each; TCG timings on the shared 2-core host vary by up to 2x between runs.

Command: \`bench/blockdev/run.sh $FLAVOUR\` ($(date -u +%Y-%m-%d), $((SECONDS - T0)) s).
Raw TCG numbers: ${raw%; }.
<!-- blockdev-bench:end -->
EOF
)
printf '%s\n' "$frag" >"$LAB/block.md"
write_results "$OUT" blockdev-bench "$LAB/block.md"
cat "$LAB/block.md"
