#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The top-level copies of what the kernel series adds (mm/, include/linux/,
# the kernel documentation under Documentation/ and the kselftests under
# tools/testing/selftests/) are for reading; this
# checks that each is byte for byte what patches/series produces when it is
# applied to the pristine source.  Needs a prepared tree (make kernel).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
src=$build/linux
wt=$build/series-files
series_dir=$top/patches

# Files the series adds, kept at the top level as the readable copy.
files=(
	mm/hotmem.c
	mm/hotmem_kunit.c
	include/linux/hotmem.h
	Documentation/admin-guide/mm/hotmem.rst
	Documentation/mm/hotmem-design.rst
	Documentation/ABI/testing/sysfs-kernel-mm-hotmem
	tools/testing/selftests/mm/hotmem_util.h
	tools/testing/selftests/mm/hotmem_abi.c
	tools/testing/selftests/mm/hotmem_bind.c
	tools/testing/selftests/mm/hotmem_drain.c
	tools/testing/selftests/mm/hotmem_escape.c
	tools/testing/selftests/mm/hotmem_geometry.c
	tools/testing/selftests/mm/hotmem_hwpoison.c
	tools/testing/selftests/mm/hotmem_khugepaged.c
	tools/testing/selftests/mm/hotmem_online.c
	tools/testing/selftests/mm/hotmem_race.c
)

[ -d "$src/.git" ] || { echo "check-series-files: prepare the tree first (make kernel)" >&2; exit 2; }
git -C "$src" worktree remove --force "$wt" >/dev/null 2>&1 || rm -rf "$wt"
git -C "$src" worktree prune
git -C "$src" worktree add -q --detach "$wt" pristine
trap 'git -C "$src" worktree remove --force "$wt" >/dev/null 2>&1 || true' EXIT
while read -r p; do
	git -C "$wt" -c user.name=hotmem -c user.email=hotmem@localhost am -q --keep-cr \
		"$series_dir/$p" || { echo "check-series-files: $p does not apply" >&2; exit 1; }
done < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$series_dir/series" | grep -v '^$')

bad=0
for f in "${files[@]}"; do
	if [ ! -f "$wt/$f" ]; then
		echo "check-series-files: the series does not add $f"
		bad=$((bad + 1))
	elif ! diff -u --label "series: $f" --label "top level: $f" "$wt/$f" "$top/$f"; then
		bad=$((bad + 1))
	fi
done
echo "check-series-files: ${#files[@]} files, $bad differ from the series"
[ "$bad" = 0 ]
