#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Export the commits on top of the pristine source in build/linux as
# patches/ (git format-patch) and rewrite patches/series to match.
# Use after committing kernel changes in build/linux.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
src=${BUILD:-$top/build}/linux
out=$top/patches

die() { printf 'export-series: error: %s\n' "$*" >&2; exit 1; }

[ -d "$src/.git" ] || die "$src is not a prepared tree (run 'make kernel' first)"
[ -z "$(git -C "$src" status --porcelain --untracked-files=no)" ] ||
	die "$src has uncommitted changes; commit them first"

mkdir -p "$out"
find "$out" -maxdepth 1 -name '*.patch' -delete
git -C "$src" format-patch -q --zero-commit --no-signature --subject-prefix=PATCH \
	-o "$out" pristine..HEAD
{
	echo "# HotMem series against Debian linux-source-6.12, applied in this order."
	(cd "$out" && ls -1 -- *.patch 2>/dev/null || true)
} >"$out/series"
git -C "$src" rev-parse HEAD >"$src/.hotmem-head"
# Record the tree as matching the series so kernel-prepare does not re-apply.
"$top/scripts/kernel-prepare.sh" --print-hash >"$src/.hotmem-series"
echo "exported $(grep -c '\.patch$' "$out/series" || true) patch(es) to patches/"
