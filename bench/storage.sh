#!/usr/bin/env bash
# Direct-I/O files for storage engines (dio) and Pebble on them, next to
# os.File and Pebble's default vfs. ROUNDS (default 5) rounds, each running
# every variant once, so slow drift of the shared disk hits all variants
# alike; medians of the rounds are printed and written into bench/RESULTS.md.
#   WAL: one goroutine appends a record and makes it durable, repeatedly
#        (dio Append+Sync; os.File write + fdatasync), syncs/s; the variants
#        take turns record by record (BenchmarkWALPaired), so the disk's
#        drifting flush latency hits them alike
#   RandRead: 4 KiB random reads of a 256 MiB file at 1 and 32 goroutines
#   Fillseq: Pebble, 16-byte keys in order, 100-byte values, every write
#        synced (db_bench fillseq --sync=true), writes/s
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${ROUNDS:-5}
raw=$(mktemp)
trap 'rm -f "$raw" "$raw.block"' EXIT

dio_cmd="go test -run '^\$' -bench 'WALPaired|RandRead' -benchtime=2000x -count=1 ./dio"
peb_cmd="(cd examples/pebble && go test -run '^\$' -bench Fillseq -benchtime=3000x -count=1 .)"
for r in $(seq "$ROUNDS"); do
	echo "round $r of $ROUNDS" >&2
	eval "$dio_cmd" >>"$raw"
	eval "$peb_cmd" >>"$raw"
done

get() { echo "$1" | awk -v n="$2" '$1 == n { printf "%.0f", $2; f = 1 } END { if (!f) printf "n/a" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b == 0) print "n/a"; else printf "%.2f", a / b }'; }

med() { medians "$raw" "$1" | awk -v n="BenchmarkWALPaired/$2" '$1 == n { printf "%g", $2; f = 1 } END { if (!f) printf "n/a" }'; }
rr=$(medians "$raw" reads/s)
fs=$(medians "$raw" writes/s)
table=$(
	echo "| WAL record + sync (syncs/s) | dio aio | dio uring | os.File O_DIRECT | os.File buffered + fdatasync | dio aio / buffered | dio uring / buffered |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
	for s in 138B 4k 64k; do
		a=$(med dio-aio-syncs/s $s); u=$(med dio-uring-syncs/s $s)
		d=$(med os-direct-syncs/s $s); o=$(med os-buffered-syncs/s $s)
		ra=$(med dio-aio-x-buffered $s); ru=$(med dio-uring-x-buffered $s)
		printf '| %s | %.0f | %.0f | %s | %.0f | %.2f | %.2f |\n' "$s" "$a" "$u" "$(awk -v d="$d" 'BEGIN { if (d == "n/a") print d; else printf "%.0f", d }')" "$o" "$ra" "$ru"
	done
	echo
	echo "| 4 KiB random reads (reads/s) | dio aio | dio uring | os.File O_DIRECT | os.File buffered | dio aio / O_DIRECT | dio uring / O_DIRECT |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
	for g in 1 32; do
		a=$(get "$rr" "BenchmarkRandRead/g$g/dio-aio"); u=$(get "$rr" "BenchmarkRandRead/g$g/dio-uring")
		d=$(get "$rr" "BenchmarkRandRead/g$g/os-direct"); o=$(get "$rr" "BenchmarkRandRead/g$g/os-buffered")
		echo "| $g goroutine(s) | $a | $u | $d | $o | $(ratio "$a" "$d") | $(ratio "$u" "$d") |"
	done
	echo
	echo "| Pebble fillseq, synced WAL (writes/s) | default vfs | dio vfs, aio | dio vfs, uring | aio / default | uring / default |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: |"
	p=$(get "$fs" "BenchmarkFillseq/vfs=default"); a=$(get "$fs" "BenchmarkFillseq/vfs=dio-aio"); u=$(get "$fs" "BenchmarkFillseq/vfs=dio-uring")
	echo "| 16 B keys, 100 B values | $p | $a | $u | $(ratio "$a" "$p") | $(ratio "$u" "$p") |"
)
header="## Direct-I/O files and Pebble (bench/storage.sh)

- date: $(date -u '+%Y-%m-%d %H:%M UTC'); kernel $(uname -r); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc); ext4 on $(findmnt -no SOURCE -T /var/tmp 2>/dev/null || echo '?'); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
- $ROUNDS interleaved rounds of \`$dio_cmd\` and \`$peb_cmd\`; medians of the rounds
- WAL: append a record, then make it durable (dio Append+Sync; os.File WriteAt + fdatasync), the variants taking turns record by record (BenchmarkWALPaired); the ratios are each round's own, then the median; 138 B is Pebble's WAL record for a 16 B key and 100 B value (unaligned, so dio pads the tail block); O_DIRECT os.File cannot write 138 B records
- more detail, earlier runs and the analysis of Sync's cost: dio/BENCH.md and examples/pebble/BENCH.md"
echo "$header"; echo; echo "$table"
printf '<!-- storage-bench:begin -->\n%s\n\n%s\n<!-- storage-bench:end -->\n' "$header" "$table" >"$raw.block"
write_results bench/RESULTS.md storage-bench "$raw.block"
