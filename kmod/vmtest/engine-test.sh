#!/bin/bash
# engine-test.sh FLAVOUR - the engine's Go tests (root package, aio/, uring/)
# in a qemu VM booting Debian's FLAVOUR kernel (6.1, 6.12), through run.sh
# with engine-guest.sh: the kernel features the engine probes for and uses
# are exercised on the kernels it supports, not only on this machine's.
# The test binaries are built static (CGO_ENABLED=0) and copied in.
# Environment: LAB (default /var/tmp/engine-vmtest/FLAVOUR), and run.sh's.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
FLAVOUR=${1:-6.12}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
export LAB=${LAB:-/var/tmp/engine-vmtest/$FLAVOUR}
BIN=$LAB/tests
mkdir -p "$BIN"
for p in .:uio ./aio:aio ./uring:uring; do
	(cd "$REPO" && CGO_ENABLED=0 timeout 600 "$GO" test -c -trimpath -o "$BIN/${p#*:}.test" "${p%%:*}") ||
		{ echo "engine-test.sh: go test -c ${p%%:*} failed" >&2; exit 3; }
done
export GUEST_SCRIPT=$HERE/engine-guest.sh
# run.sh copies EXTRA_FILES to the same path in the guest, where the guest
# script finds them (*.test).
export EXTRA_FILES="${EXTRA_FILES:-} $BIN/uio.test $BIN/aio.test $BIN/uring.test"
export VM_MEM=${VM_MEM:-2G}
exec "$HERE/run.sh" "$FLAVOUR"
