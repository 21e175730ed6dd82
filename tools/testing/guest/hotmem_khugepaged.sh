#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# khugepaged and full partitions: run after hotmem_online.sh has made one
# free partition.  A tenant at its partition's limit (the normal state of
# a function instance) cannot get a huge page for khugepaged to collapse
# into; that must fail for the tenant alone, not make khugepaged sleep
# alloc_sleep_millisecs and abandon its pass for every other process.
. "$(dirname "$0")/tap.sh"
H=/sys/kernel/mm/hotmem
K=/sys/kernel/mm/transparent_hugepage/khugepaged
tap_plan 4

wait_for() {  # wait_for SECONDS CMD...: poll every 0.1 s
	n=$(($1 * 10))
	shift
	i=0
	while [ $i -lt $n ]; do
		"$@" && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}
increased() { [ "$(vmstat "$1")" -gt "$2" ]; }

saved="$(cat $K/alloc_sleep_millisecs) $(cat $K/scan_sleep_millisecs) $(cat $K/pages_to_scan)"
echo 60000 >$K/alloc_sleep_millisecs
echo 8192 >$K/pages_to_scan
echo 10 >$K/scan_sleep_millisecs

psize_mb=$(($(cat $H/partition_size) / 1048576))
failed=$(vmstat thp_collapse_alloc_failed)
# The tenant: its partition full but for 1 MiB, all of it in small pages.
hotmem-run -- hotmem-memhog --size $((psize_mb - 1))M --collapse --hold 2m >/dev/null 2>&1 &
tenant=$!
wait_for 60 increased thp_collapse_alloc_failed "$failed"
ok $? "khugepaged found no huge page in the full partition"

collapsed=$(vmstat thp_collapse_alloc)
hotmem-memhog --size 16M --collapse --hold 2m >/dev/null 2>&1 &
other=$!
wait_for 20 increased thp_collapse_alloc "$collapsed"
ok $? "an unbound process is collapsed meanwhile: khugepaged did not stall"
hp=$(awk '/^AnonHugePages:/ { s += $2 } END { print s + 0 }' /proc/$tenant/smaps 2>/dev/null)
check_eq "the tenant got no huge page from outside its partition" 0 "${hp:-0}"
kill $tenant $other
wait
set -- $saved
echo "$1" >$K/alloc_sleep_millisecs
echo "$2" >$K/scan_sleep_millisecs
echo "$3" >$K/pages_to_scan
i=0
while [ $i -lt 50 ] && ! grep -qx free $H/partitions/part*/state; do
	sleep 0.1
	i=$((i + 1))
done
check "the tenant's partition is free again" grep -qx free $H/partitions/part*/state
tap_done
