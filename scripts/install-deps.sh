#!/usr/bin/env bash
# Installs what building and testing uio needs on a fresh Debian 12 machine,
# as root. Idempotent and quick when everything is there already.
#   - strace: the syscall-count tests compare the engine's counters with it.
#   - Go: the module wants go >= 1.26. Where no go is installed, Debian's
#     golang-1.23 (bookworm-backports) is installed and fetches the go1.26
#     toolchain from the module proxy by itself (GOTOOLCHAIN=auto).
#   - nbdkit: blockdev's NBD client is tested against its memory plugin.
#   - Go modules: go mod download.
set -euo pipefail

need_apt=()
command -v strace >/dev/null || need_apt+=(strace)
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
command -v make >/dev/null || need_apt+=(make)
command -v bc >/dev/null || need_apt+=(bc) # kmod/test.sh times its steps with it
command -v nbdkit >/dev/null || need_apt+=(nbdkit) # blockdev's NBD tests (memory plugin, delay filter)

GO=$(command -v go || true)
[ -z "$GO" ] && [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go
[ -z "$GO" ] && [ -x /usr/lib/go-1.23/bin/go ] && GO=/usr/lib/go-1.23/bin/go

if [ ${#need_apt[@]} -gt 0 ] || [ -z "$GO" ]; then
	export DEBIAN_FRONTEND=noninteractive
	if [ -z "$GO" ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
		echo "deb http://deb.debian.org/debian bookworm-backports main" >/etc/apt/sources.list.d/uio-backports.list
	fi
	apt-get update -qq
	[ ${#need_apt[@]} -gt 0 ] && apt-get install -y -qq "${need_apt[@]}" >/dev/null
	if [ -z "$GO" ]; then
		apt-get install -y -qq -t bookworm-backports golang-1.23-go >/dev/null
		GO=/usr/lib/go-1.23/bin/go
	fi
fi

cd "$(dirname "$0")/.."
GOTOOLCHAIN=auto "$GO" mod download
GOTOOLCHAIN=auto "$GO" version
