#!/usr/bin/env bash
# Where a proxy's CPU per request goes: HAProxy and uioproxy on both
# backends under the echo cell of run.sh (64-byte request/response on
# CONNS connections), each profiled with perf (cpu-clock samples of the
# proxy process, no call graphs) and the samples turned into CPU
# microseconds per request by kind of work. run.sh says how much CPU each
# proxy spends per request; this says which part of it a proxy can still
# save: the kernel's TCP/IP work is the same for every proxy that makes a
# recv and a send per message, whatever interface drives it.
#
# The proxy is pinned to the last CPU, the load generator and the Go echo
# upstream to CPU 0, one worker/loop each, as in run.sh. ROUNDS interleaved
# rounds; the table has the median of each row over the rounds (so the
# rows need not add up to the total's median exactly). The first rows give
# the request rate under perf and the host's steal time on the proxy's CPU,
# which is how a noisy round shows.
#
# Usage: bench/proxy/cpu-profile.sh   (CONNS=64 ROUNDS=3 SECONDS_PER=4 FREQ=2999)
#   PROXIES="haproxy uioproxy-aio uioproxy-uring" (the default) or a subset
# Needs perf (apt-get install linux-perf) and, for its row, haproxy.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
SECONDS_PER=${SECONDS_PER:-4}
FREQ=${FREQ:-2999}
read -r -a PROXIES <<<"${PROXIES:-haproxy uioproxy-aio uioproxy-uring}"
if ! command -v perf >/dev/null; then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
	fi
	command -v perf >/dev/null || { echo "cpu-profile.sh: needs perf (apt-get install linux-perf)" >&2; exit 2; }
fi
# shellcheck source=bench/proxy/tools.sh
. "$HERE/tools.sh"
cd "$ROOT"
if (($(nproc) < 2)); then
	echo "cpu-profile.sh: needs 2 CPUs or more (the proxy gets one, the load the others)" >&2
	exit 2
fi
last=$(($(nproc) - 1))
taskset -c 0 "$WORK/echoserver" -listen 127.0.0.1:29820 -max-time 3600s >/dev/null 2>&1 &
pids+=($!)
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen forward
    bind 127.0.0.1:29821
    server upstream 127.0.0.1:29820
EOF
sleep 0.3

# categorize REQUESTS: perf report's "samples dso [k]|[.] symbol" lines as
# CPU µs per request by kind of work.
categorize() {
	awk -v req="$1" -v freq="$FREQ" '
	{
		n = $1; sym = $NF
		if ($3 != "[k]") c = (sym ~ /^(runtime|internal)[.\/]/) ? "5 user: Go runtime" : "4 user: proxy code"
		else if (sym ~ /spin_lock_slowpath|pv_native_safe_halt|pv_wait|pv_kick/) c = "7 waiting for a lock held by the other CPU"
		else if (sym ~ /finish_task_switch|^__?schedule|switch_to|switch_mm|pick_next|_task_fair|try_to_wake_up|ttwu|update_curr|psi_|dequeue|enqueue|hrtimer|do_nanosleep|futex/) c = "6 sleeping and waking (scheduler, timers, futex)"
		else if (sym ~ /^_*io_|io_uring|^_*aio_|iocb|kiocb|^ep_|epoll|sock_poll|tcp_poll|poll_/) c = "2 readiness and completion interface (epoll, AIO, io_uring)"
		else if (sym ~ /entry_SYSCALL|do_syscall|syscall_exit|exit_to_user|^__x64_sys_|fdget|^fget|^fput|^__fget|^__fput/) c = "3 syscall entry and exit, fd lookup"
		else c = "1 kernel TCP/IP, sockets, copies, memory"
		s[c] += n; t += n
	}
	END {
		for (c in s) printf "%s\t%.3f\n", c, s[c] * 1e6 / freq / req
		printf "9 total\t%.3f\n", t * 1e6 / freq / req
	}'
}

# steal: ticks the hypervisor ran something else on the proxy's CPU. The
# shared machines this runs on lose up to half a CPU to their neighbours
# at times, and a round with much steal shows it here.
hz=$(getconf CLK_TCK)
steal() { awk -v c="cpu$last" '$1 == c {print $9}' /proc/stat; }

