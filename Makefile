# SPDX-License-Identifier: GPL-2.0
#
# HotMem top-level build.  `make demo` and `make check` do everything on a
# fresh machine; the other targets are the steps they are made of.
#
# The kernel's kbuild reads ./Kbuild (not this file) when it builds the
# out-of-tree module in rust/.

BUILD		:= $(CURDIR)/build
GUEST		:= $(BUILD)/guest
KMAKE		:= $(CURDIR)/scripts/kmake.sh
CARGO		?= cargo
HOST_TRIPLE	:= x86_64-unknown-linux-gnu
GUEST_BINDIR	:= $(CURDIR)/target/$(HOST_TRIPLE)/release
HOTMEMCTL	:= $(CURDIR)/target/release/hotmemctl
MODULES		:= $(CURDIR)/rust/hotmem_virtio_mem.ko

# Forwarded to the host tool, e.g. `make demo ACCEL=kvm`.
ACCEL		?= tcg

export BUILD

.PHONY: all deps kernel module guest-programs hotmemctl initramfs guest check check-series soak demo bench \
	kernel-debug module-debug initramfs-debug guest-debug lint clean distclean help

all: guest hotmemctl

help:
	@echo "make deps       install the pinned toolchain (idempotent)"
	@echo "make kernel     unpack linux-source-6.12, apply patches/series, build"
	@echo "make module     build the out-of-tree Rust module in rust/"
	@echo "make initramfs  busybox + guest agent + modules + in-guest tests"
	@echo "make guest-debug  the same with the debug kernel (lockdep, DEBUG_VM, KFENCE) in build/guest-debug"
	@echo "make check      unit tests, lints and VM tests (what CI runs)"
	@echo "make check-series  compile what each patch touches, patch by patch; bloat-o-meter with CONFIG_HOTMEM=n"
	@echo "make soak       1000 plug/bind/exit/unplug cycles next to a bystander (SOAK_CYCLES=N)"
	@echo "make demo       scale instances up/down on HotMem and vanilla guests, side by side"
	@echo "                (a fresh private run directory under build/demo each time)"
	@echo "make bench      the paper's experiments, HotMem vs vanilla (BENCH_FLAGS=--quick)"
	@echo "ACCEL=kvm       use KVM instead of TCG where KVM works"

deps:
	@scripts/deps.sh

kernel: deps
	@scripts/kernel-prepare.sh
	@scripts/kernel-build.sh

module: kernel
	@echo "module: building rust/ against $$(cat $(GUEST)/kernel.release)"
	@$(KMAKE) M=$(CURDIR) modules >$(BUILD)/logs/module-build.log 2>&1 || \
		{ cat $(BUILD)/logs/module-build.log; exit 1; }
	@grep -E 'warning|error' $(BUILD)/logs/module-build.log || true

# The guest programs are fully static binaries (glibc, crt-static) so they
# run in a bare busybox initramfs.  --target keeps RUSTFLAGS away from build
# scripts.
guest-programs:
	@RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --quiet --release \
		--target $(HOST_TRIPLE) -p hotmem-agent -p hotmem-run -p hotmem-workloads

hotmemctl:
	@$(CARGO) build --quiet --release -p hotmemctl

initramfs: module guest-programs
	@scripts/mkinitramfs.sh $(GUEST_BINDIR) $(MODULES)

guest: initramfs

# The debug guest: the same source tree and programs, kernel configured with
# scripts/kconfig/debug.config in its own object tree, our module built
# against it from a copy of the module sources.
DEBUG_GUEST	:= $(BUILD)/guest-debug
DEBUG_MODDIR	:= $(BUILD)/module-debug

kernel-debug: kernel
	@VARIANT=debug scripts/kernel-build.sh

module-debug: kernel-debug
	@mkdir -p $(DEBUG_MODDIR) $(BUILD)/logs
	@cp -a Kbuild rust $(DEBUG_MODDIR)/
	@echo "module: building rust/ against $$(cat $(DEBUG_GUEST)/kernel.release)"
	@KOBJ=$(BUILD)/linux-obj-debug $(KMAKE) M=$(DEBUG_MODDIR) modules \
		>$(BUILD)/logs/module-build-debug.log 2>&1 || \
		{ cat $(BUILD)/logs/module-build-debug.log; exit 1; }

initramfs-debug: module-debug guest-programs
	@GUEST_DIR=$(DEBUG_GUEST) scripts/mkinitramfs.sh $(GUEST_BINDIR) \
		$(DEBUG_MODDIR)/rust/hotmem_virtio_mem.ko

guest-debug: initramfs-debug

lint:
	@$(CARGO) fmt --all --check
	@$(CARGO) clippy --quiet --workspace --all-targets -- -D warnings

check: deps
	@scripts/check.sh

check-series: kernel
	@scripts/check-series-compile.sh
	@scripts/check-bloat.sh

# Not part of `make check`: ~1000 cycles take tens of minutes under TCG.
SOAK_CYCLES	?= 1000

soak: deps guest
	@HOTMEM_KERNEL=$(GUEST)/bzImage HOTMEM_INITRD=$(GUEST)/initramfs.cpio.gz \
		HOTMEM_ACCEL=$(ACCEL) HOTMEM_SOAK_CYCLES=$(SOAK_CYCLES) \
		$(CARGO) test --quiet -p hotmem-vmtests --test soak -- --include-ignored --nocapture

demo: deps guest hotmemctl
	@$(HOTMEMCTL) demo --kernel $(GUEST)/bzImage --initrd $(GUEST)/initramfs.cpio.gz \
		--accel $(ACCEL) --dir $(BUILD)/demo

# Extra flags for `make bench`, e.g. BENCH_FLAGS=--quick or
# BENCH_FLAGS="--only fig5,compare".
BENCH_FLAGS	?=

bench: deps guest hotmemctl
	@$(HOTMEMCTL) bench --kernel $(GUEST)/bzImage --initrd $(GUEST)/initramfs.cpio.gz \
		--accel $(ACCEL) --dir $(BUILD)/bench/run --out $(BUILD)/bench $(BENCH_FLAGS)

clean:
	-@$(KMAKE) M=$(CURDIR) clean >/dev/null 2>&1
	rm -rf $(GUEST) $(DEBUG_GUEST) $(DEBUG_MODDIR) $(BUILD)/vmtests $(BUILD)/vmtests-debug \
		$(BUILD)/demo $(BUILD)/bench

distclean:
	rm -rf $(BUILD) target
