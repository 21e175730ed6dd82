// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: the partition geometry, from the boot parameters and at runtime
 * through /sys/kernel/mm/hotmem.  Two phases, one fixture each:
 *
 *   hotmem_geometry -f empty     nothing plugged yet: the boot parameters
 *                                (hotmem_partition_size=, hotmem_partitions=,
 *                                read back from /proc/cmdline) took effect,
 *                                bad values are refused, good ones accepted
 *   hotmem_geometry -f plugged   two offline memory blocks and no partition:
 *                                max_partitions limits onlining, and the
 *                                geometry is fixed while partitions exist
 *
 * Needs root and hotmem=on; the plugged phase leaves both blocks online
 * as two free partitions of one block each.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <sys/mman.h>

#include "../kselftest_harness.h"
#include "hotmem_util.h"

#define DEFAULT_PARTITION_SIZE	(128 * MIB)
#define DEFAULT_PARTITIONS	64

/* @what= of the kernel command line, or NULL. */
static char *cmdline_param(const char *what, char *buf, size_t len)
{
	char cmdline[4096], *p, *end;
	size_t wlen = strlen(what);

	if (hm_read_str("/proc/cmdline", cmdline, sizeof(cmdline)))
		return NULL;
	for (p = cmdline; (p = strstr(p, what)); p += wlen) {
		if ((p != cmdline && p[-1] != ' ') || p[wlen] != '=')
			continue;
		p += wlen + 1;
		end = p + strcspn(p, " ");
		snprintf(buf, len, "%.*s", (int)(end - p), p);
		return buf;
	}
	return NULL;
}

/* The kernel's memparse(): a number with an optional K, M or G suffix. */
static unsigned long memparse(const char *s)
{
	static const char suffixes[] = "KMG";
	const char *suffix;
	char *end;
	unsigned long v = strtoul(s, &end, 0);

	suffix = *end ? strchr(suffixes, toupper(*end)) : NULL;
	if (suffix)
		v <<= 10 * (suffix - suffixes + 1);
	return v;
}

#define SIZE_FILE	HOTMEM "/partition_size"
#define MAX_FILE	HOTMEM "/max_partitions"

FIXTURE(empty)
{
	char size[32], max[32];
};

FIXTURE_SETUP(empty)
{
	if (!hm_enabled())
		SKIP(return, "HotMem is off");
	ASSERT_EQ(0UL, hm_read_ulong(HOTMEM "/nr_partitions"));
	ASSERT_EQ(0, hm_read_str(SIZE_FILE, self->size, sizeof(self->size)));
	ASSERT_EQ(0, hm_read_str(MAX_FILE, self->max, sizeof(self->max)));
}

FIXTURE_TEARDOWN(empty)
{
	hm_write_str(SIZE_FILE, self->size);
	hm_write_str(MAX_FILE, self->max);
}

TEST_F(empty, boot_parameters_set_the_geometry)
{
	unsigned long size = DEFAULT_PARTITION_SIZE, max = DEFAULT_PARTITIONS;
	char buf[64];

	if (cmdline_param("hotmem_partition_size", buf, sizeof(buf)))
		size = memparse(buf);
	if (cmdline_param("hotmem_partitions", buf, sizeof(buf)))
		max = strtoul(buf, NULL, 0);
	TH_LOG("expecting partition_size %lu, max_partitions %lu", size, max);
	EXPECT_EQ(size, hm_partition_size());
	EXPECT_EQ(max, hm_read_ulong(MAX_FILE));
}

TEST_F(empty, bad_geometry_is_refused)
{
	ASSERT_LT(64 * MIB, hm_block_size()) TH_LOG("needs blocks above 64 MiB");
	refused(_metadata, SIZE_FILE, "100M", EINVAL);	/* not a power of two */
	refused(_metadata, SIZE_FILE, "64M", EINVAL);	/* below the block size */
	refused(_metadata, SIZE_FILE, "1G2", EINVAL);
	refused(_metadata, MAX_FILE, "0", EINVAL);
}

