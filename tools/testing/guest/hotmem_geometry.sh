#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Partition geometry from the boot parameters and at runtime through sysfs.
#
# usage: hotmem_geometry.sh empty     no memory plugged yet; booted with
#                                     hotmem_partition_size=256M
#        hotmem_geometry.sh plugged   two offline 128 MiB blocks plugged
. "$(dirname "$0")/tap.sh"
H=/sys/kernel/mm/hotmem
M=/sys/devices/system/memory
phase=${1:?empty or plugged}

refused() {  # refused FILE VALUE: the write fails and FILE keeps its value
	before=$(cat "$1")
	! echo "$2" 2>/dev/null >"$1" && [ "$(cat "$1")" = "$before" ]
}

case $phase in
empty)
	tap_plan 9
	check_eq "hotmem_partition_size= set the size" 268435456 "$(cat $H/partition_size)"
	check_eq "hotmem_partitions= defaults to 64" 64 "$(cat $H/max_partitions)"
	check "a size that is not a power of two is refused" refused $H/partition_size 100M
	check "a size below the memory block size is refused" refused $H/partition_size 64M
	check "garbage is refused" refused $H/partition_size 1G2
	check "max_partitions=0 is refused" refused $H/max_partitions 0
	echo 128M >$H/partition_size
	check_eq "partition_size can be changed while nothing is online" 134217728 "$(cat $H/partition_size)"
	echo 1 >$H/max_partitions
	check_eq "max_partitions can be changed while nothing is online" 1 "$(cat $H/max_partitions)"
	check_eq "no partition exists" 0 "$(cat $H/nr_partitions)"
	;;
plugged)
	tap_plan 8
	blocks=$(for b in $M/memory*; do [ "$(cat $b/state)" = offline ] && echo $b; done)
	first=$(echo "$blocks" | head -n 1)
	second=$(echo "$blocks" | sed -n 2p)
	echo online_hotmem >$first/state
	ok $? "the first 128 MiB block becomes a partition"
	err=$(echo online_hotmem 2>&1 >$second/state)
	echo "$err" | grep -q "No space left"
	ok $? "a second partition beyond max_partitions=1 is refused (ENOSPC)"
	check_eq "the refused block stays offline" offline "$(cat $second/state)"
	check_eq "one partition exists" 1 "$(cat $H/nr_partitions)"
	check "partition_size cannot change while a partition exists" refused $H/partition_size 256M
	check "max_partitions cannot change while a partition exists" refused $H/max_partitions 2
	echo offline >$first/state
	echo 2 >$H/max_partitions
	echo online_hotmem >$first/state && echo online_hotmem >$second/state
	ok $? "with the limit raised both blocks go online"
	check_eq "and form two partitions" "free free" "$(cat $H/partitions/part*/state | tr '\n' ' ' | sed 's/ $//')"
	;;
*)
	echo "usage: $0 empty|plugged" >&2
	exit 2
	;;
esac
tap_done
