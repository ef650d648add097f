#!/bin/bash
# run.sh FLAVOUR - boot Debian's FLAVOUR kernel (6.1 = bookworm, 6.12 =
# bookworm-backports) under qemu (TCG), load abuse.ko built against that
# kernel's headers, run guest.sh (the uio-ramdisk daemon on both engine
# backends and with a file backend: badblocks, ext4, a verifying QD32
# workload, kill -9, reconnect; the ramserver fixture for ioctl fuzzing
# and the non-root check; unload) and report PASS/FAIL.
#
# Self-contained and idempotent: installs missing packages with apt (and
# adds the bookworm-backports source for 6.12), builds the module, the
# static Go test server and an initramfs, boots with hard timeouts.
#
# Environment:
#   LAB=/var/tmp/abuse-vmtest/FLAVOUR   scratch dir (kept; console.log is there)
#   BOOT_TIMEOUT=900    wall-clock limit for the VM in seconds
#   BOOT_TRIES=3        boots tried while the guest kernel dies before /init
#   GUEST_TIMEOUT=1500  limit for the guest script inside the VM, in seconds
#   FUZZ_N=3000         iterations per fuzz target in the guest
#   RACE_N=2000         devices created by the ADD/ATTACH/REMOVE race check
#   KVER=               exact kernel release (default: newest installed of FLAVOUR)
#   SKIP_INSTALL=1      never call apt-get
# Knobs for other guest programs (bench/blockdev/run.sh uses them):
#   GUEST_SCRIPT=guest.sh  the script /init runs (as /bin/guest.sh)
#   VM_MEM=1G           guest memory
#   EXTRA_BINS=         host programs copied in with their shared libraries
#   EXTRA_FILES=        host files (e.g. dlopen()ed plugins) copied to the same
#                       path in the guest, with their shared libraries
#   EXTRA_GO=           more Go main packages (repo-relative), built static into /bin
#   EXTRA_MODS=         more Debian kernel modules to load (e.g. "nbd loop")
# Exit: 0 PASS; 1 a guest check failed or the kernel log is dirty; 2 no
# result from the guest (panic, hang, timeout); 3 host setup error.
set -euo pipefail

FLAVOUR=${1:-}
case "$FLAVOUR" in
6.1 | 6.12) ;;
*) echo "usage: $0 6.1|6.12" >&2; exit 3 ;;
esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KMOD=$(dirname "$HERE")
REPO=$(dirname "$KMOD")
LAB=${LAB:-/var/tmp/abuse-vmtest/$FLAVOUR}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-1500}
FUZZ_N=${FUZZ_N:-3000}
RACE_N=${RACE_N:-2000}
SKIP_INSTALL=${SKIP_INSTALL:-0}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
GUEST_SCRIPT=${GUEST_SCRIPT:-$HERE/guest.sh}
# what the result lines name: the guest script's checks (guest.sh: abuse.ko)
SUITE=$(basename "$GUEST_SCRIPT" .sh)
[ "$SUITE" = guest ] && SUITE=abuse.ko
VM_MEM=${VM_MEM:-1G}
EXTRA_BINS=${EXTRA_BINS:-}
EXTRA_FILES=${EXTRA_FILES:-}
EXTRA_GO=${EXTRA_GO:-}
EXTRA_MODS=${EXTRA_MODS:-}

T_START=$EPOCHREALTIME
el() { echo "$EPOCHREALTIME - $1" | bc | cut -c1-6; }
log() { printf '[run.sh %s %6ss] %s\n' "$FLAVOUR" "$(el "$T_START")" "$*"; }
die() { log "SETUP ERROR: $*"; exit 3; }
mkdir -p "$LAB"
LAB=$(realpath "$LAB")
exec 9>"$LAB/.lock"
flock -w 1800 9 || die "another run holds $LAB/.lock"
log "scratch dir $LAB"

