#!/usr/bin/env bash
# Engine benchmarks, side by side in one run, as median tables:
#   1. one 64-byte message (send + recv over a socketpair) through the loop
#      at batch sizes 1..256, both backends, vs plain write(2)+read(2);
#   2. AIO completions reaped from the ring in userspace vs io_getevents;
#   3. one goroutine's Do of a cached 4 KiB read (direct, and handed to the
#      loop with NoDirect) vs pread(2), and 4/32 goroutines' Do sharing rounds,
#      in COUNT rounds that each run every variant once.
# Prints the tables and writes them into bench/RESULTS.md between markers.
# COUNT (default 7) runs of each benchmark; the median is reported.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-7}
source bench/lib.sh # medians, write_results
raw=$(mktemp); trap 'rm -f "$raw"' EXIT

cmd1="go test -run '^\$' -bench 'LoopSocket|PlainSyscalls' -benchtime=20000x -count=$COUNT ."
cmd2="go test -run '^\$' -bench 'Reap' -count=$COUNT ./aio"
# The Do table's rows differ by tens of ns, less than this shared machine
# drifts in a minute: COUNT rounds of one run each, so drift hits all alike.
cmd3="go test -run '^\$' -bench 'DoRead|PlainPread|DoParallel' -benchtime=1s -count=1 ."
eval "$cmd1" >"$raw"
eval "$cmd2" >>"$raw"
for _ in $(seq "$COUNT"); do eval "$cmd3" >>"$raw"; done

# median of the named metric for each benchmark name
ns=$(medians "$raw" ns/msg); sys=$(medians "$raw" syscalls/msg); reap=$(medians "$raw" ns/event-reap)
op=$(medians "$raw" ns/op); par=$(medians "$raw" ns/read); parsys=$(medians "$raw" syscalls/read)
get() { echo "$1" | awk -v n="$2" '$1 == n { print $2 }'; }

table=$(
	echo "| batch | write+read ns/msg | aio ns/msg | aio / plain | aio syscalls/msg | uring ns/msg | uring / plain | uring syscalls/msg |"
	echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
	for b in 1 4 16 64 256; do
		p=$(get "$ns" "BenchmarkPlainSyscalls/batch=$b")
		a=$(get "$ns" "BenchmarkLoopSocket/backend=aio/batch=$b")
		u=$(get "$ns" "BenchmarkLoopSocket/backend=uring/batch=$b")
		as=$(get "$sys" "BenchmarkLoopSocket/backend=aio/batch=$b")
		us=$(get "$sys" "BenchmarkLoopSocket/backend=uring/batch=$b")
		awk -v b="$b" -v p="$p" -v a="$a" -v u="$u" -v as="$as" -v us="$us" 'BEGIN {
			printf "| %d | %.0f | %.0f | %.2f | %.4f | %.0f | %.2f | %.4f |\n", b, p, a, a/p, as, u, u/p, us }'
	done
	echo
	echo "| AIO reaping | ns per event (median) |"
	echo "| --- | ---: |"
	echo "| userspace, from the mmapped ring | $(get "$reap" BenchmarkReapUser) |"
	echo "| io_getevents(min 0), 64 events per call | $(get "$reap" BenchmarkReapGetevents) |"
	echo
	pr=$(get "$op" BenchmarkPlainPread)
	echo "| one goroutine, cached 4 KiB read | ns/op (median) | ratio to pread |"
	echo "| --- | ---: | ---: |"
	echo "| pread(2) | $pr | 1.00 |"
	for b in aio uring; do
		for m in direct loop; do
			v=$(get "$op" "BenchmarkDoRead/backend=$b/mode=$m")
			awk -v b="$b" -v m="$m" -v v="$v" -v p="$pr" 'BEGIN { printf "| Do, %s, %s | %.0f | %.2f |\n", b, m, v, v/p }'
		done
	done
	echo
	echo "| goroutines doing Do of cached 4 KiB reads | aio ns/read | aio syscalls/read | uring ns/read | uring syscalls/read |"
	echo "| ---: | ---: | ---: | ---: | ---: |"
	for g in 4 32; do
		echo "| $g | $(get "$par" "BenchmarkDoParallel/backend=aio/goroutines=$g") | $(get "$parsys" "BenchmarkDoParallel/backend=aio/goroutines=$g") | $(get "$par" "BenchmarkDoParallel/backend=uring/goroutines=$g") | $(get "$parsys" "BenchmarkDoParallel/backend=uring/goroutines=$g") |"
	done
)
load=$(cut -d' ' -f1-3 /proc/loadavg)
header="## Engine: per message through the loop vs plain syscalls (bench/engine.sh)

- date: $(date -u '+%Y-%m-%d %H:%M UTC'); kernel $(uname -r); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc); load average at the end: $load
- commands: \`$cmd1\`, \`$cmd2\` (median of $COUNT runs each) and $COUNT interleaved rounds of \`$cmd3\` (median of the rounds)
- Do "direct": the lone caller's read is one pread on its own goroutine (the default); "loop": Config.NoDirect, handed to the loop's thread and back
- a message is one 64-byte send on one end of a socketpair plus the recv on the other; at batch N, N socketpairs move in lock step, so each flush carries 2N ops
- syscalls/msg is from the engine's counters (the strace test shows they equal strace's)"
echo "$header"; echo; echo "$table"

block=$(mktemp)
printf '<!-- engine-bench:begin -->\n%s\n\n%s\n<!-- engine-bench:end -->\n' "$header" "$table" >"$block"
write_results bench/RESULTS.md engine-bench "$block"
rm -f "$block"
