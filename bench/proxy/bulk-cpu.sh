#!/usr/bin/env bash
# CPU per byte of one bulk stream through uioproxy, copying or with
# -splice, on both backends: what run.sh's bulk cell does not show (it
# reports MB/s, which the load side bounds here). Each variant forwards one
# stream from bench/proxy/loadgen (-mode bulk) to the Go echo upstream for
# SECONDS; the proxy is pinned to the last CPU, the load and the upstream to
# CPU 0. ROUNDS interleaved rounds, so drift hits every variant alike; the
# table has medians of MB/s and of the proxy's CPU seconds (utime+stime of
# all its threads, from /proc/PID/stat) per GB forwarded.
#
# Usage: bench/proxy/bulk-cpu.sh      (ROUNDS=5 SECONDS_PER=4 by default)
#   VARIANTS='name a:flags;name b:flags' replaces the four variants, for
#   example VARIANTS='uring 64k:-backend uring -buffer 64k;uring 256k:-backend uring -buffer 256k'
#   (each name is two words: the table matches them)
#   STREAMS=N runs N bulk streams at once instead of one
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=${ROUNDS:-5}
SECONDS_PER=${SECONDS_PER:-4}
STREAMS=${STREAMS:-1}
if [[ -n ${VARIANTS:-} ]]; then
	IFS=';' read -r -a VARIANTS <<<"$VARIANTS"
else
	VARIANTS=("uring copy:-backend uring" "uring splice:-backend uring -splice" "aio copy:-backend aio" "aio splice:-backend aio -splice")
fi
# shellcheck source=bench/proxy/tools.sh
. "$HERE/tools.sh"
cd "$ROOT"
last=$(($(nproc) - 1))
taskset -c 0 "$WORK/echoserver" -listen 127.0.0.1:29810 -max-time 3600s >/dev/null 2>&1 &
pids+=($!)
sleep 0.3

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for r in $(seq "$ROUNDS"); do
	for v in "${VARIANTS[@]}"; do
		name=${v%%:*} args=${v#*:}
		# shellcheck disable=SC2086 # args is a word list
		taskset -c "$last" "$WORK/uioproxy" -loops 1 -log-level warn $args 29811:127.0.0.1:29810 >"$WORK/proxy.log" 2>&1 &
		p=$!
		sleep 0.4
		t0=$(ticks "$p")
		out=$(taskset -c 0 timeout $((SECONDS_PER + 20)) "$WORK/loadgen" -mode bulk -addr 127.0.0.1:29811 -conns "$STREAMS" -duration "${SECONDS_PER}s")
		t1=$(ticks "$p")
		kill "$p"
		wait "$p" 2>/dev/null || true
		mbs=$(sed -n 's/.*"mb_per_s":\([0-9.]*\).*/\1/p' <<<"$out")
		bytes=$(sed -n 's/.*"bytes":\([0-9]*\).*/\1/p' <<<"$out")
		echo "$name $mbs $(awk -v t=$((t1 - t0)) -v b="$bytes" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz / (b / 1e9) }')" >>"$WORK/raw"
		echo "round $r: $name ${mbs%.*} MB/s" >&2
	done
done

med() { sort -g | awk '{a[++k] = $1} END {print (k % 2) ? a[(k+1)/2] : (a[k/2] + a[k/2+1]) / 2}'; }
echo "| variant ($STREAMS stream(s), $ROUNDS rounds of ${SECONDS_PER} s) | MB/s | proxy CPU s per GB |"
echo "| --- | ---: | ---: |"
for v in "${VARIANTS[@]}"; do
	name=${v%%:*}
	m=$(awk -v n="$name" '$1 " " $2 == n {print $3}' "$WORK/raw" | med)
	c=$(awk -v n="$name" '$1 " " $2 == n {print $4}' "$WORK/raw" | med)
	printf '| %s | %.0f | %s |\n' "$name" "$m" "$c"
done