# ------------------------------------------------------------ packages
export DEBIAN_FRONTEND=noninteractive
APT="apt-get -o DPkg::Lock::Timeout=600"
apt_updated=0
apt_update() {
	[ $apt_updated = 1 ] && return 0
	timeout 600 $APT update -qq >>"$LAB/apt.log" 2>&1 || die "apt-get update failed (see $LAB/apt.log)"
	apt_updated=1
}
apt_install() {
	[ "$SKIP_INSTALL" = 1 ] && die "missing packages: $*"
	log "installing: $*"
	apt_update
	timeout 1800 $APT install -y -q --no-install-recommends "$@" >>"$LAB/apt.log" 2>&1 ||
		{ tail -20 "$LAB/apt.log"; die "apt-get install $* failed"; }
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=""
for p in qemu-system-x86 busybox-static e2fsprogs cpio kmod xz-utils zstd gcc make bc; do
	installed "$p" || missing="$missing $p"
done
[ -z "$missing" ] || apt_install $missing

# The newest installed kernel of this flavour with headers and an image.
find_kver() {
	local d v
	for d in $(ls -d /lib/modules/"$FLAVOUR".* 2>/dev/null | sort -V -r); do
		v=${d##*/}
		case "$v" in *-amd64) ;; *) continue ;; esac
		case "$v" in *-rt-* | *-cloud-*) continue ;; esac
		if [ -e "$d/build/Makefile" ] && [ -e "/boot/vmlinuz-$v" ]; then echo "$v"; return 0; fi
	done
	return 1
}
if [ -z "${KVER:-}" ]; then
	if ! KVER=$(find_kver); then
		if [ "$FLAVOUR" = 6.12 ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
			log "adding bookworm-backports to apt sources"
			printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
				>/etc/apt/sources.list.d/bookworm-backports.sources
			apt_updated=0 # the lists read before lack the new suite
		fi
		apt_update
		case $FLAVOUR in
		6.1) pat='bookworm-security\|bookworm/main' ;;
		6.12) pat='bookworm-backports' ;;
		esac
		ver=$(apt-cache madison linux-headers-amd64 | grep "$pat" | head -1 | awk -F'|' '{gsub(/ /, "", $2); print $2}' || true)
		[ -n "$ver" ] || die "no linux-headers-amd64 for $FLAVOUR in apt"
		hdr=$(apt-cache depends "linux-headers-amd64=$ver" | awk '/Depends: linux-headers-/{print $2; exit}')
		img=$(apt-cache depends "linux-image-amd64=$ver" | awk '/Depends: linux-image-/{print $2; exit}')
		apt_install "$hdr" "$img"
		KVER=$(find_kver) || die "kernel $FLAVOUR still not installed"
	fi
fi
KDIR=/lib/modules/$KVER/build
[ -e "$KDIR/Makefile" ] || die "no headers at $KDIR"
log "guest kernel $KVER; qemu $(dpkg-query -W -f='${Version}' qemu-system-x86); busybox $(dpkg-query -W -f='${Version}' busybox-static)"

