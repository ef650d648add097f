#!/bin/bash
# ublk-test.sh FLAVOUR - the blockdev checks on the kernel's ublk driver
# (ublk-guest.sh) in a qemu VM booting Debian's FLAVOUR kernel (6.1, 6.12),
# through run.sh. Debian's 6.1 has no ublk_drv (CONFIG_BLK_DEV_UBLK is not
# set): the guest then reports SKIP and the run passes.
# Environment: LAB (default /var/tmp/ublk-vmtest/FLAVOUR), and run.sh's.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FLAVOUR=${1:-6.12}
export LAB=${LAB:-/var/tmp/ublk-vmtest/$FLAVOUR}
export GUEST_SCRIPT=$HERE/ublk-guest.sh
export EXTRA_MODS="ublk_drv ${EXTRA_MODS:-}"

exec "$HERE/run.sh" "$FLAVOUR"
