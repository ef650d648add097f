#!/usr/bin/env bash
# TCP proxy benchmark: uioproxy (aio and uring) next to HAProxy (mode tcp,
# splice-auto), nginx stream, socat and a plain Go io.Copy proxy, all on
# loopback in front of one Go echo upstream, all driven by one load
# generator of ours (bench/proxy/loadgen). The measurement runs in ROUNDS
# interleaved rounds: each round starts, measures (every cell) and stops
# every proxy in turn, in the same order, so drift of the machine is spread
# over all contenders instead of landing on one; the table shows, per cell
# and metric, the median over the rounds. Then, in the same round, the idle
# cells: for each N of IDLE_CONNS a fresh process of each of IDLE_PROXIES
# gets N connections that each do one 64-byte echo and stay open and
# silent, while 16 active connections echo; a second table shows how many
# idle connections were served, the active req/s and p99, and the proxy's
# RSS per idle connection. A third table gives the lowest and highest round
# of the headline cells, so a reader can see what the medians leave out
# (this machine is shared, and a 5 s cell moves by 30%). Prints the tables
# and writes them into
# bench/RESULTS.md between the proxy-bench markers.
#
# Usage: bench/proxy/run.sh            (5 s per cell, 3 rounds, about 20 minutes)
#        QUICK=1 bench/proxy/run.sh    (1 s per cell, 3 rounds, about 8 minutes)
#
# Environment (all optional):
#   ROUNDS=N           interleaved rounds, medians reported (default 3)
#   QUICK=1            1 s cells and a 1 s strace run
#   CELL_SECONDS=N     seconds per measurement cell (default 5, QUICK 1)
#   STRACE_SECONDS=N   seconds of the extra echo x64 run under strace (default 2,
#                      QUICK 1); once per proxy, in the last round
#   PROXIES="..."      subset/order of: direct haproxy nginx socat iocopy uioproxy-aio uioproxy-uring
#                      uioproxy-aio-splice uioproxy-uring-splice
#   IDLE_PROXIES="..." which of PROXIES also run the idle cells (default: haproxy nginx
#                      uioproxy-aio uioproxy-uring; "" = none)
#   IDLE_CONNS="..."   idle connections per idle cell (default: 0 1000 4000 9000)
#   UIOPROXY=path      uioproxy binary (default: <repo>/bin/uioproxy; rows say n/a if missing)
#   PIN=0              do not pin; by default the proxy gets the last CPU and the
#                      load generator plus echo upstream the others, so every
#                      proxy is measured on exactly one core and none competes
#                      with the load it serves
#   BASE_PORT=N        first loopback port used (default 19000)
#   RESULTS=path       file to write (default <repo>/bench/RESULTS.md)
#   NO_INSTALL=1       never call apt-get; missing peers become n/a rows
#
# Every run stops by itself: each load generator call has a -duration and a
# timeout(1) bound, every proxy runs under timeout(1) as well, and the EXIT
# trap kills every process this script started (and their children). A
# proxy that stops serving in an idle cell shows as figures: the load
# generator stops opening idle connections at the first one whose dial or
# echo fails (5 s each), reports how many it got, and the active echoes,
# which then time out, count 0 req/s.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

# The exact command, with the knobs that were set, for RESULTS.md.
COMMAND_LINE=""
for v in ROUNDS QUICK CELL_SECONDS STRACE_SECONDS PROXIES IDLE_PROXIES IDLE_CONNS UIOPROXY PIN BASE_PORT NO_INSTALL; do
	if [[ -n ${!v+x} ]]; then COMMAND_LINE+="$v=${!v} "; fi
done
COMMAND_LINE+="bench/proxy/run.sh"

if [[ ${QUICK:-0} == 1 ]]; then
	CELL_SECONDS=${CELL_SECONDS:-1}
	STRACE_SECONDS=${STRACE_SECONDS:-1}
else
	CELL_SECONDS=${CELL_SECONDS:-5}
	STRACE_SECONDS=${STRACE_SECONDS:-2}
fi
ROUNDS=${ROUNDS:-3}
if ! [[ $ROUNDS =~ ^[1-9][0-9]*$ ]]; then
	echo "run.sh: ROUNDS must be a positive integer, not '$ROUNDS'" >&2
	exit 2
