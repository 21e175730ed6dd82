// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: khugepaged and full partitions.  A tenant at its partition's
 * limit (the normal state of a function instance) cannot get a huge page
 * for khugepaged to collapse into; that must fail for the tenant alone,
 * not make khugepaged sleep alloc_sleep_millisecs and abandon its pass
 * for every other process.  Both processes' data survives the scans and
 * the collapse byte for byte.
 *
 * Needs root, CONFIG_TRANSPARENT_HUGEPAGE and a HotMem guest with a free
 * partition.
 */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "../kselftest_harness.h"
#include "hotmem_util.h"

#define KHUGEPAGED	"/sys/kernel/mm/transparent_hugepage/khugepaged"
#define THP_SIZE	(2 * MIB)

static const char *const knobs[] = {
	KHUGEPAGED "/alloc_sleep_millisecs",
	KHUGEPAGED "/scan_sleep_millisecs",
	KHUGEPAGED "/pages_to_scan",
};

FIXTURE(khugepaged)
{
	char saved[3][32];
	unsigned long psize;
};

FIXTURE_SETUP(khugepaged)
{
	int i;

	if (!hm_enabled())
		SKIP(return, "HotMem is off");
	if (access(KHUGEPAGED, F_OK))
		SKIP(return, "needs CONFIG_TRANSPARENT_HUGEPAGE");
	ASSERT_TRUE(hm_settle());
	ASSERT_LT(0, hm_count_in("free"));
	self->psize = hm_partition_size();
	for (i = 0; i < 3; i++)
		ASSERT_EQ(0, hm_read_str(knobs[i], self->saved[i],
					 sizeof(self->saved[i])));
	/* A failed allocation would stall khugepaged for a minute. */
	ASSERT_EQ(0, hm_write_str(knobs[0], "60000"));
	ASSERT_EQ(0, hm_write_str(knobs[1], "10"));
	ASSERT_EQ(0, hm_write_str(knobs[2], "8192"));
}

FIXTURE_TEARDOWN(khugepaged)
{
	int i;

	for (i = 0; i < 3; i++)
		hm_write_str(knobs[i], self->saved[i]);
}

struct collapse {
	size_t size;
	bool bind;
	uint64_t seed;
};

/*
 * Faults @size in as small pages, fills it, then asks for huge pages so
 * that khugepaged collapses it; holds it, then checks the pattern.
 */
static int collapse(struct hm_child *c, void *arg)
{
	const struct collapse *co = arg;
	char *map, *buf;
	long id = -1;

	if (co->bind) {
		id = hm_bind(0, 30000);
		if (id < 0)
			return hm_fail(1, "bind: %s", strerror(-id));
	}
	map = mmap(NULL, co->size + THP_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED)
		return 2;
	buf = (char *)(((uintptr_t)map + THP_SIZE - 1) & ~(THP_SIZE - 1));
	if (madvise(buf, co->size, MADV_NOHUGEPAGE))
		return 3;
	hm_fill(buf, co->size, co->seed);
	if (madvise(buf, co->size, MADV_HUGEPAGE))
		return 3;
	hm_child_ready(c, id);
	hm_child_hold(c);
	return hm_check(buf, co->size, co->seed) < 0 ? 0 : hm_fail(4, "data lost");
}

/* AnonHugePages of process @pid in kB, or ULONG_MAX. */
static unsigned long anon_huge_kb(pid_t pid)
{
	unsigned long sum = 0, v;
	char path[64], line[256];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", pid);
	f = fopen(path, "r");
	if (!f)
		return ULONG_MAX;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %lu kB", &v) == 1)
			sum += v;
	fclose(f);
	return sum;
}

static bool has_huge_pages(pid_t pid)
{
	unsigned long kb = anon_huge_kb(pid);

	return kb && kb != ULONG_MAX;
}

TEST_F_TIMEOUT(khugepaged, full_partition_does_not_stall_khugepaged, 300)
{
	/* The tenant: its partition full but for 1 MiB, all small pages. */
	struct collapse tenant = { .size = self->psize - MIB, .bind = true,
				   .seed = 1 };
	struct collapse other = { .size = 16 * MIB, .seed = 2 };
	unsigned long failed = hm_vmstat("thp_collapse_alloc_failed");
	unsigned long collapsed;
	struct hm_child t, o;
	long id, v;

	ASSERT_EQ(0, hm_child_start(&t, collapse, &tenant));
	ASSERT_EQ(0, hm_child_wait_ready(&t, &id, 120000));
	EXPECT_TRUE(hm_poll(hm_vmstat("thp_collapse_alloc_failed") > failed, 60000))
		TH_LOG("khugepaged found a huge page for the full partition");

	collapsed = hm_vmstat("thp_collapse_alloc");
	ASSERT_EQ(0, hm_child_start(&o, collapse, &other));
	ASSERT_EQ(0, hm_child_wait_ready(&o, &v, 60000));
	EXPECT_TRUE(hm_poll(hm_vmstat("thp_collapse_alloc") > collapsed, 20000))
		TH_LOG("khugepaged stalled: nothing collapsed in 20 s");
	EXPECT_TRUE(hm_poll(has_huge_pages(o.pid), 10000))
		TH_LOG("the other process has no huge page");
	EXPECT_EQ(0UL, anon_huge_kb(t.pid))
		TH_LOG("the tenant got a huge page from outside its partition");

	EXPECT_EQ(0, hm_child_wait(&o));
	EXPECT_EQ(0, hm_child_wait(&t));
	EXPECT_TRUE(hm_settle()) TH_LOG("the tenant's partition is not free again");
}

TEST_HARNESS_MAIN
