#!/bin/bash
# nbd-test.sh FLAVOUR - the blockdev NBD-client backend (uio-ramdisk -nbd)
# with the block device on top (nbd-guest.sh), in a qemu VM booting Debian's
# FLAVOUR kernel (6.1, 6.12), through run.sh. The NBD server is Debian's
# nbdkit (memory plugin) running inside the guest on 127.0.0.1: there is no
# network between host and guest. nbdkit is copied in from the host with its
# shared libraries (EXTRA_BINS), and its memory plugin, which it dlopen()s
# from its plugin directory, to the same path (EXTRA_FILES). The device is
# served over ABUSE on both kernels and over ublk where ublk_drv exists
# (6.12; Debian's 6.1 has none: the guest reports SKIP for ublk).
# Environment: LAB (default /var/tmp/nbd-vmtest/FLAVOUR), and run.sh's.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FLAVOUR=${1:-6.12}
export LAB=${LAB:-/var/tmp/nbd-vmtest/$FLAVOUR}
if ! command -v nbdkit >/dev/null; then
	[ "${SKIP_INSTALL:-0}" = 1 ] && { echo "nbdkit missing (SKIP_INSTALL=1)" >&2; exit 3; }
	DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends nbdkit ||
		{ echo "apt-get install nbdkit failed" >&2; exit 3; }
fi
plugin=$(nbdkit --dump-config | sed -n 's/^plugindir=//p')/nbdkit-memory-plugin.so
[ -e "$plugin" ] || { echo "no nbdkit memory plugin at $plugin" >&2; exit 3; }
export GUEST_SCRIPT=$HERE/nbd-guest.sh
export EXTRA_BINS="nbdkit ${EXTRA_BINS:-}"
export EXTRA_FILES="$plugin ${EXTRA_FILES:-}"
export EXTRA_MODS="ublk_drv ${EXTRA_MODS:-}"

exec "$HERE/run.sh" "$FLAVOUR"
