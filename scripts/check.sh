#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# `make check`: lints, host unit tests, guest build, VM tests.  Every stage
# runs even if an earlier one failed (so one run shows everything), and the
# last line is the total in the form test-result readers understand:
#   check: N passed, N failed
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
build=${BUILD:-$top/build}
logs=$build/logs
mkdir -p "$logs"

passed=0
failed=0
failures=()

stage() { printf '\n==> %s\n' "$*"; }

# Count a non-cargo step (build, lint) as one test.
step() {  # step NAME cmd...
	local name=$1 start=$SECONDS
	shift
	stage "$name"
	if "$@"; then
		passed=$((passed + 1))
		echo "ok: $name ($((SECONDS - start))s)"
	else
		failed=$((failed + 1))
		failures+=("$name")
		echo "FAILED: $name ($((SECONDS - start))s)"
	fi
}

# Run cargo test and add up its "test result:" lines.
cargo_tests() {  # cargo_tests NAME cargo-test-args...
	local name=$1 out rc p f start=$SECONDS
	shift
	stage "$name"
	out=$logs/${name// /-}.log
	cargo test "$@" 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	p=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^passed;?$/) s += $(i - 1) } END { print s + 0 }' "$out")
	f=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^failed;?$/) s += $(i - 1) } END { print s + 0 }' "$out")
	passed=$((passed + p))
	failed=$((failed + f))
	if [ "$rc" != 0 ]; then
		failures+=("$name")
		# A build failure runs no test; make sure it still counts.
		[ "$f" != 0 ] || failed=$((failed + 1))
	fi
	echo "$name: $p passed, $f failed ($((SECONDS - start))s)"
}

step "rustfmt" cargo fmt --all --check
step "clippy" cargo clippy --quiet --workspace --all-targets -- -D warnings
cargo_tests "unit tests" --workspace

step "guest build" make --no-print-directory guest
step "series: every patch compiles on its own" scripts/check-series-compile.sh
step "series: top-level mm/, include/ and Documentation/ copies equal the series" \
	scripts/check-series-files.sh
if [ -f "$build/guest/bzImage" ] && [ -f "$build/guest/initramfs.cpio.gz" ]; then
	HOTMEM_KERNEL=$build/guest/bzImage \
	HOTMEM_INITRD=$build/guest/initramfs.cpio.gz \
	HOTMEM_ACCEL=${ACCEL:-tcg} \
		cargo_tests "vm tests" -p hotmem-vmtests -- --include-ignored --test-threads=1 \
			--skip hotmem_soak
else
	failed=$((failed + 1))
	failures+=("vm tests (no guest)")
fi

# The kernel-facing VM tests again on the debug kernel (lockdep, DEBUG_VM,
# DEBUG_LIST, KFENCE, memory-failure injection): the mm fault tests and the
# drivers.  They must pass, and no guest may print a kernel report.  (The
# agent and scale tests exercise userspace over the same kernel paths.)
step "debug guest build" make --no-print-directory guest-debug
if [ -f "$build/guest-debug/bzImage" ] && [ -f "$build/guest-debug/initramfs.cpio.gz" ]; then
	rm -rf "$build/vmtests-debug"
	HOTMEM_KERNEL=$build/guest-debug/bzImage \
	HOTMEM_INITRD=$build/guest-debug/initramfs.cpio.gz \
	HOTMEM_ACCEL=${ACCEL:-tcg} \
	HOTMEM_RUN_DIR=$build/vmtests-debug \
	HOTMEM_DEBUG_KERNEL=1 \
		cargo_tests "vm tests on the debug kernel" -p hotmem-vmtests \
			--test hotmem --test driver --test virtio_mem -- --include-ignored --test-threads=1
	step "debug kernel: clean dmesg" scripts/check-dmesg.sh "$build/vmtests-debug"
else
	failed=$((failed + 1))
	failures+=("vm tests on the debug kernel (no guest)")
fi

echo
[ ${#failures[@]} = 0 ] || echo "failed stages: ${failures[*]}"
echo "elapsed: ${SECONDS}s"
echo "check: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ ${#failures[@]} = 0 ]
