#!/usr/bin/env bash
# File I/O next to fio (issue 2): the same job, 4k random reads at iodepth 32
# with O_DIRECT on a file on the root disk, through fio's libaio and io_uring
# engines and through uio (bench/fio/uiofio) on its aio and uring backends.
# Runs interleave (fio libaio, uiofio aio, fio io_uring, uiofio uring) for
# ROUNDS rounds, so drift of a shared, noisy machine hits both sides alike;
# the table gives the medians, the ratio uio/fio, and uio's syscalls per op.
# Writes the table between the fio-bench markers of bench/RESULTS.md.
#
# Usage: bench/fio/run.sh          (3 rounds of 4 x 10 s: about 2.5 minutes)
#
# Environment (all optional):
#   RUNTIME=N     seconds per run (default 10)
#   ROUNDS=N      interleaved rounds (default 3)
#   SIZE=S        test file size, bytes or with K/M/G (default 1G)
#   FILE=path     test file (default /var/tmp/uio-fio.dat: /var/tmp is on the
#                 root disk, /tmp may be tmpfs); made once, fully written
#   BATCHED=1     also run fio with batching on (iodepth_batch_submit=32,
#                 iodepth_batch_complete_max=32, libaio userspace_reap=1) and
#                 give uio's ratio against that too: doubles fio's share of time
#   OUT=path      results file to write (default <repo>/bench/RESULTS.md)
#   NO_INSTALL=1  never call apt-get
#
# Every fio and uiofio run is bounded by timeout(1) (RUNTIME + 60 s), and
# file creation by timeout as well; the EXIT trap removes the work directory.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

COMMAND_LINE=""
for v in RUNTIME ROUNDS SIZE FILE BATCHED OUT NO_INSTALL; do
	if [[ -n ${!v+x} ]]; then COMMAND_LINE+="$v=${!v} "; fi
done
COMMAND_LINE+="bench/fio/run.sh"

RUNTIME=${RUNTIME:-10}
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-1G}
FILE=${FILE:-/var/tmp/uio-fio.dat}
BATCHED=${BATCHED:-0}
OUT=${OUT:-$HERE/../RESULTS.md}
BS=4096
IODEPTH=32
BOUND=$((RUNTIME + 60))

log() { printf '%s\n' "run.sh: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $RUNTIME =~ ^[0-9]+$ && $RUNTIME -ge 1 ]] || die "RUNTIME=$RUNTIME: want whole seconds >= 1"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 ]] || die "ROUNDS=$ROUNDS: want >= 1"

WORK=$(mktemp -d /tmp/fio-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# --- dependencies ------------------------------------------------------------

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh" # apt_install, write_results

need=()
command -v fio >/dev/null || need+=(fio)
command -v jq >/dev/null || need+=(jq)
command -v numfmt >/dev/null || need+=(coreutils)
command -v findmnt >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	apt_install "${need[@]}" || die "could not install ${need[*]}"
fi
command -v go >/dev/null || die "go is required to build bench/fio/uiofio"

log "building uiofio"
(cd "$ROOT" && go build -o "$WORK/uiofio" ./bench/fio/uiofio)
UIOFIO=$WORK/uiofio

# --- the test file -------------------------------------------------------------

SIZE_BYTES=$(numfmt --from=iec "${SIZE%[bB]}") || die "SIZE=$SIZE: not a size"
((SIZE_BYTES >= 1 << 20 && SIZE_BYTES % (1 << 20) == 0)) || die "SIZE=$SIZE: want a whole number of MiB, at least 1M"
DIR=$(dirname "$FILE")
mkdir -p "$DIR"
FSTYPE=$(findmnt -n -o FSTYPE --target "$DIR")
FSDEV=$(findmnt -n -o SOURCE --target "$DIR")
case $FSTYPE in
tmpfs | ramfs | overlay | squashfs) die "$FILE is on $FSTYPE; put FILE on the disk (e.g. /var/tmp)" ;;
ext4) ;;
*) log "note: $FILE is on $FSTYPE, not ext4" ;;
esac

# A file we can reuse has the right size and every block allocated (no
# holes: a hole reads as zeros without touching the disk).
file_ok() {
	[[ -f $FILE ]] || return 1
	[[ $(stat -c %s "$FILE") == "$SIZE_BYTES" ]] || return 1
	(($(stat -c '%b * %B' "$FILE") >= SIZE_BYTES))
}
if ! file_ok; then
	log "writing $FILE ($SIZE, random data, fsync)"
	rm -f "$FILE"
	timeout 600 dd if=/dev/urandom of="$FILE.tmp" bs=1M count=$((SIZE_BYTES >> 20)) conv=fsync status=none ||
		{ rm -f "$FILE.tmp"; die "could not write $FILE"; }
	mv "$FILE.tmp" "$FILE"
fi
file_ok || die "$FILE is not fully allocated"