start_proxy() {
	case $1 in
	haproxy) taskset -c "$last" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/proxy.log" 2>&1 & ;;
	uioproxy-aio | uioproxy-uring)
		taskset -c "$last" "$WORK/uioproxy" -backend "${1#uioproxy-}" -loops 1 -log-level warn 29821:127.0.0.1:29820 >"$WORK/proxy.log" 2>&1 &
		;;
	*) echo "cpu-profile.sh: unknown proxy $1" >&2; exit 2 ;;
	esac
	p=$!
	pids+=("$p")
}

: >"$WORK/raw"
for r in $(seq "$ROUNDS"); do
	for name in "${PROXIES[@]}"; do
		if [[ $name == haproxy ]] && ! command -v haproxy >/dev/null; then continue; fi
		start_proxy "$name"
		sleep 0.5
		# Warm up, then profile exactly the measured run.
		taskset -c 0 "$WORK/loadgen" -mode echo -addr 127.0.0.1:29821 -conns "$CONNS" -duration 1s >/dev/null
		rm -f "$WORK/perf.data"
		perf record -q -F "$FREQ" -e cpu-clock -p "$p" -o "$WORK/perf.data" 2>"$WORK/perf.log" &
		perfpid=$!
		sleep 0.3 # perf attached
		st0=$(steal) w0=$(date +%s%N)
		out=$(taskset -c 0 timeout $((SECONDS_PER + 20)) "$WORK/loadgen" -mode echo -addr 127.0.0.1:29821 -conns "$CONNS" -duration "${SECONDS_PER}s")
		st1=$(steal) w1=$(date +%s%N)
		kill -INT "$perfpid"
		wait "$perfpid" || true
		kill "$p"
		wait "$p" 2>/dev/null || true
		if [[ ! -s $WORK/perf.data ]]; then
			echo "cpu-profile.sh: perf record of $name wrote nothing:" >&2
			cat "$WORK/perf.log" >&2
			exit 1
		fi
		req=$(sed -n 's/.*"requests":\([0-9]*\).*/\1/p' <<<"$out")
		if ((${req:-0} == 0)); then
			echo "round $r: $name served no requests, left out: $out" >&2
			continue
		fi
		perf report -i "$WORK/perf.data" --no-children --sort dso,sym -F sample,dso,sym -q -g none 2>/dev/null |
			categorize "$req" | sed "s/^/$name\t/" >>"$WORK/raw"
		secs=$(awk -v ns=$((w1 - w0)) 'BEGIN { printf "%.3f", ns / 1e9 }')
		rps=$(awk -v x="$(sed -n 's/.*"rps":\([0-9.]*\).*/\1/p' <<<"$out")" 'BEGIN { printf "%.0f", x }')
		stealpct=$(awk -v d=$((st1 - st0)) -v hz="$hz" -v s="$secs" 'BEGIN { printf "%.1f", 100 * d / hz / s }')
		printf '%s\t0 requests per second under perf\t%s\n' "$name" "$rps" >>"$WORK/raw"
		printf '%s\t0s host steal on the proxy CPU, %% of the run\t%s\n' "$name" "$stealpct" >>"$WORK/raw"
		echo "round $r: $name $rps req/s, steal $stealpct%, $(awk -F'\t' -v n="$name" '$1 == n && $2 == "9 total" {v = $3} END {print v}' "$WORK/raw") µs/req" >&2
	done
done

med() { sort -g | awk '{a[++k] = $1} END {if (k) print (k % 2) ? a[(k+1)/2] : (a[k/2] + a[k/2+1]) / 2}'; }
printf '| CPU µs per request, echo x%s (%s rounds of %s s, perf -F %s) |' "$CONNS" "$ROUNDS" "$SECONDS_PER" "$FREQ"
for name in "${PROXIES[@]}"; do printf ' %s |' "$name"; done
echo
printf '| --- |'
for _ in "${PROXIES[@]}"; do printf ' ---: |'; done
echo
cut -f2 "$WORK/raw" | sort -u | while read -r -d $'\n' cat; do
	printf '| %s |' "${cat#* }"
	for name in "${PROXIES[@]}"; do
		v=$(awk -F'\t' -v n="$name" -v c="$cat" '$1 == n && $2 == c {print $3}' "$WORK/raw" | med)
		# No sample of that kind: 0; no round of that proxy at all: -.
		if [[ -z $v ]]; then v=0; grep -q "^$name	" "$WORK/raw" || v=-; fi
		printf ' %s |' "$v"
	done
	echo
done
