#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Install the pinned HotMem toolchain, idempotently.
#
# The kernel's Rust support is tied to one rustc/bindgen pair, so those are
# pinned.  If a pin has left the archive we fall back to the newest
# rustc-web/rust-web-src pair that is still published *together* and say so
# loudly: a kernel built with another rustc is a different experiment.
set -euo pipefail

RUSTC_WEB_PIN=${RUSTC_WEB_PIN:-1.85.0+dfsg3-1~deb12u3}
LINUX_SOURCE_PIN=${LINUX_SOURCE_PIN:-6.12.117-1~deb12u1}
BINDGEN_PIN=${BINDGEN_PIN:-0.70.1}

PKGS=(clang lld llvm libclang-dev flex bison bc libelf-dev libssl-dev cpio
      kmod busybox-static qemu-system-x86 ccache xz-utils git file)

log() { printf 'deps: %s\n' "$*" >&2; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

SUDO=
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || die "need root (or sudo) to install packages"
	SUDO=sudo
fi

installed_version() {
	dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null |
		awk '$3 == "installed" { print $4 }'
}

available() {  # available PKG VERSION
	apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' |
		grep -qxF "$2"
}

apt_updated=
apt_update() {
	[ -n "$apt_updated" ] && return
	log "apt-get update"
	$SUDO apt-get update -qq >/dev/null
	apt_updated=1
}

apt_install() {
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
		--no-install-recommends "$@" >/dev/null
}

pick_rustc_web() {
	if available rustc-web "$RUSTC_WEB_PIN" && available rust-web-src "$RUSTC_WEB_PIN"; then
		echo "$RUSTC_WEB_PIN"
		return
	fi
	# Newest version published for both packages.
	local v
	v=$(comm -12 \
		<(apt-cache madison rustc-web | awk -F'|' '{gsub(/ /,"",$2); print $2}' | sort -u) \
		<(apt-cache madison rust-web-src | awk -F'|' '{gsub(/ /,"",$2); print $2}' | sort -u) |
		sort -V | tail -n1)
	[ -n "$v" ] || die "no rustc-web/rust-web-src pair in the archive"
	log "WARNING: pinned rustc-web/rust-web-src $RUSTC_WEB_PIN is gone from the archive;"
	log "WARNING: falling back to the pair rustc-web=$v rust-web-src=$v"
	echo "$v"
}

pick_linux_source() {
	if available linux-source-6.12 "$LINUX_SOURCE_PIN"; then
		echo "$LINUX_SOURCE_PIN"
		return
	fi
	local v
	v=$(apt-cache madison linux-source-6.12 | awk -F'|' '{gsub(/ /,"",$2); print $2}' |
		sort -V | tail -n1)
	[ -n "$v" ] || die "linux-source-6.12 is not in the archive"
	log "WARNING: pinned linux-source-6.12 $LINUX_SOURCE_PIN is gone; using $v"
	echo "$v"
}

need_apt=
for p in "${PKGS[@]}"; do
	[ -n "$(installed_version "$p")" ] || need_apt=1
done
[ "$(installed_version rustc-web)" = "$RUSTC_WEB_PIN" ] || need_apt=1
[ "$(installed_version rust-web-src)" = "$RUSTC_WEB_PIN" ] || need_apt=1
[ -n "$(installed_version linux-source-6.12)" ] || need_apt=1

if [ -n "$need_apt" ]; then
	apt_update
	rv=$(pick_rustc_web)
	lv=$(pick_linux_source)
	log "installing packages (rustc-web $rv, linux-source-6.12 $lv)"
	# rustc-web's standard library packages must move in lock-step with it,
	# or apt picks the newest libstd and refuses the pinned compiler.
	apt_install "${PKGS[@]}" "linux-source-6.12=$lv" \
		"rustc-web=$rv" "rust-web-src=$rv" \
		"libstd-rust-web-dev=$rv" "libstd-rust-web-${rv%%.0+*}=$rv" ||
		die "apt-get install failed"
else
	log "packages already installed"
fi

[ -x /usr/bin/rustc ] || die "/usr/bin/rustc missing after install"
[ -f /usr/src/linux-source-6.12.tar.xz ] || die "/usr/src/linux-source-6.12.tar.xz missing"

bindgen_bin=$(command -v bindgen || true)
[ -n "$bindgen_bin" ] || bindgen_bin="$HOME/.cargo/bin/bindgen"
if [ -x "$bindgen_bin" ] && "$bindgen_bin" --version 2>/dev/null | grep -qx "bindgen $BINDGEN_PIN"; then
	log "bindgen $BINDGEN_PIN already installed"
else
	command -v cargo >/dev/null || die "cargo (rustup) is needed to install bindgen-cli"
	log "cargo install bindgen-cli $BINDGEN_PIN"
	cargo install --locked --quiet bindgen-cli --version "$BINDGEN_PIN" ||
		die "cargo install bindgen-cli $BINDGEN_PIN failed"
fi

log "kernel rustc:  $(/usr/bin/rustc --version)"
log "bindgen:       $("$bindgen_bin" --version)"
log "clang:         $(clang --version | head -n1)"
log "qemu:          $(qemu-system-x86_64 --version | head -n1)"
log "linux-source:  $(installed_version linux-source-6.12)"