# --- the runs ------------------------------------------------------------------

FIO_COMMON=(--name=randread --rw=randread --bs=4k --iodepth=$IODEPTH --direct=1
	--runtime="$RUNTIME" --time_based --filename="$FILE" --size="$SIZE_BYTES"
	--output-format=json)
FIO_BATCH_OPTS=(--iodepth_batch_submit=$IODEPTH --iodepth_batch_complete_min=1 --iodepth_batch_complete_max=$IODEPTH)

# run_fio ENGINE TAG ROUND [extra fio options]: one fio run; records IOPS and CPU%.
run_fio() {
	local engine=$1 tag=$2 round=$3
	shift 3
	local out=$WORK/$tag.$round.json
	if ! timeout -s KILL "$BOUND" fio "${FIO_COMMON[@]}" --ioengine="$engine" "$@" >"$out" 2>"$out.err"; then
		log "fio $tag round $round failed:"; cat "$out.err" >&2
		return 0
	fi
	# columns: IOPS, CPU us per I/O, -, errors
	jq -r '.jobs[0] | "\(.read.iops) \((.usr_cpu + .sys_cpu) * 10000 / (.read.iops + 1e-9)) - \(.error)"' "$out" >>"$WORK/$tag.vals"
	log "$(printf 'round %d  %-18s %9.0f IOPS' "$round" "$tag" "$(tail -1 "$WORK/$tag.vals" | cut -d' ' -f1)")"
}

# run_uio BACKEND ROUND: one uiofio run; records IOPS, CPU% and syscalls/op.
run_uio() {
	local backend=$1 round=$2 tag=uio-$1
	local out=$WORK/$tag.$round.json
	if ! timeout -s KILL "$BOUND" "$UIOFIO" -backend "$backend" -file "$FILE" -size "$SIZE_BYTES" \
		-bs $BS -iodepth $IODEPTH -runtime "${RUNTIME}s" -direct=true >"$out" 2>"$out.err"; then
		log "uiofio $backend round $round failed:"; cat "$out.err" >&2
		return 0
	fi
	# columns: IOPS, CPU us per I/O, syscalls per I/O, errors
	jq -r '"\(.iops) \((.usr_cpu + .sys_cpu) * 10000 / (.iops + 1e-9)) \(.syscalls_per_op) \(.errors)"' "$out" >>"$WORK/$tag.vals"
	log "$(printf 'round %d  %-18s %9.0f IOPS  %.3f syscalls/op' "$round" "$tag" \
		"$(tail -1 "$WORK/$tag.vals" | cut -d' ' -f1)" "$(tail -1 "$WORK/$tag.vals" | cut -d' ' -f3)")"
}

per_round=4
[[ $BATCHED == 1 ]] && per_round=6
log "job: 4k randread, iodepth $IODEPTH, O_DIRECT, $FILE ($SIZE on $FSTYPE $FSDEV); $ROUNDS rounds x $per_round runs x ${RUNTIME}s"
for round in $(seq "$ROUNDS"); do
	run_fio libaio fio-libaio "$round"
	[[ $BATCHED == 1 ]] && run_fio libaio fio-libaio-batch "$round" "${FIO_BATCH_OPTS[@]}" --userspace_reap=1
	run_uio aio "$round"
	run_fio io_uring fio-io_uring "$round"
	[[ $BATCHED == 1 ]] && run_fio io_uring fio-io_uring-batch "$round" "${FIO_BATCH_OPTS[@]}"
	run_uio uring "$round"
done

# --- the table -------------------------------------------------------------------

# median TAG COLUMN: median of one column of TAG's values ("-" if none).
median() {
	local f=$WORK/$1.vals
	[[ -s $f ]] || { echo -; return; }
	cut -d' ' -f"$2" "$f" | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}
# rounds TAG: the per-round IOPS, in run order, as "a / b / c" (thousands).
rounds() {
	local f=$WORK/$1.vals
	[[ -s $f ]] || { echo -; return; }
	cut -d' ' -f1 "$f" | awk '{printf "%s%.1fk", (NR>1?" / ":""), $1/1000}'
}
fmt0() { [[ $1 == - ]] && echo - || printf '%.0f' "$1"; }
fmt2() { [[ $1 == - ]] && echo - || printf '%.2f' "$1"; }
fmt3() { [[ $1 == - ]] && echo - || printf '%.3f' "$1"; }
ratio() {
	[[ $1 == - || $2 == - ]] && { echo -; return; }
	awk -v u="$1" -v f="$2" 'BEGIN {printf "%.3f", u / f}'
}
verdict() {
	[[ $1 == - ]] && { echo -; return; }
	awk -v r="$1" 'BEGIN {print (r >= 0.95 ? "yes" : "NO")}'
}

