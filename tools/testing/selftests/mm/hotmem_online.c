// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: memory onlined with online_hotmem through sysfs (the generic
 * path for memory that any driver added) forms free partitions, the
 * counters agree, and ordinary allocations (page cache, shmem, unbound
 * anonymous memory) never land in ZONE_HOTMEM.
 *
 * The first test onlines every offline memory block into HotMem; the
 * others need the partitions it made.  HOTMEM_PARTITIONS is the number of
 * partitions the blocks must form (default: their size divided by
 * partition_size).
 *
 * Needs root, hotmem=on and offline memory blocks (e.g. from virtio_mem
 * in big block mode).
 */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "../kselftest_harness.h"
#include "hotmem_util.h"

#define MAX_BLOCKS	256
#define CHUNK		MIB

FIXTURE(online)
{
};

FIXTURE_SETUP(online)
{
	if (!hm_enabled())
		SKIP(return, "HotMem is off");
}

FIXTURE_TEARDOWN(online)
{
}

/* Present pages of the HotMem zones of every node, from /proc/zoneinfo. */
static unsigned long hotmem_zone_present(void)
{
	unsigned long sum = 0, v;
	bool in_zone = false;
	char line[256], zone[64];
	FILE *f;

	f = fopen("/proc/zoneinfo", "r");
	if (!f)
		return ULONG_MAX;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "Node %*d, zone %63s", zone) == 1)
			in_zone = !strcmp(zone, "HotMem");
		else if (in_zone && sscanf(line, " present %lu", &v) == 1)
			sum += v;
	}
	fclose(f);
	return sum;
}

TEST_F(online, offline_blocks_become_free_partitions)
{
	unsigned long bsize = hm_block_size(), psize = hm_partition_size();
	unsigned long free_before, free_after, total, want;
	long blocks[MAX_BLOCKS];
	const char *env;
	int i, n, ret;
	long d;

	ASSERT_EQ(1UL, hm_read_ulong(HOTMEM "/enabled"));
	ASSERT_NE(0UL, bsize);
	ASSERT_NE(ULONG_MAX, psize);
	ASSERT_EQ(0UL, hm_read_ulong(HOTMEM "/nr_partitions"))
		TH_LOG("run on a guest without partitions");
	n = hm_offline_blocks(blocks, MAX_BLOCKS);
	ASSERT_LT(0, n) TH_LOG("no offline memory block");
	env = getenv("HOTMEM_PARTITIONS");
	want = env ? strtoul(env, NULL, 10) : n * bsize / psize;

	free_before = hm_meminfo_kb("MemFree");
	for (i = 0; i < n; i++) {
		ret = hm_block_set(blocks[i], "online_hotmem");
		EXPECT_EQ(0, ret)
			TH_LOG("online_hotmem of memory%ld: %s", blocks[i],
			       strerror(-ret));
		EXPECT_TRUE(hm_block_is(blocks[i], "online"));
	}
	TH_LOG("%d blocks of %lu MiB onlined", n, bsize / MIB);

	EXPECT_EQ(want, hm_read_ulong(HOTMEM "/nr_partitions"));
	EXPECT_EQ((int)want, hm_count_in("free"))
		TH_LOG("not every partition is free");
	EXPECT_EQ((int)want, hm_partitions(blocks, MAX_BLOCKS));

	total = hm_meminfo_kb("HotMemTotal");
	EXPECT_EQ(n * bsize / 1024, total);
	EXPECT_EQ(total, hm_meminfo_kb("HotMemFree"));
	EXPECT_EQ(total / 4, hm_sum("managed_pages"));
	EXPECT_EQ(total / 4, hm_sum("free_pages"));
	EXPECT_EQ(total / 4, hotmem_zone_present());

	/* Only bound tasks can use HotMem: it is not in MemFree (8 MiB noise). */
	free_after = hm_meminfo_kb("MemFree");
	d = (long)free_after - (long)free_before;
	EXPECT_GT(8192, labs(d))
		TH_LOG("MemFree went from %lu to %lu kB", free_before, free_after);
}

TEST_F(online, geometry_is_fixed_while_partitions_exist)
{
	char before[32], after[32];

	ASSERT_LT(0UL, hm_read_ulong(HOTMEM "/nr_partitions"));
	ASSERT_EQ(0, hm_read_str(HOTMEM "/partition_size", before, sizeof(before)));
	/* Even the current value: the geometry cannot be touched. */
	EXPECT_EQ(-EBUSY, hm_write_str(HOTMEM "/partition_size", before));
	EXPECT_EQ(-EINVAL, hm_write_str(HOTMEM "/partition_size", "12345"));
	EXPECT_EQ(-EBUSY, hm_write_str(HOTMEM "/max_partitions", "64"));
	ASSERT_EQ(0, hm_read_str(HOTMEM "/partition_size", after, sizeof(after)));
	EXPECT_STREQ(before, after);
}

/* Writes @mib MiB of pattern to @path; 0 or -errno. */
static int write_pattern(const char *path, unsigned long mib, uint64_t seed)
{
	char *buf = malloc(CHUNK);
	unsigned long i;
	int fd, ret = 0;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || !buf) {
		ret = -errno;
		goto out;
	}
	for (i = 0; i < mib && !ret; i++) {
		hm_fill(buf, CHUNK, seed + i);
		if (write(fd, buf, CHUNK) != CHUNK)
			ret = -EIO;
	}
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return ret;
}

/* Reads @path back: the offset of the first bad byte, or -1. */
static long check_pattern(const char *path, unsigned long mib, uint64_t seed)
{
	char *buf = malloc(CHUNK);
	ssize_t bad = -1;
	unsigned long i;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd < 0 || !buf) {
		bad = 0;
		goto out;
	}
	for (i = 0; i < mib && bad < 0; i++) {
		if (read(fd, buf, CHUNK) != CHUNK) {
			bad = i * CHUNK;
			break;
		}
		bad = hm_check(buf, CHUNK, seed + i);
		if (bad >= 0)
			bad += i * CHUNK;
	}
	if (bad < 0 && read(fd, buf, 1) != 0)
		bad = mib * CHUNK;
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return bad;
}

/*
 * tmpfs (shmem), page cache and an unbound process's anonymous memory all
 * come from ordinary memory while they exist, and keep their data.
 */
TEST_F(online, ordinary_allocations_stay_out_of_hotmem)
{
	const char *shm = "/dev/shm/hotmem_online", *file = "/tmp/hotmem_online";
	size_t len = 64 * MIB;
	unsigned long total;
	char *anon;

	total = hm_meminfo_kb("HotMemTotal");
	ASSERT_LT(0UL, total);
	ASSERT_EQ(total, hm_meminfo_kb("HotMemFree"));

	ASSERT_EQ(0, write_pattern(shm, 128, 1));
	ASSERT_EQ(0, write_pattern(file, 64, 2));
	EXPECT_EQ(-1, check_pattern(file, 64, 2));
	anon = mmap(NULL, len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, anon);
	hm_fill(anon, len, 3);

	EXPECT_EQ(total, hm_meminfo_kb("HotMemFree"));
	EXPECT_EQ(0UL, hm_sum("used_pages"));
	EXPECT_EQ(0UL, hm_pages_in_hotmem(anon, len));

	EXPECT_EQ(-1, check_pattern(shm, 128, 1));
	EXPECT_EQ(-1, check_pattern(file, 64, 2));
	EXPECT_EQ(-1, hm_check(anon, len, 3));
	unlink(shm);
	unlink(file);
	munmap(anon, len);
}

TEST_HARNESS_MAIN
