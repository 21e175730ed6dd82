// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: binding, exiting and offlining race each other.
 *
 * Several workers bind, fill memory with a pattern, check it and exit, in
 * a loop, while another process offlines and re-onlines the partitions'
 * memory blocks as fast as it can.  An offline must only ever succeed on a
 * block whose partition nobody uses (or fail with EBUSY/EAGAIN), a bound
 * instance must never lose data or see a page outside its partition, and
 * at the end every partition is free with all its pages, nobody waits,
 * and HotMemFree equals HotMemTotal.
 *
 * Needs root and a HotMem guest with at least two free partitions onlined
 * through sysfs (memory blocks the test can offline and online again).
 */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "../kselftest_harness.h"
#include "hotmem_util.h"

#define BUF_SIZE	(8UL << 20)
#define WORKERS		3
#define SECONDS		30
#define MAX_BLOCKS	64

/* The memory block numbers of every partition, from their start and size. */
static int partition_blocks(long *blocks, int max)
{
	unsigned long bsize = hm_block_size(), psize = hm_partition_size();
	long ids[HOTMEM_MAX_PARTS], b, first;
	int i, n, nr = 0;

	n = hm_partitions(ids, HOTMEM_MAX_PARTS);
	if (n < 0 || !bsize || psize == ULONG_MAX)
		return -1;
	for (i = 0; i < n; i++) {
		first = hm_part_block(ids[i]);
		for (b = first; b < first + (long)(psize / bsize) && nr < max; b++)
			blocks[nr++] = b;
	}
	return nr;
}

/* Whether every page of @buf is inside partition @id. */
static bool in_partition(const char *buf, size_t len, long id)
{
	struct hm_part p;

	return !hm_part_range(id, &p) && !hm_pages_outside(&p, buf, len) &&
	       hm_pages_with(buf, len, PM_PRESENT) == len / PAGE;
}

/*
 * One instance: bind (waiting at most 2 s), fill, let the offliner have a
 * go, check.  Exit status 0: fine; 2: no partition in time; 1: data lost or
 * a page outside the partition.
 */
static void instance(uint64_t seed)
{
	long id = hm_bind(0, 2000);
	char *buf;

	if (id < 0)
		_exit(id == -ETIMEDOUT ? 2 : 3);
	buf = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		_exit(3);
	hm_fill(buf, BUF_SIZE, seed);
	usleep(20000);
	if (hm_check(buf, BUF_SIZE, seed) >= 0 || !in_partition(buf, BUF_SIZE, id))
		_exit(1);
	_exit(0);
}

/* Bind/exit in a loop until @end; returns instances that lost data. */
static int worker(time_t end, int w, int *ran)
{
	int status, bad = 0;
	uint64_t seed = w;
	pid_t pid;

	*ran = 0;
	while (time(NULL) < end) {
		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		pid = fork();
		if (pid < 0)
			return -1;
		if (!pid)
			instance(seed);
		if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
			return -1;
		switch (WEXITSTATUS(status)) {
		case 0:
			(*ran)++;
			break;
		case 2:
			break;
		default:
			bad++;
		}
	}
	return bad;
}

/*
 * Offline and re-online the blocks in turn until @end.  Returns the number
 * of offlines that succeeded, or -1 on an unexpected error (an errno other
 * than EBUSY or EAGAIN, or a block that would not come back online).
 */
static int offliner(time_t end, const long *blocks, int n)
{
	int i = 0, done = 0, ret;

	while (time(NULL) < end) {
		ret = hm_block_set(blocks[i], "offline");
		if (!ret) {
			done++;
			if (hm_block_set(blocks[i], "online_hotmem"))
				return -1;
		} else if (ret != -EBUSY && ret != -EAGAIN) {
			fprintf(stderr, "# offline of memory%ld: %s\n", blocks[i],
				strerror(-ret));
			return -1;
		}
		if (!hm_block_is(blocks[i], "online"))
			return -1;
		i = (i + 1) % n;
	}
	return done;
}

struct results {
	int bad[WORKERS];	/* instances that lost data, -1: worker failed */
	int ran[WORKERS];	/* instances that bound and checked out */
	int offlined;		/* successful offlines, -1: unexpected error */
};

FIXTURE(race)
{
	long blocks[MAX_BLOCKS];
	int nr_blocks;
};

FIXTURE_SETUP(race)
{
	if (!hm_enabled())
		SKIP(return, "HotMem is off");
	ASSERT_LE(2UL, hm_read_ulong(HOTMEM "/nr_partitions"));
	self->nr_blocks = partition_blocks(self->blocks, MAX_BLOCKS);
	ASSERT_LT(0, self->nr_blocks);
}

FIXTURE_TEARDOWN(race)
{
}

/* Every partition free with all its pages, and as many as before. */
static bool settled(unsigned long total_kb)
{
	return hm_settle() && hm_meminfo_kb("HotMemTotal") == total_kb;
}

TEST_F_TIMEOUT(race, bind_exit_and_offline, 300)
{
	unsigned long total = hm_meminfo_kb("HotMemTotal");
	time_t end = time(NULL) + SECONDS;
	struct results *res;
	int w, status, bad = 0, ran = 0;
	pid_t pid[WORKERS + 1];

	res = mmap(NULL, sizeof(*res), PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, res);
	for (w = 0; w <= WORKERS; w++) {
		pid[w] = fork();
		ASSERT_LE(0, pid[w]);
		if (pid[w])
			continue;
		if (w < WORKERS)
			res->bad[w] = worker(end, w, &res->ran[w]);
		else
			res->offlined = offliner(end, self->blocks,
						 self->nr_blocks);
		_exit(0);
	}
	for (w = 0; w <= WORKERS; w++) {
		ASSERT_EQ(pid[w], waitpid(pid[w], &status, 0));
		EXPECT_TRUE(WIFEXITED(status) && !WEXITSTATUS(status));
	}
	for (w = 0; w < WORKERS; w++) {
		EXPECT_LE(0, res->bad[w]);
		bad += res->bad[w];
		ran += res->ran[w];
	}
	TH_LOG("%d instances ran, %d offlines succeeded", ran, res->offlined);
	EXPECT_EQ(0, bad) TH_LOG("instances lost data or left their partition");
	EXPECT_LT(0, ran);
	/* Offlines succeeded: the race with binders was really run. */
	EXPECT_LT(0, res->offlined);
	EXPECT_TRUE(settled(total));
}

TEST_HARNESS_MAIN