# -------------------------------------------------------------- module
MOD=$LAB/mod
rm -rf "$MOD"
mkdir -p "$MOD"
cp -a "$KMOD"/*.c "$KMOD"/*.h "$KMOD/Kbuild" "$KMOD/include" "$MOD/"
t0=$EPOCHREALTIME
timeout 300 make -C "$KDIR" M="$MOD" W=1 modules >"$LAB/module-build.log" 2>&1 ||
	{ cat "$LAB/module-build.log"; die "module build failed"; }
if grep -E 'warning:|error:' "$LAB/module-build.log"; then
	die "module build against $KVER has warnings"
fi
log "abuse.ko built against $KVER with W=1, no warnings ($(el "$t0")s)"

# ------------------------------------------------------------ Go fixture
t0=$EPOCHREALTIME
(cd "$REPO" && CGO_ENABLED=0 timeout 600 "$GO" build -trimpath -ldflags='-s -w' \
	-o "$LAB/ramserver" ./kmod/vmtest/ramserver) || die "go build ramserver failed"
GOBINS="ramserver"
for p in ./cmd/uio-ramdisk ./examples/ramdisk:xorramdisk $EXTRA_GO; do
	pkg=${p%%:*} name=${p##*/}
	case "$p" in *:*) name=${p#*:} ;; esac
	(cd "$REPO" && CGO_ENABLED=0 timeout 600 "$GO" build -trimpath -ldflags='-s -w' \
		-o "$LAB/$name" "$pkg") || die "go build $pkg failed"
	GOBINS="$GOBINS $name"
done
log "static Go programs built: $GOBINS ($(el "$t0")s)"

# ------------------------------------------------------------ initramfs
R=$LAB/initramfs
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,mnt,lib/modules/extra}
cp /bin/busybox "$R/bin/busybox"
for b in $GOBINS; do cp "$LAB/$b" "$R/bin/$b"; done
cp "$GUEST_SCRIPT" "$R/bin/guest.sh"
cp "$HERE/guest-lib.sh" "$R/bin/guest-lib.sh"
cp "$MOD/abuse.ko" "$R/lib/modules/extra/"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
# e2fsprogs with their shared libraries
for b in mke2fs e2fsck badblocks $EXTRA_BINS; do
	p=$(command -v $b || echo /sbin/$b)
	cp "$p" "$R/sbin/$b"
	for l in $(ldd "$p" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}'); do
		mkdir -p "$R$(dirname "$l")"
		cp -L "$l" "$R$l"
	done
done
for f in $EXTRA_FILES; do
	[ -e "$f" ] || die "EXTRA_FILES: no $f"
	mkdir -p "$R$(dirname "$f")"
	cp -L "$f" "$R$f"
	for l in $(ldd "$f" 2>/dev/null | awk '/=>/ {print $3} /^\t\/lib/ {print $1}'); do
		mkdir -p "$R$(dirname "$l")"
		cp -L "$l" "$R$l"
	done
done
ln -sf mke2fs "$R/sbin/mkfs.ext4"
if [ -e /lib64/ld-linux-x86-64.so.2 ]; then mkdir -p "$R/lib64" && cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"; fi
printf '[defaults]\n' >"$R/etc/mke2fs.conf"
cp /etc/mke2fs.conf "$R/etc/mke2fs.conf" 2>/dev/null || true
# Debian modules for ext4, decompressed
copy_kmod() {
	local m=$1 f dep rel dst
	f=$(modinfo -k "$KVER" -F filename "$m" 2>/dev/null) || return 1
	case "$f" in builtin* | "") return 0 ;; esac
	rel=${f#/lib/modules/$KVER/}
	dst="$R/lib/modules/$KVER/${rel%.xz}"
	dst=${dst%.zst}
	[ -e "$dst" ] && return 0
	mkdir -p "$(dirname "$dst")"
	case "$f" in
	*.xz) xz -dc "$f" >"$dst" ;;
	*.zst) zstd -qdc "$f" >"$dst" ;;
	*) cp "$f" "$dst" ;;
	esac
	for dep in $(modinfo -k "$KVER" -F depends "$m" | tr ',' ' '); do copy_kmod "$dep"; done
}
GUEST_MODS="crc32c_generic crc32c_intel ext4 $EXTRA_MODS"
for m in $GUEST_MODS; do copy_kmod "$m" || log "note: $m not in $KVER"; done
cp /lib/modules/"$KVER"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$R" "$KVER"
cat >"$R/init" <<EOF
#!/bin/busybox sh
GUEST_MODS="$GUEST_MODS"
export FUZZ_N=$FUZZ_N RACE_N=$RACE_N
GUEST_TIMEOUT=$GUEST_TIMEOUT
EOF
cat >>"$R/init" <<'EOF'
/bin/busybox --install -s
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo 10 >/proc/sys/kernel/hung_task_timeout_secs 2>/dev/null
echo "KMODLAB-INIT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
for m in $GUEST_MODS; do modprobe "$m" 2>/dev/null; done
timeout "$GUEST_TIMEOUT" sh /bin/guest.sh
FAILS=$?
# give the hung-task detector a chance to speak
sleep 1
if dmesg | grep -E 'BUG:|WARNING:|Oops|Call Trace|general protection|blocked for more than|hung_task|refcount_t|list_(add|del) corruption'; then
	echo "KMODLAB: FAIL dmesg-clean"; FAILS=$((FAILS + 1))
