#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Lay out build/linux: Debian's linux-source-6.12 with patches/series applied
# on top, as a git tree (one commit per patch) so that the series can be
# developed in place and exported again with scripts/export-series.sh.
#
# Incremental by design: the tarball is unpacked only when the source package
# version changes.  When only the series changes, the tree is reset to the
# pristine commit and the series re-applied, so only the files the series
# touches get new mtimes and the O= object tree rebuilds just those.
#
# It never throws away work: a tree with uncommitted changes, or with commits
# that are not the applied series, is left alone with an explanation unless
# FORCE=1.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
src=$build/linux
tarball=${LINUX_TARBALL:-/usr/src/linux-source-6.12.tar.xz}
series_dir=$top/patches
series=$series_dir/series

log() { printf 'kernel-prepare: %s\n' "$*" >&2; }
die() { printf 'kernel-prepare: error: %s\n' "$*" >&2; exit 1; }

[ -f "$tarball" ] || die "$tarball not found (run 'make deps')"

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null ||
	stat -c %Y "$tarball")

series_patches() {
	[ -f "$series" ] || return 0
	sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$series" | grep -v '^$' || true
}

series_hash() {
	{
		echo "$src_version"
		local p
		for p in $(series_patches); do
			[ -f "$series_dir/$p" ] || die "patches/series names missing file $p"
			echo "$p"
			cat "$series_dir/$p"
		done
	} | sha256sum | cut -d' ' -f1
}

g() { git -C "$src" -c user.name=hotmem -c user.email=hotmem@localhost \
	-c advice.detachedHead=false -c gc.auto=0 -c maintenance.auto=false "$@"; }

unpack() {
	log "unpacking $tarball ($src_version)"
	rm -rf "$src" "$src.tmp"
	mkdir -p "$src.tmp"
	tar -xJf "$tarball" -C "$src.tmp" --strip-components=1
	mv "$src.tmp" "$src"
	# Debian's packaging .gitignore ignores every top-level entry; drop that
	# block so new files of the series show up in git status.  Patches never
	# touch .gitignore, so they still apply to the unmodified tarball.
	sed -i '/^# Debian packaging: ignore everything/,$d' "$src/.gitignore"
	sed -i '$ { /^#$/d }' "$src/.gitignore"
	g init -q -b hotmem
	echo '/.hotmem-*' >>"$src/.git/info/exclude"
	g add -A
	g commit -q -m "Debian linux-source-6.12 $src_version"
	g tag -f pristine >/dev/null
	echo "$src_version" >"$src/.hotmem-src-version"
	rm -f "$src/.hotmem-series"
}

apply_series() {
	local p n=0
	g am --abort >/dev/null 2>&1 || true
	g reset -q --hard pristine
	g clean -q -fdx -e .hotmem-src-version
	for p in $(series_patches); do
		n=$((n + 1))
		if ! out=$(g am -q --keep-cr "$series_dir/$p" 2>&1); then
			g am --abort >/dev/null 2>&1 || true
			rm -f "$src/.hotmem-series"
			die "patch $n ($p) does not apply: $(printf '%s' "$out" | head -n 5)"
		fi
	done
	log "applied $n patch(es) from patches/series"
	series_hash >"$src/.hotmem-series"
	g rev-parse HEAD >"$src/.hotmem-head"
}

tree_is_ours() {
	# True if the tree holds exactly what we last applied: no local edits,
	# no commits of a developer's beyond it.
	[ -z "$(g status --porcelain --untracked-files=no)" ] || return 1
	[ -f "$src/.hotmem-head" ] || return 1
	[ "$(g rev-parse HEAD)" = "$(cat "$src/.hotmem-head")" ]
}

if [ "${1:-}" = --print-hash ]; then
	series_hash
	exit 0
fi

mkdir -p "$build"
if [ ! -d "$src/.git" ] || [ "$(cat "$src/.hotmem-src-version" 2>/dev/null)" != "$src_version" ]; then
	if [ -d "$src/.git" ] && ! tree_is_ours && [ "${FORCE:-0}" != 1 ]; then
		die "source version changed but $src has local work; export it (scripts/export-series.sh) or re-run with FORCE=1"
	fi
	unpack
fi

want=$(series_hash)
have=$(cat "$src/.hotmem-series" 2>/dev/null || true)
if [ "$want" = "$have" ]; then
	if ! tree_is_ours; then
		log "note: $src has local changes or commits beyond patches/series; building them as they are"
	fi
	exit 0
fi

if [ -f "$src/.hotmem-head" ] && ! tree_is_ours && [ "${FORCE:-0}" != 1 ]; then
	die "patches/series changed but $src has local work not in patches/; export it with scripts/export-series.sh, or re-run with FORCE=1 to discard it"
fi
apply_series
