#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Hardware-poisoned pages: run after hotmem_online.sh has made one free
# partition, on a kernel with CONFIG_MEMORY_FAILURE.  A poisoned page in
# use must not keep its partition draining once its instance is gone; a
# poisoned free page must never be handed to an instance.  Both are counted
# in poisoned_pages, and the partition still goes on the fast path.
. "$(dirname "$0")/tap.sh"
H=/sys/kernel/mm/hotmem
tap_plan 9

P=$(ls -d $H/partitions/part* | head -n 1)
state() { cat $P/state; }
wait_free() {
	i=0
	while [ $i -lt 100 ]; do
		[ "$(state)" = free ] && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}
managed=$(cat $P/managed_pages)

# In use: the instance poisons one of its own pages (memory-failure unmaps
# it; the instance is killed with SIGBUS if it touches it again, which
# memhog does not) and exits.
hotmem-run -- hotmem-memhog --size 32M --hwpoison >/dev/null 2>&1
rc=$?
[ "$rc" = 0 ] || [ "$rc" = 135 ]
ok $? "the instance poisoned a page of its own and ended (status $rc)"
wait_free
ok $? "its partition is free, not draining (state $(state))"
check_eq "one poisoned page" 1 "$(cat $P/poisoned_pages)"
check_eq "no used page" 0 "$(cat $P/used_pages)"

# Free: poison a free page in the middle of the partition.
free_before=$(cat $P/free_pages)
start=$(($(cat $P/start_phys)))
echo $((start + $(cat $H/partition_size) / 2)) >/sys/devices/system/memory/hard_offline_page
ok $? "hard_offline_page of a free partition page"
check_eq "two poisoned pages" 2 "$(cat $P/poisoned_pages)"
check_eq "the free page left the free lists" $((free_before - 1)) "$(cat $P/free_pages)"

# Every other page is still usable, and nothing else breaks: an instance
# takes all the free memory, checking that it is zeroed, and exits.
mb=$((free_before * 4 / 1024 - 8))
hotmem-run -- hotmem-memhog --size ${mb}M --check-zero --fill 90 >/dev/null 2>&1
check_eq "an instance uses the rest of the partition" 0 "$?"
wait_free
ok $? "and leaves it free again"
tap_done
