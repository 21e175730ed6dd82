#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Per-patch compile check of the series: for every patch in patches/series,
# check out the tree as of that patch (a git worktree of build/linux) and
# compile each C file the patch touches with the exact flags kbuild used
# for it in build/linux-obj (from its .cmd file), with -Werror.  Headers the
# patch touches are checked through every C file of the same patch and
# through mm/page_alloc.c, mm/memory_hotplug.c and mm/vmstat.c.
#
# This is not a full build of every prefix (that costs ~15 minutes per
# header-touching patch on 2 cores); it catches a patch that uses what only
# a later patch adds, which is the usual way a series stops bisecting.
# Needs a finished `make kernel`.  Rust files are not covered.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
src=$build/linux
obj=$build/linux-obj
wt=$build/series-check
out=$build/series-check-obj
always="mm/page_alloc.c mm/memory_hotplug.c mm/vmstat.c"

[ -f "$obj/vmlinux" ] || { echo "check-series: build the kernel first (make kernel)" >&2; exit 2; }
base=$(git -C "$src" rev-parse pristine)
mapfile -t commits < <(git -C "$src" rev-list --reverse "$base..${SERIES_HEAD:-HEAD}")

rm -rf "$wt" "$out"
git -C "$src" worktree prune
git -C "$src" worktree add -q --detach "$wt" "$base"
trap 'git -C "$src" worktree remove --force "$wt" >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
mkdir -p "$out"

failed=0
n=0
for c in "${commits[@]}"; do
	n=$((n + 1))
	git -C "$wt" checkout -q --detach "$c"
	subject=$(git -C "$src" log -1 --format=%s "$c")
	mapfile -t files < <(git -C "$src" diff --name-only "$c^" "$c")
	cfiles=()
	headers=0
	for f in "${files[@]}"; do
		case $f in
		*.c) [ -f "$obj/$(dirname "$f")/.$(basename "${f%.c}").o.cmd" ] && cfiles+=("$f") ;;
		*.h) headers=1 ;;
		esac
	done
	if [ "$headers" = 1 ]; then
		for f in $always; do
			case " ${cfiles[*]} " in *" $f "*) ;; *) cfiles+=("$f") ;; esac
		done
	fi
	status=ok
	for f in "${cfiles[@]}"; do
		cmdf="$obj/$(dirname "$f")/.$(basename "${f%.c}").o.cmd"
		# The compiler command only, not the objtool step kbuild chains after it.
		cmd=$(sed -n -e 's/;.*//' -e 's/^savedcmd_[^ ]* := //p' "$cmdf")
		cmd=${cmd//$src\//$wt\/}
		# Compile only: drop the dependency file and object output.
		cmd=$(printf '%s' "$cmd" | sed -e 's/-Wp,-MMD,[^ ]*//' -e "s| -o [^ ]*| -o $out/obj.o|")
		if ! (cd "$obj" && eval "$cmd -Werror" >"$out/log" 2>&1); then
			status=FAILED
			echo "--- $f at patch $n:"
			head -n 20 "$out/log"
		fi
	done
	[ "$status" = ok ] || failed=$((failed + 1))
	printf '%-6s %2d %s (%d C files)\n' "$status" "$n" "$subject" "${#cfiles[@]}"
done
echo "check-series: $((n - failed)) of $n patches compile on their own"
[ "$failed" = 0 ]