TEST_F(empty, geometry_changes_while_nothing_is_online)
{
	ASSERT_EQ(0, hm_write_str(SIZE_FILE, "128M"));
	EXPECT_EQ(128 * MIB, hm_partition_size());
	ASSERT_EQ(0, hm_write_str(SIZE_FILE, "512M"));
	EXPECT_EQ(512 * MIB, hm_partition_size());
	ASSERT_EQ(0, hm_write_str(MAX_FILE, "1"));
	EXPECT_EQ(1UL, hm_read_ulong(MAX_FILE));
	ASSERT_EQ(0, hm_write_str(MAX_FILE, "7"));
	EXPECT_EQ(7UL, hm_read_ulong(MAX_FILE));
	EXPECT_EQ(0UL, hm_read_ulong(HOTMEM "/nr_partitions"));
}

/*
 * Two offline blocks; the geometry is one block per partition and at most
 * one partition.
 */
FIXTURE(plugged)
{
	long blocks[2];
};

FIXTURE_SETUP(plugged)
{
	char size[32];

	if (!hm_enabled())
		SKIP(return, "HotMem is off");
	ASSERT_EQ(0UL, hm_read_ulong(HOTMEM "/nr_partitions"));
	ASSERT_EQ(2, hm_offline_blocks(self->blocks, 2));
	snprintf(size, sizeof(size), "%lu", hm_block_size());
	ASSERT_EQ(0, hm_write_str(SIZE_FILE, size));
	ASSERT_EQ(0, hm_write_str(MAX_FILE, "1"));
}

FIXTURE_TEARDOWN(plugged)
{
}

/* The bound instance of one_instance_per_partition. */
static int instance(struct hm_child *c, void *arg)
{
	size_t len = 64 * MIB;
	struct hm_part p;
	long id;
	char *buf;

	id = hm_bind(PR_HOTMEM_NONBLOCK, 0);
	if (id < 0)
		return hm_fail(1, "bind: %s", strerror(-id));
	if (hm_part_range(id, &p))
		return 2;
	buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 3;
	hm_fill(buf, len, id);
	if (hm_pages_outside(&p, buf, len))
		return hm_fail(4, "pages outside partition %ld", id);
	hm_child_ready(c, id);
	hm_child_hold(c);
	return hm_check(buf, len, id) < 0 ? 0 : hm_fail(5, "data lost");
}

TEST_F(plugged, max_partitions_limits_onlining)
{
	long first = self->blocks[0], second = self->blocks[1];
	struct hm_child c[2];
	long ids[2];
	int ret, i;

	ret = hm_block_set(first, "online_hotmem");
	ASSERT_EQ(0, ret) TH_LOG("online_hotmem: %s", strerror(-ret));
	EXPECT_EQ(-ENOSPC, hm_block_set(second, "online_hotmem"));
	EXPECT_TRUE(hm_block_is(second, "offline"));
	EXPECT_EQ(1UL, hm_read_ulong(HOTMEM "/nr_partitions"));
	refused(_metadata, SIZE_FILE, "256M", EBUSY);
	refused(_metadata, MAX_FILE, "2", EBUSY);

	/* Raise the limit: both blocks go online, as two free partitions. */
	ASSERT_EQ(0, hm_block_set(first, "offline"));
	ASSERT_EQ(0, hm_write_str(MAX_FILE, "2"));
	EXPECT_EQ(0, hm_block_set(first, "online_hotmem"));
	EXPECT_EQ(0, hm_block_set(second, "online_hotmem"));
	EXPECT_EQ(2UL, hm_read_ulong(HOTMEM "/nr_partitions"));
	EXPECT_EQ(2, hm_count_in("free"));

	/* An instance in each, its memory inside the one-block partition. */
	for (i = 0; i < 2; i++) {
		ASSERT_EQ(0, hm_child_start(&c[i], instance, NULL));
		ASSERT_EQ(0, hm_child_wait_ready(&c[i], &ids[i], 60000));
	}
	EXPECT_NE(ids[0], ids[1]);
	for (i = 0; i < 2; i++)
		EXPECT_EQ(0, hm_child_wait(&c[i]));
	EXPECT_TRUE(hm_settle());
}

TEST_HARNESS_MAIN