fi
PROXIES=${PROXIES:-"direct haproxy nginx socat iocopy uioproxy-aio uioproxy-uring uioproxy-aio-splice uioproxy-uring-splice"}
UIOPROXY=${UIOPROXY:-$ROOT/bin/uioproxy}
BASE_PORT=${BASE_PORT:-19000}
RESULTS=${RESULTS:-$ROOT/bench/RESULTS.md}
PIN=${PIN:-1}
ECHO_CONNS=(1 64 512)
BULK_STREAMS=(1 8)
CONNECT_WORKERS=8
IDLE_ACTIVE=16 # active echo connections beside the idle ones
# The idle connections come from 127.0.0.2-9: with the proxy's own
# connections to the upstream (from 127.0.0.1) and the TIME_WAITs of earlier
# cells, one source address could run out of ephemeral ports.
IDLE_SOURCES=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9
IDLE_PROXIES=${IDLE_PROXIES-"haproxy nginx uioproxy-aio uioproxy-uring"}
IDLE_CONNS=${IDLE_CONNS:-"0 1000 4000 9000"}
read -r -a IDLE_LIST <<<"$IDLE_CONNS"
for n in "${IDLE_LIST[@]}"; do
	if ! [[ $n =~ ^[0-9]+$ ]] || ((n > 9900)); then
		echo "run.sh: IDLE_CONNS: '$n' is not a count of 0..9900 (each idle connection takes two of the proxy's 20,000 descriptors)" >&2
		exit 2
	fi
