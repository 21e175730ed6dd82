// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: hardware-poisoned pages.  A poisoned page in use must not keep
 * its partition draining once its instance is gone; a poisoned free page
 * must never be handed to an instance.  Both are counted in
 * poisoned_pages, and every other page of the partition stays usable,
 * zeroed and with its data intact.
 *
 * Needs root, CONFIG_MEMORY_FAILURE and a HotMem guest with exactly one
 * free partition (so that every instance gets that one).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/mman.h>

#include "../kselftest_harness.h"
#include "hotmem_util.h"

#ifndef MADV_HWPOISON
#define MADV_HWPOISON	100
#endif

#define HARD_OFFLINE	MEMORY "/hard_offline_page"
#define TIMEOUT		300

FIXTURE(hwpoison)
{
	long id;
	struct hm_part part;
};

FIXTURE_SETUP(hwpoison)
{
	if (!hm_enabled())
		SKIP(return, "HotMem is off");
	if (access(HARD_OFFLINE, F_OK))
		SKIP(return, "needs CONFIG_MEMORY_FAILURE");
	ASSERT_TRUE(hm_settle());
	ASSERT_EQ(1UL, hm_read_ulong(HOTMEM "/nr_partitions"));
	self->id = hm_first_in("free");
	ASSERT_LE(0, self->id);
	ASSERT_EQ(0, hm_part_range(self->id, &self->part));
}

FIXTURE_TEARDOWN(hwpoison)
{
}

/* The SIGBUS for the poisoned page: nothing to do, we do not touch it. */
static void on_sigbus(int sig)
{
}

#define POISON_SIZE	(32 * MIB)

/*
 * The instance poisons the first page of its own memory: memory-failure
 * unmaps it and signals SIGBUS (BUS_MCEERR_AR), which we catch.  Every
 * other page keeps its data.
 */
static int poison_own_page(struct hm_child *c, void *arg)
{
	struct sigaction sa = { .sa_handler = on_sigbus };
	long id;
	char *buf;

	id = hm_bind(0, 30000);
	if (id < 0)
		return hm_fail(1, "bind: %s", strerror(-id));
	buf = mmap(NULL, POISON_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED || sigaction(SIGBUS, &sa, NULL))
		return 2;
	madvise(buf, POISON_SIZE, MADV_NOHUGEPAGE);
	hm_fill(buf, POISON_SIZE, 1);
	if (madvise(buf, PAGE, MADV_HWPOISON))
		return hm_fail(3, "MADV_HWPOISON: %s", strerror(errno));
	if (hm_pages_with(buf, PAGE, PM_PRESENT))
		return hm_fail(4, "the poisoned page is still mapped");
	if (hm_check_from(buf, PAGE, POISON_SIZE, 1) >= 0)
		return hm_fail(5, "the other pages lost data");
	return 0;
}

TEST_F_TIMEOUT(hwpoison, poisoned_page_in_use_does_not_keep_partition_draining, TIMEOUT)
{
	unsigned long poisoned = hm_part_ulong(self->id, "poisoned_pages");
	struct hm_child c;

	ASSERT_EQ(0, hm_child_start(&c, poison_own_page, NULL));
	EXPECT_EQ(0, hm_child_wait(&c));
	EXPECT_TRUE(hm_poll(hm_part_is(self->id, "free"), 10000))
		TH_LOG("the partition stays draining");
	EXPECT_EQ(poisoned + 1, hm_part_ulong(self->id, "poisoned_pages"));
	EXPECT_EQ(0UL, hm_part_ulong(self->id, "used_pages"));
	EXPECT_TRUE(hm_settle());
}

struct rest {
	size_t len;
	unsigned long poisoned_pfn;
};

/*
 * Takes all the free memory of the partition: every byte zero when first
 * faulted, the poisoned page never mapped, all of it inside the partition
 * and holding its pattern.
 */
static int use_the_rest(struct hm_child *c, void *arg)
{
	const struct rest *r = arg;
	uint64_t *ents;
	struct hm_part p;
	size_t off, i;
	long id;
	char *buf;

	id = hm_bind(0, 30000);
	if (id < 0)
		return hm_fail(1, "bind: %s", strerror(-id));
	buf = mmap(NULL, r->len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ents = calloc(r->len / PAGE, sizeof(*ents));
	if (buf == MAP_FAILED || !ents || hm_part_range(id, &p))
		return 2;
	for (off = 0; off < r->len; off += PAGE) {
		buf[off] = 0;
		if (hm_check_byte(buf + off, PAGE, 0) >= 0)
			return hm_fail(3, "page %zu is not zeroed", off / PAGE);
	}
	hm_fill(buf, r->len, 2);
	if (hm_pages_outside(&p, buf, r->len))
		return hm_fail(4, "pages outside the partition");
	if (hm_pagemap(buf, r->len, ents))
		return 5;
	for (i = 0; i < r->len / PAGE; i++)
		if ((ents[i] & PM_PFN_MASK) == r->poisoned_pfn)
			return hm_fail(6, "the poisoned page was handed out");
	return hm_check(buf, r->len, 2) < 0 ? 0 : hm_fail(7, "data lost");
}

TEST_F_TIMEOUT(hwpoison, poisoned_free_page_is_never_handed_out, TIMEOUT)
{
	unsigned long poisoned = hm_part_ulong(self->id, "poisoned_pages");
	unsigned long free_before = hm_part_ulong(self->id, "free_pages");
	unsigned long pfn = self->part.start_pfn +
			    (self->part.end_pfn - self->part.start_pfn) / 2;
	struct rest r = { .poisoned_pfn = pfn };
	struct hm_child c;
	char phys[32];
	int ret;

	snprintf(phys, sizeof(phys), "%#lx", pfn * PAGE);
	ret = hm_write_str(HARD_OFFLINE, phys);
	ASSERT_EQ(0, ret) TH_LOG("hard_offline_page: %s", strerror(-ret));
	EXPECT_EQ(poisoned + 1, hm_part_ulong(self->id, "poisoned_pages"));
	EXPECT_EQ(free_before - 1, hm_part_ulong(self->id, "free_pages"));
	EXPECT_TRUE(hm_part_is(self->id, "free"));

	/* All but 8 MiB of what is free, for the instance's own overhead. */
	r.len = (free_before - 1) * PAGE - 8 * MIB;
	ASSERT_EQ(0, hm_child_start(&c, use_the_rest, &r));
	EXPECT_EQ(0, hm_child_wait(&c));
	EXPECT_TRUE(hm_settle()) TH_LOG("the partition is not free again");
}

TEST_HARNESS_MAIN