else
	echo "KMODLAB: PASS dmesg-clean"
fi
dmesg | grep -E 'abuse' | sed 's/^/dmesg: /' | tail -30
if [ "$FAILS" = 0 ]; then echo "KMODLAB-RESULT: PASS uptime=$(cut -d' ' -f1 /proc/uptime)"; else
	echo "KMODLAB-RESULT: FAIL failures=$FAILS"; fi
sync
poweroff -f
EOF
chmod +x "$R/init" "$R/bin/guest.sh"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$LAB/initramfs.cpio"
log "initramfs $(du -h "$LAB/initramfs.cpio" | cut -f1)"

# ------------------------------------------------- kernel image (PVH boot)
# Boot the uncompressed vmlinux by PVH entry (Debian: CONFIG_PVH=y); it
# saves the decompression time under TCG. 6.1 is XZ, 6.12 ZSTD.
KIMG=/boot/vmlinuz-$KVER
VMLINUX=$LAB/vmlinux-$KVER
# elf_whole FILE: an ELF64 file that holds its section header table, the
# last thing in a vmlinux; the decompressors' status cannot tell (they
# complain about the bzImage's bytes after the payload), so a vmlinux cut
# short (a full disk) would otherwise be kept and fail every boot.
elf_whole() {
	local f=$1 shoff shentsize shnum
	[ -s "$f" ] && [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || return 1
	shoff=$(od -An -t u8 -j 40 -N 8 "$f" | tr -d ' ')
	shentsize=$(od -An -t u2 -j 58 -N 2 "$f" | tr -d ' ')
	shnum=$(od -An -t u2 -j 60 -N 2 "$f" | tr -d ' ')
	[ "$shnum" -gt 0 ] && [ $((shoff + shnum * shentsize)) -le "$(stat -c %s "$f")" ]
}
if ! elf_whole "$VMLINUX" || [ "$VMLINUX" -ot "$KIMG" ]; then
	rm -f "$VMLINUX.tmp"
	if off=$(LC_ALL=C grep -aboP '\xfd7zXZ\x00' "$KIMG" | head -1 | cut -d: -f1) && [ -n "$off" ]; then
		tail -c +$((off + 1)) "$KIMG" | xz -dc >"$VMLINUX.tmp" 2>/dev/null || true
	elif off=$(LC_ALL=C grep -aboP '\x28\xb5\x2f\xfd' "$KIMG" | head -1 | cut -d: -f1) && [ -n "$off" ]; then
		tail -c +$((off + 1)) "$KIMG" | zstd -qdc >"$VMLINUX.tmp" 2>/dev/null || true
	fi
	if elf_whole "$VMLINUX.tmp"; then
		mv "$VMLINUX.tmp" "$VMLINUX"
	else
		rm -f "$VMLINUX.tmp" "$VMLINUX"
		log "note: no whole vmlinux from $KIMG; booting the compressed image"
	fi
fi
if grep -q '^CONFIG_PVH=y' "/boot/config-$KVER" && [ -s "$VMLINUX" ]; then KIMG=$VMLINUX; fi
log "kernel image $KIMG"

# ---------------------------------------------------------------- boot
# no_timer_check: under TCG on a busy host the kernel's early check that
# the IO-APIC timer ticks can time out, and the kernel then panics ("IO-APIC
# + timer doesn't work!") within its first second; the check tests the
# emulator, not anything here (cirros and lima boot their qemu guests with
# it for the same reason). earlyprintk: a kernel that dies before its
# console is up still says why on the serial line.
CMDLINE="console=ttyS0 earlyprintk=serial,ttyS0 rdinit=/init panic=-1 oops=panic loglevel=4 no_timer_check"
CONSOLE=$LAB/console.log
# A guest kernel that dies before /init runs (no KMODLAB-INIT line) has
# run nothing of ours yet (the module is loaded by the guest script): that
# boot is logged and the VM booted again, up to BOOT_TRIES times in all.
BOOT_TRIES=${BOOT_TRIES:-3}
boot=0
while :; do
	boot=$((boot + 1))
	log "booting qemu (TCG, 2 vCPU, $VM_MEM, timeout ${BOOT_TIMEOUT}s)"
	T_BOOT=$EPOCHREALTIME
	set +e
	timeout -k 10 "$BOOT_TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m "$VM_MEM" -smp 2 \
		-nodefaults -no-user-config -display none -monitor none -serial stdio -no-reboot \
		-kernel "$KIMG" -initrd "$LAB/initramfs.cpio" -append "$CMDLINE" \
		</dev/null 2>&1 | while IFS= read -r line; do
		printf '%7s| %s\n' "$(el "$T_BOOT")" "${line%$'\r'}"
	done >"$CONSOLE"
	QRC=${PIPESTATUS[0]}
	set -e
	T_VM=$(el "$T_BOOT")
	if grep -q 'KMODLAB-INIT' "$CONSOLE" || [ "$QRC" = 124 ] || [ "$QRC" = 137 ] || [ $boot -ge "$BOOT_TRIES" ]; then
		break
	fi
	cp "$CONSOLE" "$LAB/console.boot$boot.log"
	log "boot $boot: qemu exit $QRC after ${T_VM}s before /init ran; its last lines ($LAB/console.boot$boot.log):"
	tail -15 "$CONSOLE"
done

# --------------------------------------------------------------- verdict
echo "----- guest log ($CONSOLE) -----"
cat "$CONSOLE"
echo "----- end of guest log -----"
log "qemu exit $QRC after ${T_VM}s (boot $boot); $(grep -c 'KMODLAB: PASS' "$CONSOLE") PASS, $(grep -c 'KMODLAB: FAIL' "$CONSOLE") FAIL"
if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then log "TIMEOUT after ${BOOT_TIMEOUT}s"; fi
dirty=$(grep -E '\] (BUG:|WARNING:|Oops|general protection)|Call Trace|blocked for more than|Kernel panic' "$CONSOLE" || true)
if grep -q 'KMODLAB-RESULT: PASS' "$CONSOLE" && [ -z "$dirty" ]; then
	again=""
	[ $boot -gt 1 ] && again=", on boot $boot of $BOOT_TRIES"
	echo "RESULT: PASS $SUITE on $KVER ($(grep -c 'KMODLAB: PASS' "$CONSOLE") checks, VM ${T_VM}s, total $(el "$T_START")s$again)"
	exit 0
elif grep -q 'KMODLAB-RESULT:' "$CONSOLE"; then
	grep 'KMODLAB: FAIL' "$CONSOLE" || true
	[ -n "$dirty" ] && echo "kernel log not clean:" && echo "$dirty"
	echo "RESULT: FAIL $SUITE on $KVER"
	exit 1
else
	[ -n "$dirty" ] && echo "$dirty"
	if ! grep -q 'KMODLAB-INIT' "$CONSOLE"; then
		echo "RESULT: FAIL $SUITE on $KVER (the guest kernel never ran /init, in $boot boots)"
		exit 2
	fi
	echo "RESULT: FAIL $SUITE on $KVER (no result from guest: panic, hang or timeout)"
	exit 2
fi
