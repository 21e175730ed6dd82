# SPDX-License-Identifier: GPL-2.0
# Minimal TAP helpers for the in-guest tests (busybox sh).
tap_n=0
tap_failed=0
tap_plan() { echo "TAP version 13"; echo "1..$1"; }
ok() {  # ok COND-EXIT-STATUS DESCRIPTION
	tap_n=$((tap_n + 1))
	if [ "$1" = 0 ]; then
		echo "ok $tap_n - $2"
	else
		echo "not ok $tap_n - $2"
		tap_failed=$((tap_failed + 1))
	fi
}
check() {  # check DESCRIPTION cmd...: ok if cmd succeeds
	desc=$1
	shift
	"$@" >/dev/null 2>&1
	ok $? "$desc"
}
check_eq() {  # check_eq DESCRIPTION EXPECTED ACTUAL
	if [ "$2" = "$3" ]; then ok 0 "$1"; else ok 1 "$1 (expected '$2', got '$3')"; fi
}
tap_done() { [ "$tap_failed" = 0 ]; exit $?; }
meminfo_kb() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
vmstat() { awk -v k="$1" '$1 == k { print $2 }' /proc/vmstat; }
