#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Run the kernel's make with the HotMem toolchain: LLVM=1 through ccache,
# Debian's pinned rustc-web (rustup's rustc comes first in PATH and has no
# rust-src), bindgen-cli from cargo, and fixed build identity so ccache hits
# across clean clones.
#
#   scripts/kmake.sh [make args...]     runs in build/linux with O=build/linux-obj
#
# KOBJ=DIR selects another object tree (the debug kernel's is
# build/linux-obj-debug).
#
# Runs of this script are serialised on a lock per object tree
# (build/.kmake.lock for build/linux-obj): two makes in one object tree at
# once corrupt it (several people or agents share build/).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}

bindgen=$(command -v bindgen || echo "$HOME/.cargo/bin/bindgen")
cc=clang
# Debian's ccache masquerade directory: a single word, so it also works where
# kbuild passes $(HOSTCC) as rustc's -Clinker.
if [ -x /usr/lib/ccache/clang ]; then
	cc=/usr/lib/ccache/clang
	export CCACHE_BASEDIR=$build
	export CCACHE_NOHASHDIR=1
	export CCACHE_SLOPPINESS=time_macros,include_file_mtime,include_file_ctime
fi

export KBUILD_BUILD_TIMESTAMP="${KBUILD_BUILD_TIMESTAMP:-Thu Jan  1 00:00:00 UTC 2026}"
export KBUILD_BUILD_USER=hotmem
export KBUILD_BUILD_HOST=hotmem

obj=${KOBJ:-$build/linux-obj}
mkdir -p "$build"
# One lock per object tree: builds of the guest and the debug kernel only
# read the shared source tree.
lock=$build/.kmake.lock
[ "$obj" = "$build/linux-obj" ] || lock=$build/.kmake-$(basename "$obj").lock
exec 9>"$lock"
if ! flock -n 9; then
	echo "kmake: waiting for another kernel build in $obj to finish" >&2
	flock 9
fi

exec make -C "$build/linux" O="$obj" LLVM=1 \
	CC="$cc" HOSTCC="$cc" \
	RUSTC=/usr/bin/rustc HOSTRUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
	BINDGEN="$bindgen" DEPMOD=/sbin/depmod LOCALVERSION= \
	"$@"
