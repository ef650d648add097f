#!/bin/sh
# guest-lib.sh - what every guest script shares (guest.sh, ublk-guest.sh,
# nbd-guest.sh, bench/blockdev/guest-bench.sh): the KMODLAB result lines and
# bounded waits. run.sh copies it to /bin/guest-lib.sh; scripts source it.

FAILS=0
pass() { echo "KMODLAB: PASS $*"; }
fail() { echo "KMODLAB: FAIL $*"; FAILS=$((FAILS + 1)); }
up() { read -r u _ </proc/uptime; echo "$u"; }
# run NAME SECS CMD...: run a command with a time limit, PASS/FAIL on its status
run() {
	n=$1 t=$2; shift 2
	t0=$(up)
	if timeout "$t" "$@" >/tmp/out.$$ 2>&1; then
		pass "$n ($(awk -v a="$t0" -v b="$(up)" 'BEGIN{printf "%.1fs", b-a}'))"
		rc=0
	else
		rc=$?
		fail "$n exit=$rc"
	fi
	sed "s/^/    [$n] /" /tmp/out.$$ | grep -v '^    \[[^]]*\] KMODLAB' || true
	grep '^KMODLAB' /tmp/out.$$ | grep -v "^KMODLAB: PASS" || true
	grep '^KMODLAB: PASS' /tmp/out.$$ | sed 's/^KMODLAB: PASS/    detail:/' || true
	return $rc
}
# wait_ready FILE: wait up to 30 s for a server's ready file
wait_ready() {
	i=0
	while [ ! -s "$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
	[ -s "$1" ]
}
# wait_gone PID: wait up to 30 s for a child to exit; its exit status
wait_gone() {
	timeout 30 sh -c "while kill -0 $1 2>/dev/null; do sleep 0.1; done"
	wait "$1"
}
