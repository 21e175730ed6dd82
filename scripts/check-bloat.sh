#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# With CONFIG_HOTMEM=n the series must cost nothing: compile every C file
# of the pristine tree that the series changes, once from the pristine
# source and once from the patched one, with the guest configuration minus
# HOTMEM (and minus RUST and KUnit, which only slow this down), and compare
# each pair with scripts/bloat-o-meter.  Any growth fails.  Run by
# `make check-series` (it compiles 18 objects twice, 2 to 8 minutes here).
# SERIES_HEAD=<commit> checks that state of build/linux instead of HEAD.
#
# Headers the series changes are covered through the C files that include
# them (every changed C file, plus mm/page_alloc.c, mm/memory.c and
# mm/vmstat.c, which include most of them).  Needs a finished `make kernel`.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
src=$build/linux
obj=$build/linux-obj-nohotmem
wt=$build/bloat-pristine
out=$build/bloat
kmake=$top/scripts/kmake.sh
always="mm/page_alloc.c mm/memory.c mm/vmstat.c"

die() { printf 'check-bloat: error: %s\n' "$*" >&2; exit 1; }

[ -f "$build/linux-obj/.config" ] || die "build the kernel first (make kernel)"
base=$(git -C "$src" rev-parse pristine)

# C files that exist in the pristine tree and that the series changes.
head=$(git -C "$src" rev-parse "${SERIES_HEAD:-HEAD}")
mapfile -t changed < <(git -C "$src" diff --name-only "$base" "$head" -- '*.c')
files=()
for f in "${changed[@]}" $always; do
	[ -f "$src/$f" ] || continue
	# Only what the guest configuration builds, and not the Rust
	# abstractions' helpers: they belong to CONFIG_RUST, not CONFIG_HOTMEM.
	case $f in rust/*) continue ;; esac
	[ -f "$build/linux-obj/$(dirname "$f")/.$(basename "${f%.c}").o.cmd" ] || continue
	git -C "$src" cat-file -e "$base:$f" 2>/dev/null || continue
	case " ${files[*]} " in *" $f "*) continue ;; esac
	files+=("$f")
done

swt=$src
rm -rf "$wt" "$out"
git -C "$src" worktree prune
git -C "$src" worktree add -q --detach "$wt" "$base"
trap 'git -C "$src" worktree remove --force "$wt" >/dev/null 2>&1 || true' EXIT
if [ -n "${SERIES_HEAD:-}" ]; then
	# Another state of the series than the checked-out tree.
	swt=$build/bloat-series
	rm -rf "$swt"
	git -C "$src" worktree prune
	git -C "$src" worktree add -q --detach "$swt" "$head"
	trap 'git -C "$src" worktree remove --force "$wt" >/dev/null 2>&1 || true
		git -C "$src" worktree remove --force "$swt" >/dev/null 2>&1 || true' EXIT
fi
mkdir -p "$obj" "$out/pristine" "$out/series"

cp "$build/linux-obj/.config" "$obj/.config"
"$src/scripts/config" --file "$obj/.config" -d HOTMEM -d HOTMEM_KUNIT_TEST -d RUST \
	-d KUNIT --set-str LOCALVERSION -nohotmem

# Objects of one tree: its own kbuild run in the shared object directory
# (kbuild rebuilds whatever the source switch changed).
build_objs() {  # build_objs SRC DEST
	local tree=$1 dest=$2 f targets=()
	KOBJ=$obj "$kmake" -C "$tree" olddefconfig >"$out/log" 2>&1 ||
		{ cat "$out/log"; die "configuring $tree"; }
	! grep -q '^CONFIG_HOTMEM=y' "$obj/.config" || die "HOTMEM is still on"
	for f in "${files[@]}"; do
		targets+=("${f%.c}.o")
	done
	KOBJ=$obj "$kmake" -C "$tree" "${targets[@]}" >"$out/log" 2>&1 ||
		{ tail -n 40 "$out/log"; die "compiling in $tree"; }
	for f in "${files[@]}"; do
		mkdir -p "$dest/$(dirname "$f")"
		cp "$obj/${f%.c}.o" "$dest/${f%.c}.o"
	done
}

build_objs "$wt" "$out/pristine"
build_objs "$swt" "$out/series"

grew=0
total=0
printf '%-28s %s\n' "object" "growth with CONFIG_HOTMEM=n (bytes)"
for f in "${files[@]}"; do
	o=${f%.c}.o
	delta=$("$src/scripts/bloat-o-meter" "$out/pristine/$o" "$out/series/$o" |
		sed -n 's/^Total: Before=\([0-9]*\), After=\([0-9]*\),.*/\2 - \1/p')
	delta=$((${delta:-0}))
	total=$((total + delta))
	printf '%-28s %+d\n' "$o" "$delta"
	if [ "$delta" -gt 0 ]; then
		grew=1
		"$src/scripts/bloat-o-meter" "$out/pristine/$o" "$out/series/$o" | sed 's/^/    /'
	fi
done
printf '%-28s %+d\n' "total" "$total"
[ "$grew" = 0 ] || die "the series grows the kernel with CONFIG_HOTMEM=n"
echo "check-bloat: no growth with CONFIG_HOTMEM=n in ${#files[@]} objects"
