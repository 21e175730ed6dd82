#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Assemble build/guest/initramfs.cpio.gz: busybox (init + applets), the guest
# programs (agent, hotmem-run, workloads), the kernel's modules plus the
# out-of-tree HotMem modules, and the series' kselftests (the in-guest
# tests) under /usr/lib/hotmem/selftests.
#
#   mkinitramfs.sh BINDIR MODULE.ko...
#
# GUEST_DIR selects the guest whose kernel modules go in (default
# build/guest; the debug guest's is build/guest-debug).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
guest=${GUEST_DIR:-$build/guest}
root=$guest/initramfs-root
out=$guest/initramfs.cpio.gz

die() { printf 'initramfs: error: %s\n' "$*" >&2; exit 1; }

bindir=${1:?usage: mkinitramfs.sh BINDIR MODULE.ko...}
shift
GUEST_PROGRAMS="hotmem-agent hotmem-run hotmem-memhog hotmem-splice hotmem-filework hotmem-hotpath"
for prog in $GUEST_PROGRAMS; do
	[ -x "$bindir/$prog" ] || die "guest program $bindir/$prog missing"
	file -L "$bindir/$prog" | grep -Eq 'statically linked|static-pie linked' ||
		die "$bindir/$prog is not statically linked"
done
busybox=$(command -v busybox || echo /bin/busybox)
file -L "$busybox" | grep -q 'statically linked' || die "$busybox is not busybox-static"
rel=$(cat "$guest/kernel.release" 2>/dev/null) || die "no guest kernel (run 'make kernel')"
[ -d "$guest/modroot/lib/modules/$rel" ] || die "no modules for $rel (run 'make kernel')"

rm -rf "$root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,proc,sys,dev,tmp,run,root,lib}
install -m 0755 "$busybox" "$root/bin/busybox"
ln -s bin/busybox "$root/init"
for prog in $GUEST_PROGRAMS; do
	install -m 0755 "$bindir/$prog" "$root/bin/$prog"
done
install -m 0644 "$top/scripts/initramfs/inittab" "$root/etc/inittab"
install -m 0755 "$top/scripts/initramfs/rcS" "$root/etc/init.d/rcS"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

cp -a "$guest/modroot/lib/modules" "$root/lib/"
mkdir -p "$root/lib/modules/$rel/updates"
for ko in "$@"; do
	[ -f "$ko" ] || die "module $ko missing"
	install -m 0644 "$ko" "$root/lib/modules/$rel/updates/"
done
/sbin/depmod -b "$root" "$rel"

# The series' kselftests (tools/testing/selftests/mm/hotmem_*.c in the
# patched tree, with their shared hotmem_util.h), static binaries built
# with the kernel's kselftest harness, under /usr/lib/hotmem/selftests.
selftests=$build/linux/tools/testing/selftests
mkdir -p "$root/usr/lib/hotmem/selftests"
for t in "$selftests"/mm/hotmem_*.c; do
	[ -e "$t" ] || continue
	gcc -static -O2 -Wall -Wno-clobbered -I "$selftests" \
		-o "$root/usr/lib/hotmem/selftests/$(basename "$t" .c)" "$t" ||
		die "building the kselftest $t"
done

(cd "$root" && find . -print0 | LC_ALL=C sort -z |
	cpio --null -o -H newc --owner=0:0 --quiet) | gzip -n -6 >"$out.tmp"
mv "$out.tmp" "$out"
echo "initramfs: $out ($(du -h "$out" | cut -f1))"