TABLE=$WORK/table.md
{
	echo "| backend | fio IOPS (median) | uio IOPS (median) | ratio uio/fio | >= 0.95 | uio syscalls/op | fio CPU us/IO | uio CPU us/IO | fio IOPS per round | uio IOPS per round |"
	echo "| ------- | ----------------: | ----------------: | ------------: | :-----: | --------------: | ------------: | ------------: | ------------------ | ------------------ |"
	row() { # LABEL FIOTAG UIOTAG
		local f u r
		f=$(median "$2" 1)
		u=$(median "$3" 1)
		r=$(ratio "$u" "$f")
		echo "| $1 | $(fmt0 "$f") | $(fmt0 "$u") | $r | $(verdict "$r") | $(fmt3 "$(median "$3" 3)") | $(fmt2 "$(median "$2" 2)") | $(fmt2 "$(median "$3" 2)") | $(rounds "$2") | $(rounds "$3") |"
	}
	row "libaio / uio aio" fio-libaio uio-aio
	row "io_uring / uio uring" fio-io_uring uio-uring
	if [[ $BATCHED == 1 ]]; then
		row "libaio batched / uio aio" fio-libaio-batch uio-aio
		row "io_uring batched / uio uring" fio-io_uring-batch uio-uring
	fi
} >"$TABLE"

errors=$(cat "$WORK"/*.vals 2>/dev/null | awk '{s += $NF} END {print s + 0}')

CPU=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
DISKDEV=$(basename "$(readlink -f "$FSDEV")")
DISKNOTE="$FSDEV"
if [[ -d /sys/class/block/$DISKDEV ]]; then
	sched=$(sed 's/ *$//' "/sys/class/block/$DISKDEV/queue/scheduler" 2>/dev/null || echo '?')
	nrq=$(cat "/sys/class/block/$DISKDEV/queue/nr_requests" 2>/dev/null || echo '?')
	drv=$(basename "$(readlink -f "/sys/class/block/$DISKDEV/device/driver" 2>/dev/null)" 2>/dev/null || echo '?')
	DISKNOTE="$FSDEV (driver $drv, scheduler $sched, nr_requests $nrq)"
fi

{
	echo "<!-- fio-bench:begin -->"
	echo "## File I/O next to fio (bench/fio/run.sh)"
	echo
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "- kernel: $(uname -sr); CPU: $CPU x $(nproc)"
	echo "- disk: $FILE, $((SIZE_BYTES >> 20)) MiB fully written, on $FSTYPE $DISKNOTE"
	echo "- $(fio --version), $(go version | cut -d' ' -f3)"
	echo "- command: \`$COMMAND_LINE\`"
	echo "- job: 4k random reads, iodepth $IODEPTH, O_DIRECT, ${RUNTIME} s time based, one job/thread; $ROUNDS rounds run interleaved (fio libaio, uio aio, fio io_uring, uio uring); medians of the rounds"
	echo "- fio: \`fio --name=randread --ioengine=libaio|io_uring --rw=randread --bs=4k --iodepth=$IODEPTH --direct=1 --runtime=$RUNTIME --time_based --filename=$FILE --size=$SIZE_BYTES --output-format=json\`; IOPS = jobs[0].read.iops"
	echo "- uio: \`uiofio -backend aio|uring -file $FILE -bs $BS -iodepth $IODEPTH -runtime ${RUNTIME}s -direct=true\`: one Loop, every Done submits the next read at a PCG-random aligned offset; syscalls/op from Loop.Stats over the measured interval"
	echo "- fio's own settings that matter (fio defaults, unchanged above): iodepth_batch_submit=1, so fio submits each I/O as soon as it is queued (one io_submit / io_uring_enter per I/O); iodepth_batch_complete_min=1; libaio userspace_reap=0, so every reap is an io_getevents (about 2 syscalls per I/O in all); fio's io_uring engine sets up its ring with COOP_TASKRUN|SINGLE_ISSUER|DEFER_TASKRUN (as uio does), no SQPOLL, no fixedbufs/registerfiles, hipri=0, nonvectored (IORING_OP_READ); fio keeps a random map so no block repeats within a pass (uio draws offsets with replacement)"
	if [[ $BATCHED == 1 ]]; then
		echo "- batched rows: fio with ${FIO_BATCH_OPTS[*]} (and --userspace_reap=1 for libaio), fio's closest match to uio's one-flush-per-round batching"
	fi
	echo "- CPU us/IO: user + system CPU time per read (fio: its job thread's usr_cpu + sys_cpu; uio: the whole process, from getrusage); less sensitive than IOPS to the shared disk's noise"
	if [[ $errors != 0 ]]; then echo "- WARNING: $errors I/O errors or short reads were reported; see the runs' JSON"; fi
	echo
	cat "$TABLE"
	echo "<!-- fio-bench:end -->"
} >"$WORK/fragment.md"

write_results "$OUT" fio-bench "$WORK/fragment.md"
echo
cat "$TABLE"
echo
log "wrote $OUT"
