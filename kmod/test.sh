#!/bin/bash
# kmod/test.sh - everything that tests the kernel side of ABUSE:
#   1. Go binding layout test against the uapi header (cgo)
#   2. checkpatch.pl --strict (from Debian's linux-source package)
#   3. compile check against the newest Debian kernel (sid, in a debootstrap chroot)
#   4. qemu VM tests on Debian 6.1 and 6.12 (vmtest/run.sh), and the blockdev
#      server over ublk on the same kernels (vmtest/ublk-test.sh), and its NBD
#      client against nbdkit in the guest, over ABUSE and ublk (vmtest/nbd-test.sh),
#      and the engine's own Go tests (root package, aio/, uring/) on those
#      kernels (vmtest/engine-test.sh)
#   5. dkms build of kmod/dkms.conf against the Debian 6.1 and 6.12 headers
# Installs what it needs; caches under /var/cache/abuse-kmod. Exit 0 only
# if every step passed.
# Environment: SKIP_VM=1 (the ublk and NBD checks too), SKIP_SID=1, SKIP_CHECKPATCH=1,
# SKIP_DKMS=1, FLAVOURS="6.1 6.12",
# SID_REFRESH=1 (apt-get upgrade the sid chroot), LOGDIR=/var/tmp/abuse-test,
# VMLAB=/var/tmp/abuse-vmtest (the VMs' scratch dirs, one per flavour)
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
CACHE=/var/cache/abuse-kmod
LOGDIR=${LOGDIR:-/var/tmp/abuse-test}
VMLAB=${VMLAB:-/var/tmp/abuse-vmtest}
FLAVOURS=${FLAVOURS:-6.1 6.12}
export DEBIAN_FRONTEND=noninteractive
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
mkdir -p "$LOGDIR" "$CACHE"
T0=$EPOCHREALTIME
SUMMARY=()
FAILED_STEPS=()

step() { # step NAME CMD...: run, log to $LOGDIR/NAME.log, record PASS/FAIL
	local name=$1 t=$EPOCHREALTIME rc
	shift
	echo "=== $name"
	"$@" >"$LOGDIR/$name.log" 2>&1
	rc=$?
	local dt
	dt=$(echo "$EPOCHREALTIME - $t" | bc | cut -c1-6)
	if [ $rc = 0 ]; then
		SUMMARY+=("PASS $name (${dt}s)")
	else
		SUMMARY+=("FAIL $name (exit $rc, ${dt}s; log $LOGDIR/$name.log)")
		FAILED_STEPS+=("$name")
		tail -40 "$LOGDIR/$name.log"
	fi
	grep -E '^RESULT:|^total:' "$LOGDIR/$name.log" || true
}

go_layout() {
	cd "$REPO" && CGO_ENABLED=1 timeout 600 "$GO" test -count=1 -v ./blockdev/abuse/
}

# checkpatch.pl and its data files, from Debian's linux-source-6.12.
CP_DIR=$CACHE/checkpatch
get_checkpatch() {
	local deb
	[ -x "$CP_DIR/linux-source-6.12/scripts/checkpatch.pl" ] && return 0
	mkdir -p "$CP_DIR" && cd "$CP_DIR" || return 1
	deb=$(ls linux-source-6.12_*.deb 2>/dev/null | head -1)
	if [ -z "$deb" ]; then
		timeout 600 apt-get -o DPkg::Lock::Timeout=600 update -qq || true
		timeout 1200 apt-get download linux-source-6.12 || return 1
		deb=$(ls linux-source-6.12_*.deb | head -1)
	fi
	dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/src/linux-source-6.12.tar.xz | xz -dc |
		tar -x linux-source-6.12/scripts/checkpatch.pl linux-source-6.12/scripts/spelling.txt \
			linux-source-6.12/scripts/const_structs.checkpatch
}
checkpatch() {
	get_checkpatch || { echo "cannot obtain checkpatch.pl"; return 1; }
	local cp=$CP_DIR/linux-source-6.12/scripts/checkpatch.pl rc=0
	cd "$HERE" || return 1
	"$cp" --no-tree --strict -f abuse.c include/uapi/linux/abuse.h || rc=1
	# the version guards are confined to this file; LINUX_VERSION_CODE is
	# unavoidable in an out-of-tree module built for several kernels
	"$cp" --no-tree --strict --ignore LINUX_VERSION_CODE,CONSTANT_COMPARISON -f abuse_compat.h || rc=1
	return $rc
}