done
UPSTREAM_PORT=$BASE_PORT
# Upper bounds on the processes we start, from the worst case of one proxy's
# cells in one round (each may add 10 s of dial and op timeouts); the trap
# normally ends them long before. A proxy lives for one round only (in an
# idle cell, for that cell only); the echo upstream for all rounds.
IDLE_CELL_SECONDS=$((CELL_SECONDS + 60)) # warm-up, opening up to 9,900 connections, a stall's 5 s timeouts
PER_PROXY_SECONDS=$((6 * (CELL_SECONDS + 10) + STRACE_SECONDS + 15))
MAX_PROXY_SECONDS=$((PER_PROXY_SECONDS + 60))
read -r -a PROXY_LIST <<<"$PROXIES"
read -r -a IDLE_PROXY_LIST <<<"$IDLE_PROXIES"
MAX_RUN_SECONDS=$((ROUNDS * (${#PROXY_LIST[@]} * PER_PROXY_SECONDS + ${#IDLE_PROXY_LIST[@]} * ${#IDLE_LIST[@]} * (IDLE_CELL_SECONDS + 15)) + 60))

NCPU=$(nproc)
if [[ $PIN == 1 && $NCPU -ge 2 ]]; then
	PROXY_CPUS=$((NCPU - 1))
	LOAD_CPUS=0
	if ((NCPU > 2)); then LOAD_CPUS="0-$((NCPU - 2))"; fi
	PROXY_WORKERS=1
	PIN_NOTE="proxy pinned to CPU $PROXY_CPUS with 1 worker/thread/loop; load generator and echo upstream on CPU $LOAD_CPUS"
else
	PROXY_CPUS="0-$((NCPU - 1))"
	LOAD_CPUS=$PROXY_CPUS
	PROXY_WORKERS=$NCPU
	PIN_NOTE="not pinned; proxies use $NCPU workers and share all CPUs with the load generator"
fi

log() { printf '%s\n' "run.sh: $*" >&2; }

WORK=$(mktemp -d /tmp/proxy-bench.XXXXXX)
STARTED_PIDS=()

# descendants PID: PID and all its descendants, parents first.
descendants() {
	local pid=$1 child
	echo "$pid"
	for child in $(pgrep -P "$pid" 2>/dev/null || true); do
		descendants "$child"
	done
}

# kill_tree PID: TERM the process and its descendants, then KILL stragglers.
kill_tree() {
	local pids p
	pids=$(descendants "$1")
	for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		local alive=0
		for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
		[[ $alive == 0 ]] && break
		sleep 0.1
	done
	for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
	wait "$1" 2>/dev/null || true
}

# forget PID: drop a reaped PID from STARTED_PIDS, so that the EXIT trap
# never signals a PID the system may have handed out again since.
forget() {
	local p keep=()
	for p in "${STARTED_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	STARTED_PIDS=("${keep[@]}")
}

# stop PID: kill_tree PID (which reaps it), then forget it.
stop() {
	kill_tree "$1"
	forget "$1"
}

cleanup() {
	local pid
	for pid in "${STARTED_PIDS[@]}"; do kill_tree "$pid"; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- dependencies ------------------------------------------------------------

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh" # apt_install, write_results, medians

NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
[[ -f $NGINX_STREAM_MODULE ]] || need+=(libnginx-mod-stream)
command -v socat >/dev/null || need+=(socat)
command -v pgrep >/dev/null || need+=(procps)
command -v strace >/dev/null || need+=(strace)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	apt_install "${need[@]}" || log "could not install ${need[*]}; their rows will say n/a"
fi
command -v pgrep >/dev/null || { log "pgrep (procps) is required to find proxy processes"; exit 1; }

# --- our Go tools --------------------------------------------------------------

log "building loadgen, echoserver, iocopy"
mkdir -p "$WORK/bin"
for tool in loadgen echoserver iocopy; do
	(cd "$ROOT" && go build -o "$WORK/bin/$tool" "./bench/proxy/$tool")
done
LOADGEN=$WORK/bin/loadgen

# 512 connections through a proxy need over 1024 descriptors in one process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt 4096 ]]; then
	log "open file limit is $(ulimit -n); 512-connection cells may fail"
fi
# The peers' connection limits, from the descriptors every proxy gets (the
# hard limit: none may raise it, even as root without CAP_SYS_RESOURCE).
# HAProxy refuses to start when maxconn needs more than that: it reserves
# two descriptors per connection and two per splice pipe (maxpipes defaults
# to maxconn/4), so pipes are capped at 256 (the bulk cells use at most 8
# streams) and maxconn takes the rest, less a margin for its listeners.
NOFILE_HARD=$(ulimit -Hn)
[[ $NOFILE_HARD == unlimited ]] && NOFILE_HARD=1048576
HAPROXY_MAXPIPES=256
HAPROXY_MAXCONN=$(((NOFILE_HARD - 2 * HAPROXY_MAXPIPES - 100) / 2))
for n in "${IDLE_LIST[@]}"; do
	if ((n + IDLE_ACTIVE > HAPROXY_MAXCONN)); then
		log "IDLE_CONNS $n: more than the $HAPROXY_MAXCONN connections a $NOFILE_HARD-descriptor limit allows HAProxy"
	fi
done

# wait_port PORT: wait until something accepts on 127.0.0.1:PORT (5 s at most).
wait_port() {
	local i
	for i in $(seq 50); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	return 1
}

# start NAME CMD...: start CMD on the proxy CPUs (load CPUs for the upstream),
# bounded by timeout(1), logging to $WORK/NAME.log; sets STARTED_PID.
start() {
	local name=$1 cpus=$PROXY_CPUS bound=$MAX_PROXY_SECONDS
	shift
	if [[ $name == echoserver ]]; then
		cpus=$LOAD_CPUS
		bound=$MAX_RUN_SECONDS
	fi
	timeout -s TERM "$bound" taskset -c "$cpus" "$@" >"$WORK/$name.log" 2>&1 &
	STARTED_PID=$!
	STARTED_PIDS+=("$STARTED_PID")
}

start echoserver "$WORK/bin/echoserver" -listen "127.0.0.1:$UPSTREAM_PORT" -max-time "${MAX_RUN_SECONDS}s"
wait_port "$UPSTREAM_PORT" || { log "echo upstream did not start:"; cat "$WORK/echoserver.log" >&2; exit 1; }

# --- the proxies ---------------------------------------------------------------

# start_proxy NAME PORT: start proxy NAME listening on PORT and forwarding to
# the upstream. Sets PROXY_PID, or returns 1 with NA_REASON set.
start_proxy() {
	local name=$1 port=$2 dir=$WORK/$1
	mkdir -p "$dir"
	NA_REASON=""
	case $name in
	haproxy)
		command -v haproxy >/dev/null || { NA_REASON="n/a (not installed)"; return 1; }
		cat >"$dir/haproxy.cfg" <<-EOF
			global
			    nbthread $PROXY_WORKERS
			    maxconn $HAPROXY_MAXCONN
			    maxpipes $HAPROXY_MAXPIPES
			defaults
			    mode tcp
			    option splice-auto
			    timeout connect 5s
			    timeout client 60s
			    timeout server 60s
			listen forward
			    bind 127.0.0.1:$port
			    server upstream 127.0.0.1:$UPSTREAM_PORT
		EOF
		start "$name" haproxy -db -f "$dir/haproxy.cfg"
		;;
	nginx)
		command -v nginx >/dev/null && [[ -f $NGINX_STREAM_MODULE ]] || { NA_REASON="n/a (not installed)"; return 1; }
		cat >"$dir/nginx.conf" <<-EOF
			load_module $NGINX_STREAM_MODULE;
			daemon off;
			master_process on;
			worker_processes $PROXY_WORKERS;
			worker_rlimit_nofile $NOFILE_HARD;
			pid $dir/nginx.pid;
			error_log $dir/error.log warn;
			events { worker_connections 20480; }
			stream {
			    server {
			        listen 127.0.0.1:$port backlog=4096;
			        proxy_pass 127.0.0.1:$UPSTREAM_PORT;
			        proxy_connect_timeout 5s;
			        proxy_timeout 60s;
			    }
			}
		EOF
		start "$name" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
		;;
	socat)
		command -v socat >/dev/null || { NA_REASON="n/a (not installed)"; return 1; }
		# socat's default listen backlog is 5, which drops SYNs at 512
		# connections; nodelay matches what haproxy and nginx do.
		start "$name" socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr,backlog=4096,nodelay" "TCP:127.0.0.1:$UPSTREAM_PORT,nodelay"
		;;
	iocopy)
		start "$name" "$WORK/bin/iocopy" -listen "127.0.0.1:$port" -target "127.0.0.1:$UPSTREAM_PORT" -max-time "${MAX_PROXY_SECONDS}s"
		;;
	uioproxy-aio | uioproxy-uring)
		[[ -x $UIOPROXY ]] || { NA_REASON="n/a (not built)"; return 1; }
		start "$name" "$UIOPROXY" -backend "${name#uioproxy-}" -loops "$PROXY_WORKERS" -log-level warn "127.0.0.1:$port:127.0.0.1:$UPSTREAM_PORT"
		;;
	uioproxy-aio-splice | uioproxy-uring-splice)
		[[ -x $UIOPROXY ]] || { NA_REASON="n/a (not built)"; return 1; }
		b=${name#uioproxy-}
		start "$name" "$UIOPROXY" -backend "${b%-splice}" -splice -loops "$PROXY_WORKERS" -log-level warn "127.0.0.1:$port:127.0.0.1:$UPSTREAM_PORT"
		;;
	*)
		log "unknown proxy $name in PROXIES"
		NA_REASON="n/a (unknown)"
		return 1
		;;
	esac
	PROXY_PID=$STARTED_PID
	if ! wait_port "$port"; then
		NA_REASON="n/a (did not start)"
		log "$name did not start; its log:"
		tail -n 20 "$WORK/$name.log" >&2 || true
		stop "$PROXY_PID"
		return 1
	fi
}

