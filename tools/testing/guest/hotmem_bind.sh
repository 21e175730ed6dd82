#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Binding and routing: run after hotmem_online.sh has made at least two
# free partitions.  Checks that bound anonymous memory (faults, COW, THP)
# comes from the partition and nothing else does, that the binding follows
# fork and exec and ends with the last process, that a full partition
# OOM-kills only its own processes, that a new instance sees zeroed memory,
# that binders wait for a free partition, and that bound partitions cannot
# be offlined.
. "$(dirname "$0")/tap.sh"
H=/sys/kernel/mm/hotmem
tap_plan 23

total=$(meminfo_kb HotMemTotal)
psize=$(cat $H/partition_size)
part_pages=$((psize / 4096))
bound_used() { cat $H/partitions/part*/used_pages | awk '{ s += $1 } END { print s + 0 }'; }
nbound() { grep -l bound $H/partitions/part*/state 2>/dev/null | wc -l; }
settle() {  # wait up to 5 s for every partition to be free again
	i=0
	while [ $i -lt 50 ]; do
		[ "$(grep -vl free $H/partitions/part*/state 2>/dev/null | wc -l)" = 0 ] &&
			[ "$(meminfo_kb HotMemFree)" = "$total" ] && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}
wait_for() {  # wait_for CMD...: up to 10 s for CMD to succeed (slow TCG guests)
	i=0
	while [ $i -lt 100 ]; do
		"$@" && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}
used_at_least() { [ "$(bound_used)" -ge "$1" ]; }

out=$(hotmem-run --nonblock -v -- sh -c "cat $H/partitions/part*/state" 2>&1)
echo "$out" | grep -q "bound to partition" && echo "$out" | grep -qx bound
ok $? "hotmem-run binds and the partition shows as bound"
settle
ok $? "the partition is free again after exit"

allocs=$(vmstat hotmem_alloc)
hotmem-run -- hotmem-memhog --size 64M --hold 10s >/tmp/hog.out 2>&1 &
hog=$!
wait_for used_at_least 16384
ok $? "64 MiB of bound anonymous memory is in the partition"
check "the bound partition has one user" grep -qx 1 $(grep -l bound $H/partitions/part*/state | sed 's/state$/users/')
check "HotMemFree dropped accordingly" [ $(( total - $(meminfo_kb HotMemFree) )) -ge 65536 ]
bsize=$((0x$(cat /sys/devices/system/memory/block_size_bytes)))
start=$(cat $(grep -l bound $H/partitions/part*/state | sed 's/state$/start_phys/'))
blk=/sys/devices/system/memory/memory$((start / bsize))
err=$(echo offline 2>&1 >$blk/state)
echo "$err" | grep -q "busy" && [ "$(cat $blk/state)" = online ]
ok $? "a block of a bound partition cannot be offlined (EBUSY), nothing changes"
kill $hog
wait
check "hotmem_alloc counted the allocations" [ $(( $(vmstat hotmem_alloc) - allocs )) -ge 16384 ]
settle
ok $? "exit leaves no used page behind"

# fork + exec: sh is exec'd bound, memhog is its child, memhog forks again.
allocs=$(vmstat hotmem_alloc)
hotmem-run -- sh -c 'hotmem-memhog --size 16M --fork --hold 3s; true' >/dev/null 2>&1 &
bound_users() { cat $(grep -l bound $H/partitions/part*/state | sed 's/state$/users/') 2>/dev/null; }
two_users() { [ "$(bound_users)" -ge 2 ] 2>/dev/null; }
wait_for two_users
ok $? "fork and exec share the binding (users=$(bound_users))"
wait
# 4096 pages touched by memhog, 4096 more for its child's COW copies.
check "COW copies of the child came from the partition" [ $(( $(vmstat hotmem_alloc) - allocs )) -ge 8192 ]
settle
ok $? "the partition is freed with the last process"

# THP: PMD-size folios come from the partition too.
thp_before=$(vmstat thp_fault_alloc)
hotmem-run -- hotmem-memhog --size 64M --thp --hold 10s >/dev/null 2>&1 &
hog=$!
thp_seen() { [ "$(vmstat thp_fault_alloc)" -gt "$thp_before" ]; }
wait_for thp_seen
ok $? "THP faults of a bound process are served"
wait_for used_at_least 16384
ok $? "and their memory is in the partition"
kill $hog
wait
settle

# Page cache and tmpfs written by a bound process stay out of HotMem.
hotmem-run -- sh -c 'dd if=/dev/zero of=/dev/shm/bound bs=1M count=32 2>/dev/null; cat /dev/shm/bound >/dev/null'
settle
ok $? "tmpfs and page cache of a bound process are not in HotMem"
rm -f /dev/shm/bound

# Overflow: an instance that outgrows its partition is OOM-killed, alone.
# Like a memcg OOM, it does not panic the VM under panic_on_oom=1.
echo 1 >/proc/sys/vm/panic_on_oom
oom_before=$(vmstat oom_kill)
sleep 30 &
bystander=$!
hotmem-run -- hotmem-memhog --size $((psize / 1048576 + 64))M >/dev/null 2>&1
rc=$?
echo 0 >/proc/sys/vm/panic_on_oom
check_eq "an instance larger than its partition is OOM-killed" 137 "$rc"
check "only its own process was killed" kill -0 $bystander
kill $bystander
settle
ok $? "the partition is free after the OOM kill"

# Bind timeouts: a short one expires; one past 32 bits of milliseconds
# waits (msecs_to_jiffies() takes an unsigned int: 2^32 + 1 ms was 1 ms).
n=$(cat $H/nr_partitions)
i=0
while [ $i -lt "$n" ]; do
	hotmem-run -- sleep 8 >/dev/null 2>&1 &
	i=$((i + 1))
done
all_bound() { [ "$(nbound)" = "$n" ]; }
wait_for all_bound
hotmem-run --timeout 200ms -- true 2>/dev/null
check_eq "with every partition bound, a 200 ms bind times out" 125 "$?"
hotmem-run --timeout 4294967297ms -- true >/dev/null 2>&1 &
long=$!
sleep 1
check "a bind timeout of 2^32 + 1 ms is still waiting after 1 s" kill -0 $long
wait
settle
ok $? "the long-timeout binder got a partition once one was free, and exited"

# Fresh memory is zero: dirty every partition, then check a new instance.
n=$(cat $H/nr_partitions)
i=0
while [ $i -lt "$n" ]; do
	hotmem-run -- hotmem-memhog --size $((psize / 1048576 - 32))M --fill 165 --hold 1500ms >/dev/null 2>&1 &
	i=$((i + 1))
done
sleep 1
hotmem-run --nonblock -- true 2>/dev/null
check_eq "with every partition bound, --nonblock fails" 125 "$?"
waits=$(vmstat hotmem_bind_wait)
hotmem-run -- hotmem-memhog --size $((psize / 1048576 - 32))M --check-zero >/tmp/zero.out 2>&1
rc=$?
wait
check "a waiting binder got a partition once one was free" [ "$(vmstat hotmem_bind_wait)" -gt "$waits" ]
check_eq "a new instance sees only zeroed memory" 0 "$rc"
settle
tap_done