# The newest kernel headers Debian has: sid's linux-headers-amd64 in a chroot.
SID=$CACHE/sid-chroot
sid_build() {
	local apt="apt-get -o Acquire::Check-Valid-Until=false -o DPkg::Lock::Timeout=600" k rc
	if [ ! -x "$SID/usr/bin/apt-get" ]; then
		command -v debootstrap >/dev/null ||
			timeout 900 apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends debootstrap || return 1
		rm -rf "$SID"
		timeout 1800 debootstrap --variant=minbase sid "$SID" http://deb.debian.org/debian || return 1
	fi
	if [ -z "$(ls "$SID"/lib/modules/*/build/Makefile 2>/dev/null)" ] || [ "${SID_REFRESH:-0}" = 1 ]; then
		timeout 1800 chroot "$SID" /bin/sh -c "$apt update -qq && $apt install -y -q --no-install-recommends linux-headers-amd64 make" || return 1
	fi
	k=$(ls "$SID"/lib/modules | sort -V | tail -1)
	echo "sid kernel headers: $k"
	rm -rf "$SID/build/abuse" && mkdir -p "$SID/build/abuse"
	cp -a "$HERE"/*.c "$HERE"/*.h "$HERE/Kbuild" "$HERE/include" "$SID/build/abuse/"
	mountpoint -q "$SID/proc" || mount -t proc proc "$SID/proc" # objtool needs /proc
	timeout 600 chroot "$SID" make -C "/lib/modules/$k/build" M=/build/abuse W=1 modules >"$LOGDIR/sid-make.log" 2>&1
	rc=$?
	umount "$SID/proc" 2>/dev/null
	cat "$LOGDIR/sid-make.log"
	[ $rc = 0 ] || return 1
	! grep -E 'warning:|error:' "$LOGDIR/sid-make.log" || { echo "warnings on $k"; return 1; }
	echo "RESULT: PASS abuse.ko compiles against $k with W=1, no warnings"
}

# dkms add + build, as the README tells users, but in a private DKMS tree
# (nothing is installed), for every Debian 6.1 / 6.12 kernel with headers.
dkms_build() {
	local t k v n=0 rc=0 mod
	command -v dkms >/dev/null ||
		timeout 900 apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends dkms || return 1
	v=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$HERE/dkms.conf")
	grep -q "MODULE_VERSION(\"$v\")" "$HERE/abuse.c" || { echo "dkms.conf version $v is not abuse.c's MODULE_VERSION"; return 1; }
	t=$(mktemp -d /var/tmp/abuse-dkms.XXXXXX)
	mkdir -p "$t/src/abuse-$v" "$t/tree" "$t/inst"
	cp -a "$HERE"/abuse.c "$HERE"/abuse_compat.h "$HERE"/Kbuild "$HERE"/Makefile "$HERE"/dkms.conf "$HERE"/include "$t/src/abuse-$v/"
	local D="--dkmstree $t/tree --sourcetree $t/src --installtree $t/inst"
	(cd "$t" && dkms add -m abuse -v "$v" $D) || rc=1
	for k in $(ls /lib/modules); do
		case "$k" in 6.1.* | 6.12.*) ;; *) continue ;; esac
		[ -e "/lib/modules/$k/build/Makefile" ] || continue
		n=$((n + 1))
		if ! (cd "$t" && timeout 600 dkms build -m abuse -v "$v" -k "$k" $D); then
			echo "dkms build for $k failed:"; cat "$t/tree/abuse/$v/build/make.log" 2>/dev/null; rc=1; continue
		fi
		mod=$(ls "$t/tree/abuse/$v/$k"/*/module/abuse.ko* 2>/dev/null | head -1)
		if [ -z "$mod" ] || [ "$(modinfo -F vermagic "$mod" | cut -d' ' -f1)" != "$k" ]; then
			echo "dkms build for $k: no abuse.ko for $k ($mod)"; rc=1; continue
		fi
		echo "dkms build abuse/$v for $k: $(basename "$mod"), vermagic $(modinfo -F vermagic "$mod")"
	done
	rm -rf "$t"
	[ $n -ge 2 ] || { echo "only $n Debian 6.1/6.12 kernels with headers"; rc=1; }
	[ $rc = 0 ] && echo "RESULT: PASS dkms build abuse/$v for $n kernels"
	return $rc
}

step go-layout go_layout
[ "${SKIP_CHECKPATCH:-0}" = 1 ] || step checkpatch checkpatch
[ "${SKIP_SID:-0}" = 1 ] || step sid-compile sid_build
if [ "${SKIP_VM:-0}" != 1 ]; then
	for f in $FLAVOURS; do LAB=$VMLAB/$f step "vm-$f" "$HERE/vmtest/run.sh" "$f"; done
	# the same daemon over the kernel's own ublk (Debian's 6.1 lacks
	# ublk_drv: its guest reports SKIP and passes)
	for f in $FLAVOURS; do LAB=$VMLAB/ublk-$f step "vm-ublk-$f" "$HERE/vmtest/ublk-test.sh" "$f"; done
	for f in $FLAVOURS; do LAB=$VMLAB/nbd-$f step "vm-nbd-$f" "$HERE/vmtest/nbd-test.sh" "$f"; done
	# the engine's own Go tests on the kernels it supports
	for f in $FLAVOURS; do LAB=$VMLAB/engine-$f step "vm-engine-$f" "$HERE/vmtest/engine-test.sh" "$f"; done
fi
# after the VM steps, which install the 6.1 and 6.12 kernels and headers
[ "${SKIP_DKMS:-0}" = 1 ] || step dkms-build dkms_build

echo "=== summary ($(echo "$EPOCHREALTIME - $T0" | bc | cut -c1-6)s, logs in $LOGDIR)"
printf '%s\n' "${SUMMARY[@]}"
passed=$(printf '%s\n' "${SUMMARY[@]}" | grep -c '^PASS' || true)
# Last, so that a report showing only the end of this output still says
# why each failed step failed: the guest's last words and the verdict.
for f in "${FAILED_STEPS[@]}"; do
	echo "=== why $f failed (the end of $LOGDIR/$f.log)"
	grep -E 'qemu exit|Kernel panic|BUG:|Oops|general protection|Call Trace|KMODLAB: FAIL|SETUP ERROR' "$LOGDIR/$f.log" | head -10
	if grep -q '^----- end of guest log' "$LOGDIR/$f.log"; then
		grep -v '^ *[0-9.]*| *$' "$LOGDIR/$f.log" | grep -B12 -m1 '^----- end of guest log'
	else
		tail -12 "$LOGDIR/$f.log"
	fi
done
echo "kmod: $passed passed, ${#FAILED_STEPS[@]} failed"
[ ${#FAILED_STEPS[@]} = 0 ]
