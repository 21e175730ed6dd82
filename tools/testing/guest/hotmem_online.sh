#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Online every offline memory block into HotMem through sysfs (the generic
# path for memory added by any driver) and check the partitions, counters
# and that ordinary allocations never land in ZONE_HOTMEM.
#
# usage: hotmem_online.sh EXPECTED_PARTITIONS
. "$(dirname "$0")/tap.sh"
want=${1:?expected number of partitions}
H=/sys/kernel/mm/hotmem
tap_plan 12

check_eq "hotmem is enabled" 1 "$(cat $H/enabled)"
psize=$(cat $H/partition_size)
bsize=$((0x$(cat /sys/devices/system/memory/block_size_bytes)))
free_before=$(meminfo_kb MemFree)

n=0
fail=0
for b in /sys/devices/system/memory/memory*; do
	[ "$(cat "$b/state")" = offline ] || continue
	echo online_hotmem >"$b/state" || fail=1
	n=$((n + 1))
done
ok $fail "online_hotmem accepted for $n offline blocks"
check_eq "blocks form $want partitions" "$want" "$(cat $H/nr_partitions)"

states=$(cat $H/partitions/part*/state | sort | uniq -c | awk '{ print $2 "=" $1 }' | tr '\n' ' ')
check_eq "every partition is free" "free=$want " "$states"

total_kb=$(meminfo_kb HotMemTotal)
check_eq "HotMemTotal is the onlined memory" $((n * bsize / 1024)) "$total_kb"
check_eq "HotMemFree equals HotMemTotal" "$total_kb" "$(meminfo_kb HotMemFree)"

free_after=$(meminfo_kb MemFree)
# HotMem is not in MemFree: only bound tasks can use it.  Allow 8 MiB of noise.
d=$((free_after - free_before)); [ $d -lt 0 ] && d=$((-d))
check "MemFree does not include HotMem" [ $d -lt 8192 ]

check "zoneinfo shows a populated HotMem zone" \
	sh -c "awk '/zone +HotMem/ { z = 1 } z && /present/ { print \$2; exit }' /proc/zoneinfo | grep -qv '^0$'"

check "partition_size cannot change while partitions exist" \
	sh -c "! echo $psize >$H/partition_size"
check "bad partition_size is refused" sh -c "! echo 12345 >$H/partition_size"

# Fill tmpfs (shmem) and page cache, and run an anonymous hog: none of it
# may come from HotMem.
dd if=/dev/zero of=/dev/shm/fill bs=1M count=128 2>/dev/null
dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>/dev/null
cat /tmp/fill >/dev/null
check_eq "shmem, page cache and unbound tasks stay out of HotMem" \
	"$total_kb" "$(meminfo_kb HotMemFree)"
rm -f /dev/shm/fill /tmp/fill

used=$(cat $H/partitions/part*/used_pages | awk '{ s += $1 } END { print s + 0 }')
check_eq "no partition has a used page" 0 "$used"
tap_done