# cpu_ticks PID: utime+stime+cutime+cstime summed over PID and descendants.
# cutime/cstime carry the time of children already reaped (socat's
# per-connection forks), so a delta over a cell counts every process.
cpu_ticks() {
	local total=0 p stat rest
	for p in $(descendants "$1"); do
		stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		rest=${stat##*) } # fields from 3 on; comm may contain spaces
		read -r -a f <<<"$rest"
		total=$((total + f[11] + f[12] + f[13] + f[14]))
	done
	echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# steal_ticks: the steal time (ticks the hypervisor gave this VM's CPU to
# someone else) of the proxy's CPUs, from /proc/stat. On a shared host it
# is how a slow round shows.
# PROXY_CPU_NAMES: the /proc/stat rows (cpu1, ...) of the CPUs in PROXY_CPUS.
read -r -a PROXY_CPU_NAMES <<<"$(awk -v l="$PROXY_CPUS" 'BEGIN { k = split(l, p, ","); for (i = 1; i <= k; i++) { if (split(p[i], r, "-") == 2) { for (c = r[1]; c <= r[2]; c++) printf "cpu%d ", c } else printf "cpu%d ", p[i] } }')"
PROXY_NCPU=${#PROXY_CPU_NAMES[@]}
steal_ticks() {
	awk -v l="${PROXY_CPU_NAMES[*]}" 'BEGIN { k = split(l, n, " "); for (i = 1; i <= k; i++) want[n[i]] = 1 }
		$1 in want { t += $9 } END { print t + 0 }' /proc/stat
}

# json FILE KEY: a numeric or string field of loadgen's one-line JSON.
json() {
	sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" "$1" | head -n 1
}

# run_loadgen OUTFILE ARGS...: one bounded load generator run on the load
# CPUs (LOADGEN_BOUND seconds at most, if set).
run_loadgen() {
	local out=$1
	shift
	timeout -s KILL "${LOADGEN_BOUND:-$((CELL_SECONDS + STRACE_SECONDS + 30))}" taskset -c "$LOAD_CPUS" "$LOADGEN" "$@" >"$out" 2>>"$WORK/loadgen.err" || true
	[[ -s $out ]] || echo '{"errors":1,"first_error":"loadgen produced no result"}' >"$out"
}

ERROR_NOTES=()
note_errors() { # note_errors PROXY CELL FILE
	local n
	n=$(json "$3" errors)
	if [[ -n $n && $n != 0 ]]; then
		ERROR_NOTES+=("$1 $2: $n errors, first: $(json "$3" first_error)")
	fi
}

# record FILE KEY VALUE: append one round's VALUE of metric KEY to FILE, in
# the go test -bench form that lib.sh's medians reads; no value (a missing
# JSON field, "-") is left out of the median.
record() {
	[[ $3 =~ ^[0-9.eE+-]+$ ]] || return 0
	printf 'Benchmark%s 1 %s v\n' "$2" "$3" >>"$1"
}

fmt0() { awk -v x="${1:-}" 'BEGIN { if (x == "") print "-"; else printf "%.0f", x }'; }
fmt1() { awk -v x="${1:-}" 'BEGIN { if (x == "") print "-"; else printf "%.1f", x }'; }

# measure PROXY ROUND ADDR RES VALUES: one round of every cell against ADDR
# (PROXY_PID is the proxy, empty for direct); the loadgen JSON goes to RES,
# one line per metric to VALUES. The strace run is in the last round only.
measure() {
	local proxy=$1 round=$2 addr=$3 res=$4 vals=$5
	local c s t0=0 t1 cpu_per_req sys_per_req f where="round $2" st0 w0
	st0=$(steal_ticks) w0=$(date +%s%N)
	for c in "${ECHO_CONNS[@]}"; do
		f=$res/echo$c.json
		if [[ -n $PROXY_PID ]]; then t0=$(cpu_ticks "$PROXY_PID"); fi
		run_loadgen "$f" -mode echo -addr "$addr" -conns "$c" -duration "${CELL_SECONDS}s" -label "$proxy"
		if [[ -n $PROXY_PID && $c != 1 ]]; then
			t1=$(cpu_ticks "$PROXY_PID")
			cpu_per_req=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$(json "$f" requests)" \
				'BEGIN { if (n > 0) printf "%.3f", d * 1e6 / hz / n; else print "-" }')
			record "$vals" "cpu${c}_us" "$cpu_per_req"
		fi
		note_errors "$proxy" "echo x$c ($where)" "$f"
		record "$vals" "echo${c}_rps" "$(json "$f" rps)"
		record "$vals" "echo${c}_p50" "$(json "$f" p50_us)"
		record "$vals" "echo${c}_p99" "$(json "$f" p99_us)"
	done
	for s in "${BULK_STREAMS[@]}"; do
		f=$res/bulk$s.json
		run_loadgen "$f" -mode bulk -addr "$addr" -conns "$s" -duration "${CELL_SECONDS}s" -label "$proxy"
		note_errors "$proxy" "bulk x$s ($where)" "$f"
		record "$vals" "bulk${s}_mbs" "$(json "$f" mb_per_s)"
	done
	f=$res/connect.json
	run_loadgen "$f" -mode connect -addr "$addr" -conns "$CONNECT_WORKERS" -duration "${CELL_SECONDS}s" -label "$proxy"
	note_errors "$proxy" "connect ($where)" "$f"
	record "$vals" connect_cps "$(json "$f" cps)"
	# The host's steal time on the proxy's CPUs over this round's cells.
	record "$vals" steal_pct "$(awk -v d=$(($(steal_ticks) - st0)) -v hz="$CLK_TCK" -v ns=$(($(date +%s%N) - w0)) -v n="$PROXY_NCPU" \
		'BEGIN { if (ns > 0) printf "%.1f", 100 * d / hz / (ns / 1e9) / n }')"

	if [[ -n $PROXY_PID ]] && ((round == ROUNDS)) && command -v strace >/dev/null; then
		# A separate, shorter echo x64 run under strace: ptrace slows the
		# proxy several times over, so only calls per request is kept. A
		# count, not a timing, so once per proxy is enough.
		local pflags=() p strace_pid calls
		for p in $(descendants "$PROXY_PID"); do
			# Skip the timeout(1) and taskset wrappers: they only wait.
			case $(cat "/proc/$p/comm" 2>/dev/null) in timeout | taskset) continue ;; esac
			pflags+=(-p "$p")
		done
		timeout -s INT $((STRACE_SECONDS + 30)) strace -f -c -o "$res/strace.txt" "${pflags[@]}" 2>>"$WORK/strace.err" &
		strace_pid=$!
		STARTED_PIDS+=("$strace_pid")
		sleep 1 # let strace attach to every thread
		run_loadgen "$res/strace-echo64.json" -mode echo -addr "$addr" -conns 64 -duration "${STRACE_SECONDS}s" -label "$proxy+strace"
		# timeout(1) relays the SIGINT to strace, which detaches and writes
		# its summary.
		kill -INT "$strace_pid" 2>/dev/null || true
		wait "$strace_pid" 2>/dev/null || true
		forget "$strace_pid"
		calls=$(awk '$NF == "total" { print $4 }' "$res/strace.txt" 2>/dev/null)
		sys_per_req=$(awk -v c="${calls:-0}" -v n="$(json "$res/strace-echo64.json" requests)" \
			'BEGIN { if (n > 0 && c > 0) printf "%.2f", c / n; else print "-" }')
		record "$vals" sys_per_req "$sys_per_req"
	fi
}

# measure_idle PROXY ROUND RES VALUES: the idle cells of one round, each
# against a fresh process of PROXY (started on ports from IDLE_PORT up).
measure_idle() {
	local proxy=$1 round=$2 res=$3 vals=$4 n f port rss
	for n in "${IDLE_LIST[@]}"; do
		port=$IDLE_PORT
		IDLE_PORT=$((IDLE_PORT + 1))
		if ! start_proxy "$proxy" "$port"; then
			ERROR_NOTES+=("$proxy idle x$n (round $round): $NA_REASON")
			continue
		fi
		f=$res/idle$n.json
		log "round $round: $proxy with $n idle connections"
		LOADGEN_BOUND=$IDLE_CELL_SECONDS run_loadgen "$f" -mode idle -addr "127.0.0.1:$port" -idle "$n" \
			-conns "$IDLE_ACTIVE" -duration "${CELL_SECONDS}s" -sources "$IDLE_SOURCES" -rss-pids "$PROXY_PID" -label "$proxy"
		stop "$PROXY_PID"
		note_errors "$proxy" "idle x$n (round $round)" "$f"
		if [[ -n $(json "$f" idle_error) ]]; then
			ERROR_NOTES+=("$proxy idle x$n (round $round): $(json "$f" idle_served) of $n idle connections served, then: $(json "$f" idle_error)")
		fi
		record "$vals" "idle${n}_served" "$(json "$f" idle_served)"
		record "$vals" "idle${n}_rps" "$(json "$f" rps)"
		[[ -n $(json "$f" rps) ]] || record "$vals" "idle${n}_rps" 0 # no request answered
		record "$vals" "idle${n}_p99" "$(json "$f" p99_us)"
		rss=$(json "$f" rss_per_idle_b)
		if ((n > 0)); then record "$vals" "idle${n}_rss" "$rss"; fi
	done
}

# The rounds. Proxy number i (in PROXIES order) keeps its files under
# $WORK/results/i-NAME; round r uses port BASE_PORT + (r-1)*#proxies + i, so
# no round ever binds a port a previous round's proxy just released.
declare -A NA=() # proxy number -> "n/a (reason)" once it failed to start
IDLE_PORT=$((BASE_PORT + ROUNDS * ${#PROXY_LIST[@]} + 1)) # the idle cells' ports, one per cell, from here up
for round in $(seq "$ROUNDS"); do
	log "round $round of $ROUNDS (${CELL_SECONDS}s cells)"
	round_start=$SECONDS
	i=0
	for proxy in "${PROXY_LIST[@]}"; do
		i=$((i + 1))
		port=$((BASE_PORT + (round - 1) * ${#PROXY_LIST[@]} + i))
		[[ -z ${NA[$i]:-} ]] || continue # failed in an earlier round: stays n/a
		dir=$WORK/results/$i-$proxy
		mkdir -p "$dir/r$round"
		addr=127.0.0.1:$port
		PROXY_PID=""
		if [[ $proxy == direct ]]; then
			addr=127.0.0.1:$UPSTREAM_PORT
		elif ! start_proxy "$proxy" "$port"; then
			NA[$i]=$NA_REASON
			continue
		fi
		log "round $round: measuring $proxy on $addr"
		measure "$proxy" "$round" "$addr" "$dir/r$round" "$dir/values"
		if [[ -n $PROXY_PID ]]; then stop "$PROXY_PID"; fi
		if [[ " $IDLE_PROXIES " == *" $proxy "* ]]; then
			measure_idle "$proxy" "$round" "$dir/r$round" "$dir/values"
		fi
	done
	log "round $round of $ROUNDS took $((SECONDS - round_start))s"
done

# One row per proxy: per cell and metric, the median over the rounds.
ROWS=()        # tab-separated table rows
IDLE_ROWS=()   # and those of the idle table
SPREAD_ROWS=() # and the lowest and highest round of the headline cells

# spreads VALUES: each metric's lowest and highest per-round value.
spreads() {
	awk '/^Benchmark/ { k = $1; sub(/^Benchmark/, "", k); v = $3
		if (!(k in lo) || v < lo[k]) lo[k] = v
		if (!(k in hi) || v > hi[k]) hi[k] = v }
		END { for (k in lo) print k, lo[k], hi[k] }' "$1"
}
i=0
for proxy in "${PROXY_LIST[@]}"; do
	i=$((i + 1))
	if [[ -n ${NA[$i]:-} ]]; then
		row="$proxy	${NA[$i]}"
		for _ in $(seq 11); do row+="	-"; done
		ROWS+=("$row")
		if [[ " $IDLE_PROXIES " == *" $proxy "* ]]; then IDLE_ROWS+=("$proxy	${NA[$i]}"); fi
		continue
	fi
	declare -A M=()
	if [[ -f $WORK/results/$i-$proxy/values ]]; then
		while read -r k v; do M[${k#Benchmark}]=$v; done < <(medians "$WORK/results/$i-$proxy/values" v)
	fi
	row=$proxy
	[[ $proxy == direct ]] && row="none (direct)"
	for c in "${ECHO_CONNS[@]}"; do
		row+="	$(fmt0 "${M[echo${c}_rps]:-}")	$(fmt0 "${M[echo${c}_p50]:-}")/$(fmt0 "${M[echo${c}_p99]:-}")"
	done
	for s in "${BULK_STREAMS[@]}"; do row+="	$(fmt0 "${M[bulk${s}_mbs]:-}")"; done
	row+="	$(fmt0 "${M[connect_cps]:-}")"
	row+="	$(fmt1 "${M[cpu64_us]:-}")	$(fmt1 "${M[cpu512_us]:-}")"
	row+="	$(awk -v x="${M[sys_per_req]:-}" 'BEGIN { if (x == "") print "-"; else printf "%.2f", x }')"
	ROWS+=("$row")
	if [[ " $IDLE_PROXIES " == *" $proxy "* ]]; then
		row=$proxy
		for n in "${IDLE_LIST[@]}"; do
			if ((n > 0)); then row+="	$(fmt0 "${M[idle${n}_served]:-}")/$n"; fi
			row+="	$(fmt0 "${M[idle${n}_rps]:-}")	$(fmt0 "${M[idle${n}_p99]:-}")"
			if ((n > 0)); then row+="	$(awk -v x="${M[idle${n}_rss]:-}" 'BEGIN { if (x == "") print "-"; else printf "%.1f", x / 1024 }')"; fi
		done
		IDLE_ROWS+=("$row")
	fi
	if ((ROUNDS > 1)); then
		declare -A LO=() HI=()
		if [[ -f $WORK/results/$i-$proxy/values ]]; then
			while read -r k lo hi; do LO[$k]=$lo HI[$k]=$hi; done < <(spreads "$WORK/results/$i-$proxy/values")
		fi
		row=$proxy
		[[ $proxy == direct ]] && row="none (direct)"
		for k in echo64_rps echo512_rps bulk1_mbs connect_cps cpu64_us cpu512_us steal_pct; do
			if [[ -z ${LO[$k]:-} ]]; then row+="	-"; continue; fi
			f=fmt0
			[[ $k == cpu* || $k == steal* ]] && f=fmt1
			row+="	$($f "${LO[$k]}")-$($f "${HI[$k]}")"
		done
		SPREAD_ROWS+=("$row")
		unset LO HI
	fi
	unset M
done

# --- the table -------------------------------------------------------------------

HEADER="proxy	echo x1 req/s	x1 p50/p99 us	echo x64 req/s	x64 p50/p99 us	echo x512 req/s	x512 p50/p99 us	bulk x1 MB/s	bulk x8 MB/s	connect/s	CPU us/req x64	CPU us/req x512	syscalls/req"
# markdown TAB-ROWS...: the tab-separated rows (header first) as a markdown table.
markdown() {
	printf '%s\n' "$@" | awk -F'\t' '
	{ for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } if (NF > nf) nf = NF; rows = NR }
	END {
		for (r = 1; r <= rows; r++) {
			line = "|"
			for (i = 1; i <= nf; i++) line = line sprintf(" %" (i == 1 ? "-" : "") w[i] "s |", cell[r, i])
			print line
			if (r == 1) {
				line = "|"
				for (i = 1; i <= nf; i++) { d = ""; for (k = 0; k < w[i]; k++) d = d "-"; line = line (i == 1 ? " " d " |" : " " substr(d, 2) ": |") }
				print line
			}
		}
	}'
}
TABLE=$(markdown "$HEADER" "${ROWS[@]}")
IDLE_TABLE=""
if ((${#IDLE_ROWS[@]})); then
	IDLE_HEADER="proxy"
	for n in "${IDLE_LIST[@]}"; do
		if ((n == 0)); then
			IDLE_HEADER+="	no idle: req/s	p99 us"
		else
			IDLE_HEADER+="	idle $n: served	req/s	p99 us	RSS KiB/idle"
		fi
	done
	IDLE_TABLE=$(markdown "$IDLE_HEADER" "${IDLE_ROWS[@]}")
fi

SPREAD_TABLE=""
if ((${#SPREAD_ROWS[@]})); then
	SPREAD_TABLE=$(markdown "proxy	echo x64 req/s	echo x512 req/s	bulk x1 MB/s	connect/s	CPU us/req x64	CPU us/req x512	host steal % on the proxy CPU" "${SPREAD_ROWS[@]}")
fi

echo "$TABLE"
if [[ -n $IDLE_TABLE ]]; then
	echo
	echo "$IDLE_TABLE"
fi
if [[ -n $SPREAD_TABLE ]]; then
	echo
	echo "$SPREAD_TABLE"
fi
log "$ROUNDS rounds, interleaved; medians; took ${SECONDS}s"
for n in "${ERROR_NOTES[@]}"; do echo "note: $n"; done

CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
BLOCK=$WORK/block.md
{
	echo "<!-- proxy-bench:begin -->"
	echo "## TCP proxy benchmark (bench/proxy/run.sh)"
	echo
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "- kernel: $(uname -sr); CPU: ${CPU_MODEL:-unknown} x $NCPU"
	echo "- command: \`$COMMAND_LINE\`"
	echo "- $ROUNDS rounds, interleaved; medians: each round starts, measures every cell and stops each proxy in turn, in the order of the table, so drift of the machine spreads over all of them; every number is the median over the rounds of that cell's per-round value, each metric on its own (p50 and p99 are medians of the per-round p50s and p99s, and need not come from the same round as req/s)"
	echo "- ${CELL_SECONDS} s per cell, loopback only, one Go echo upstream; $PIN_NOTE"
	echo "- echo: 64-byte request, wait for the 64-byte echo, one in flight per connection; latency p50/p99 in microseconds"
	echo "- bulk: 64 KiB writes per stream through the proxy to the echo upstream, MB/s (10^6 B) of data echoed back"
	echo "- connect: $CONNECT_WORKERS workers each connect, do one 64-byte round trip, close"
	echo "- CPU us/req x64, x512: proxy utime+stime from /proc/PID/stat (all its processes and threads) over the echo x64 and x512 cells, per request (one request plus its echo); median over the rounds"
	echo "- syscalls/req: strace -f -c on the proxy during a separate ${STRACE_SECONDS} s echo x64 run, once per proxy (last round); strace slows the proxy, only the count per request is meaningful"
	echo "- peers: haproxy mode tcp with option splice-auto; nginx stream proxy_pass; socat TCP-LISTEN fork; iocopy = goroutines + io.Copy (splices on Linux)"
	echo
	echo "$TABLE"
	if [[ -n $IDLE_TABLE ]]; then
		echo
		echo "Idle connections (one fresh proxy process per cell; every proxy has the hard RLIMIT_NOFILE, $NOFILE_HARD descriptors; haproxy maxconn $HAPROXY_MAXCONN with maxpipes $HAPROXY_MAXPIPES, nginx worker_connections 20480): the load generator first makes 256 short connections (connect, 64-byte echo, close) as a warm-up and reads the proxy's RSS (smaps_rollup Rss of the proxy and its child processes), then opens N connections from 127.0.0.2-9, 64 at a time, each doing one 64-byte echo, and keeps them open and silent; it stops opening at the first connection whose dial or echo fails (5 s each), so *served* is how many got their echo. One second later it reads the RSS again: *RSS KiB/idle* is the growth over the warm-up baseline per served idle connection. Then $IDLE_ACTIVE connections echo 64-byte requests for ${CELL_SECONDS} s beside the idle ones: *req/s* and *p99 us* (a proxy that stopped serving shows 0 req/s). Medians over the rounds."
		echo
		echo "$IDLE_TABLE"
	fi
	if [[ -n $SPREAD_TABLE ]]; then
		echo
		echo "Spread: the lowest and the highest of the $ROUNDS rounds for the headline cells of the first table (its figures are their medians). A row whose range is wide, or whose ranges overlap another's, says a difference between them is not settled by this run. The last column is the host's steal time on the proxy's CPU over each round's cells: this machine is a VM on a shared host, and a round whose CPU was partly given to other guests is slower for that reason alone."
		echo
		echo "$SPREAD_TABLE"
	fi
	if ((${#ERROR_NOTES[@]})); then
		echo
		for n in "${ERROR_NOTES[@]}"; do echo "- note: $n"; done
	fi
	echo "<!-- proxy-bench:end -->"
} >"$BLOCK"

write_results "$RESULTS" proxy-bench "$BLOCK"
log "table written to $RESULTS"
