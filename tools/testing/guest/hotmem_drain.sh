#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# The slow offline path: run with at least one free partition.  A bound
# process vmsplice()s its memory into a pipe held by an unbound shell and
# exits, so the partition has no user but still has referenced pages
# (DRAINING).  Offlining it must fail with EBUSY and leave the pages alone;
# once the pipe is read while an offline is retrying, the offline completes
# on the slow path and the data read from the pipe is intact.
. "$(dirname "$0")/tap.sh"
H=/sys/kernel/mm/hotmem
tap_plan 12

SIZE=262144	# 64 pages
fifo=/tmp/hotmem-drain.fifo
rm -f $fifo /tmp/drain.out
mkfifo $fifo
exec 3<>$fifo

hotmem-run -- hotmem-splice --size $SIZE --fill 0xa5 $fifo
ok $? "a bound process vmsplices 256 KiB of its memory into a pipe and exits"

state=$(grep -l draining $H/partitions/part*/state | head -n 1)
dir=${state%/state}
check "its partition is draining" [ -n "$state" ]
[ -n "$state" ] || { tap_done; }
used=$(cat $dir/used_pages)
check "the pipe keeps its 64 pages in use (used_pages=$used)" [ "$used" -ge 64 ]
check_eq "the partition has no user" 0 "$(cat $dir/users)"

bsize=$((0x$(cat /sys/devices/system/memory/block_size_bytes)))
blk=/sys/devices/system/memory/memory$(($(cat $dir/start_phys) / bsize))
slow=$(vmstat hotmem_offline_slow)
err=$(echo offline 2>&1 >$blk/state)
echo "$err" | grep -q busy
ok $? "offlining a block of it fails with EBUSY while the pipe holds the pages"
check_eq "the block stays online" online "$(cat $blk/state)"
check_eq "the pages stay in use" "$used" "$(cat $dir/used_pages)"

# Read the pipe only once the offline below is under way: this shell then
# sleeps in the kernel (state D) between the slow path's passes.
shell=$$
(
	i=0
	while [ $i -lt 200 ] && [ "$(cut -d' ' -f3 /proc/$shell/stat)" != D ]; do
		sleep 0.02
		i=$((i + 1))
	done
	sleep 0.3
	head -c $SIZE <&3 >/tmp/drain.out
) &
reader=$!
echo offline >$blk/state
ok $? "offlining succeeds once the pipe has been read meanwhile"
wait $reader
check_eq "that offline took the slow path" $((slow + 1)) "$(vmstat hotmem_offline_slow)"
head -c $SIZE /dev/zero | tr '\000' '\245' >/tmp/drain.ref
check "the pipe delivered the data intact" cmp /tmp/drain.ref /tmp/drain.out
check_eq "the partition has no used page left" 0 "$(cat $dir/used_pages)"

echo online_hotmem >$blk/state
check_eq "onlining the block again makes the partition free" free "$(cat $dir/state)"
exec 3>&-
rm -f $fifo /tmp/drain.out /tmp/drain.ref
tap_done
