#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Fail if any guest console under the given run directories shows a kernel
# report: WARN, BUG, oops, lockdep, KFENCE/KASAN/UBSAN, list or page-state
# corruption.  The VM tests boot without "quiet", so every such report
# reaches the serial console (console.log) of the guest that hit it.
#
#   check-dmesg.sh RUN_DIR...
set -uo pipefail

[ $# -gt 0 ] || { echo "usage: check-dmesg.sh RUN_DIR..." >&2; exit 2; }

# Anchored on the report headers the kernel prints; "page dumped because"
# alone is not here: do_migrate_range() prints it for an ordinary
# migration failure (a pinned page), which the drain tests cause on purpose.
pattern='(WARNING:|BUG:|BUG kmalloc|kernel BUG at|Oops|general protection fault|'
pattern+='KFENCE:|KASAN:|UBSAN:|possible circular locking|possible recursive locking|'
pattern+='inconsistent lock state|INFO: lockdep|DEBUG_LOCKS_WARN_ON|lockdep is turned off|'
pattern+='suspicious RCU usage|list_add corruption|list_del corruption|Bad page state|'
pattern+='Bad page map|hung_task|blocked for more than|soft lockup|hard LOCKUP|'
pattern+='Kernel panic)'

consoles=0
bad=0
while IFS= read -r -d '' f; do
	consoles=$((consoles + 1))
	if grep -Eq "$pattern" "$f"; then
		bad=$((bad + 1))
		echo "check-dmesg: kernel report in $f:"
		grep -En -B2 -A25 "$pattern" "$f" | head -n 60
	fi
done < <(find "$@" -name console.log -print0 2>/dev/null)

[ "$consoles" -gt 0 ] || { echo "check-dmesg: no guest consoles under $*" >&2; exit 1; }
echo "check-dmesg: $consoles guest console(s), $bad with kernel reports"
[ "$bad" = 0 ]
