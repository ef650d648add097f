# shellcheck shell=bash
# Sourced by bulk-cpu.sh and cpu-profile.sh (ROOT set): a scratch
# directory WORK, removed at exit after every pid in pids is killed, with
# uioproxy, the load generator and the Go echo upstream built into it.
WORK=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
(
	cd "$ROOT"
	go build -o "$WORK/uioproxy" ./cmd/uioproxy
	go build -o "$WORK/loadgen" ./bench/proxy/loadgen
	go build -o "$WORK/echoserver" ./bench/proxy/echoserver
)
