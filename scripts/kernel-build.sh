#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Configure (tinyconfig + scripts/kconfig/guest.config) and build the guest
# kernel in build/linux-obj, then install bzImage and modules under
# build/guest/.  The .config is regenerated only when a fragment or the
# applied series changed; everything else is an incremental kbuild run.
#
# VARIANT=debug builds the debug guest kernel from the same source tree:
# guest.config + debug.config in build/linux-obj-debug, installed under
# build/guest-debug/.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
variant=${VARIANT:-guest}
fragments=("$top/scripts/kconfig/guest.config")
case "$variant" in
guest)
	obj=$build/linux-obj
	guest=$build/guest
	;;
debug)
	obj=$build/linux-obj-debug
	guest=$build/guest-debug
	fragments+=("$top/scripts/kconfig/debug.config")
	;;
*)
	echo "kernel: error: VARIANT must be guest or debug, not '$variant'" >&2
	exit 2
	;;
esac
logs=$build/logs
kmake=$top/scripts/kmake.sh
jobs=${JOBS:-$(nproc)}
export KOBJ=$obj

log() { printf 'kernel: %s\n' "$*" >&2; }
die() { printf 'kernel: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$obj" "$guest" "$logs"

# Run a long kbuild step with its output in a log file and a progress line
# every 20 s; on failure show the end of the log.
run_logged() {  # run_logged NAME make-args...
	local name=$1 logf=$logs/$1-$variant.log pid rc start=$SECONDS
	shift
	"$kmake" "$@" >"$logf" 2>&1 &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 2
		if (( (SECONDS - start) % 20 < 2 && SECONDS - start >= 20 )); then
			log "$name: $((SECONDS - start))s, $(grep -c '^  [A-Z]' "$logf" || true) steps, at: $(grep '^  [A-Z]' "$logf" | tail -n1 | sed 's/^ *//')"
		fi
	done
	rc=0
	wait "$pid" || rc=$?
	if [ "$rc" != 0 ]; then
		tail -n 40 "$logf" >&2
		die "$name failed (full log: $logf)"
	fi
	log "$name: done in $((SECONDS - start))s"
}

config_stamp() {
	{ cat "${fragments[@]}"; cat "$build/linux/.hotmem-series" 2>/dev/null; } | sha256sum | cut -d' ' -f1
}

# Every CONFIG_ line of the fragments, the last one of a symbol winning as
# in merge_config.sh.
wanted_config() {
	grep -h '^CONFIG_[A-Za-z0-9_]*=' "${fragments[@]}" |
		awk -F= '{ v[$1] = $0; if (!($1 in seen)) { seen[$1] = 1; order[n++] = $1 } }
			END { for (i = 0; i < n; i++) print v[order[i]] }'
}

check_config() {
	local line bad=0
	while IFS= read -r line; do
		if ! grep -qxF -- "$line" "$obj/.config"; then
			log "config: wanted '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$obj/.config" || echo unset)'"
			bad=1
		fi
	done < <(wanted_config)
	[ "$bad" = 0 ] || die "$variant config does not hold what ${fragments[*]#"$top/"} ask for"
}

configure() {
	local want
	want=$(config_stamp)
	if [ -f "$obj/.config" ] && [ "$(cat "$obj/.hotmem-config" 2>/dev/null)" = "$want" ]; then
		return
	fi
	local klog=$logs/kconfig-$variant.log
	log "configuring $variant (tinyconfig + ${fragments[*]##*/})"
	"$kmake" tinyconfig >"$klog" 2>&1 || { tail -n 20 "$klog"; die "tinyconfig failed"; }
	"$build/linux/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}" \
		>>"$klog" 2>&1 || die "merge_config failed (see $klog)"
	"$kmake" olddefconfig >>"$klog" 2>&1 || die "olddefconfig failed (see $klog)"
	"$kmake" rustavailable >>"$klog" 2>&1 ||
		{ tail -n 20 "$klog"; die "the kernel does not accept the Rust toolchain"; }
	check_config
	echo "$want" >"$obj/.hotmem-config"
}

configure
run_logged kernel-build -j"$jobs" all

rel=$(cat "$obj/include/config/kernel.release")
rm -rf "$guest/modroot.tmp"
"$kmake" INSTALL_MOD_PATH="$guest/modroot.tmp" INSTALL_MOD_STRIP=1 modules_install \
	>"$logs/modules-install-$variant.log" 2>&1 || die "modules_install failed (see $logs/modules-install-$variant.log)"
rm -rf "$guest/modroot"
mv "$guest/modroot.tmp" "$guest/modroot"
install -m 0644 "$obj/arch/x86/boot/bzImage" "$guest/bzImage"
echo "$rel" >"$guest/kernel.release"
log "$variant kernel $rel: $guest/bzImage"
