// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: a bound instance's memory stays inside its partition.
 *
 * Each test binds itself (the harness runs it in a child of its own, so
 * the partition is released when the test ends), fills memory with a
 * pattern, takes one of the routes by which pages used to leave a
 * partition, and then checks with /proc/self/pagemap that every page is
 * still inside the partition and with the pattern that no data was lost.
 * Routes: long-term pins (io_uring fixed buffers), NUMA migration
 * (mbind(MPOL_MF_MOVE), move_pages(), migrate_pages()), swap-in through
 * the swap cache, and KSM.  Each test first shows that the route does
 * move or merge unbound memory, so that a pass means something.
 *
 * Needs root (pagemap PFNs, KSM, binding), a HotMem guest with at least
 * one free partition, and for the swap and NUMA tests an active swap
 * device and a second node with memory; missing ones are skipped.
 */
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <linux/mempolicy.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include "../kselftest_harness.h"
#include "hotmem_util.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT		21
#endif

#define KSM		"/sys/kernel/mm/ksm"
#define BUF_SIZE	(8UL << 20)
#define BIND_TIMEOUT_MS	20000
/* Seconds per test: ksmd and swap are slow in an emulated guest. */
#define TIMEOUT		300

/* Binds the calling process and looks up its partition's pfn range. */
static int bind_partition(struct hm_part *r)
{
	long id = hm_bind(0, BIND_TIMEOUT_MS);

	if (id < 0)
		return id;
	return hm_part_range(id, r);
}

/* Pages of [buf, buf + len) whose node differs from @nid. */
static unsigned long pages_off_node(const char *buf, size_t len, int nid)
{
	unsigned long n = 0, i, nr = len / PAGE;
	void **pages = calloc(nr, sizeof(*pages));
	int *status = calloc(nr, sizeof(*status));

	if (!pages || !status) {
		n = ULONG_MAX;
		goto out;
	}
	for (i = 0; i < nr; i++)
		pages[i] = (char *)buf + i * PAGE;
	if (syscall(SYS_move_pages, 0, nr, pages, NULL, status, 0)) {
		n = ULONG_MAX;
		goto out;
	}
	for (i = 0; i < nr; i++)
		n += status[i] != nid;
out:
	free(pages);
	free(status);
	return n;
}

/* @len bytes of small pages, each holding its own part of pattern @seed. */
static char *map_filled(size_t len, unsigned int seed)
{
	char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (buf == MAP_FAILED)
		return NULL;
	madvise(buf, len, MADV_NOHUGEPAGE);
	hm_fill(buf, len, seed);
	return buf;
}

static bool check(const char *buf, size_t len, unsigned int seed)
{
	return hm_check(buf, len, seed) < 0;
}

/* A second node with memory, or -1. */
static int other_node(int nid)
{
	char path[96];
	int n;

	for (n = 0; n < 64; n++) {
		if (n == nid)
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/node/node%d", n);
		if (access(path, F_OK))
			continue;
		return n;
	}
	return -1;
}

FIXTURE(bound)
{
	struct hm_part part;
};

FIXTURE_SETUP(bound)
{
	int ret;

	if (!hm_enabled())
		SKIP(return, "HotMem is off");
	ret = bind_partition(&self->part);
	ASSERT_EQ(0, ret) TH_LOG("binding: %s", strerror(-ret));
	TH_LOG("bound to partition %ld (pfn 0x%lx-0x%lx, node %d)",
	       self->part.id, self->part.start_pfn, self->part.end_pfn,
	       self->part.nid);
}

FIXTURE_TEARDOWN(bound)
{
}

/* The controls: the same routes do move or merge unbound memory. */
FIXTURE(unbound)
{
};

FIXTURE_SETUP(unbound)
{
}

FIXTURE_TEARDOWN(unbound)
{
}

/*
 * io_uring_register(IORING_REGISTER_BUFFERS) pins with FOLL_LONGTERM.  A
 * pin used to migrate the pages out of the partition (making room for
 * more), so that pin/unpin cycles let an instance grow without bound.
 */
TEST_F_TIMEOUT(bound, longterm_pin_keeps_pages_in_partition, TIMEOUT)
{
	struct io_uring_params p = {};
	struct iovec iov;
	int fd, round;
	char *buf;

	buf = map_filled(BUF_SIZE, 1);
	ASSERT_NE(NULL, buf);
	ASSERT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));

	if (access("/proc/sys/kernel/io_uring_disabled", F_OK))
		SKIP(return, "no io_uring");
	fd = syscall(__NR_io_uring_setup, 4, &p);
	ASSERT_LE(0, fd) TH_LOG("io_uring_setup: %s", strerror(errno));
	iov.iov_base = buf;
	iov.iov_len = BUF_SIZE;
	for (round = 0; round < 3; round++) {
		ASSERT_EQ(0, syscall(__NR_io_uring_register, fd,
				     IORING_REGISTER_BUFFERS, &iov, 1))
			TH_LOG("register: %s", strerror(errno));
		EXPECT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));
		EXPECT_EQ(BUF_SIZE / PAGE, hm_pages_with(buf, BUF_SIZE, PM_PRESENT));
		ASSERT_EQ(0, syscall(__NR_io_uring_register, fd,
				     IORING_UNREGISTER_BUFFERS, NULL, 0));
	}
	close(fd);
	EXPECT_TRUE(check(buf, BUF_SIZE, 1));
	EXPECT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));
}

/*
 * mbind(MPOL_MF_MOVE), migrate_pages() and move_pages() move pages between
 * nodes; for a bound instance that used to mean out of its partition.
 */
TEST_F_TIMEOUT(bound, numa_migration_keeps_pages_in_partition, TIMEOUT)
{
	int to = other_node(self->part.nid);
	unsigned long mask;
	void **pages;
	int *nodes, *status;
	unsigned long i, nr = BUF_SIZE / PAGE;
	long ret;
	char *buf;

	if (to < 0)
		SKIP(return, "needs a second NUMA node");
	mask = 1UL << to;

	buf = map_filled(BUF_SIZE, 2);
	ASSERT_NE(NULL, buf);
	ASSERT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));

	/* mbind(MPOL_MF_MOVE | MPOL_MF_STRICT): refused with EIO, nothing moves. */
	ret = syscall(SYS_mbind, buf, BUF_SIZE, MPOL_BIND, &mask, 64,
		      MPOL_MF_MOVE | MPOL_MF_STRICT);
	EXPECT_TRUE(ret == 0 || errno == EIO) TH_LOG("mbind: %s", strerror(errno));
	EXPECT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));
	EXPECT_EQ(0UL, pages_off_node(buf, BUF_SIZE, self->part.nid));

	/* migrate_pages(2) of the whole process to the other node. */
	mask = ~0UL;
	{
		unsigned long new = 1UL << to;

		ret = syscall(SYS_migrate_pages, 0, 64, &mask, &new);
		EXPECT_LE(0, ret) TH_LOG("migrate_pages: %s", strerror(errno));
	}
	EXPECT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));

	/* move_pages(2), page by page: each reports it could not move. */
	pages = calloc(nr, sizeof(*pages));
	nodes = calloc(nr, sizeof(*nodes));
	status = calloc(nr, sizeof(*status));
	ASSERT_TRUE(pages && nodes && status);
	for (i = 0; i < nr; i++) {
		pages[i] = buf + i * PAGE;
		nodes[i] = to;
	}
	ret = syscall(SYS_move_pages, 0, nr, pages, nodes, status, MPOL_MF_MOVE);
	EXPECT_LE(0, ret) TH_LOG("move_pages: %s", strerror(errno));
	EXPECT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));
	for (i = 0; i < nr; i++)
		if (status[i] == to)
			break;
	EXPECT_EQ(nr, i) TH_LOG("page %lu reported on node %d", i, to);
	free(pages);
	free(nodes);
	free(status);
	EXPECT_TRUE(check(buf, BUF_SIZE, 2));
}

TEST_F_TIMEOUT(unbound, numa_migration_moves_unbound_memory, TIMEOUT)
{
	unsigned long mask;
	void *first;
	int to, from;
	char *buf;

	buf = map_filled(BUF_SIZE, 3);
	ASSERT_NE(NULL, buf);
	first = buf;
	ASSERT_EQ(0, syscall(SYS_move_pages, 0, 1, &first, NULL, &from, 0));
	to = other_node(from);
	if (to < 0)
		SKIP(return, "needs a second NUMA node");
	mask = 1UL << to;
	ASSERT_EQ(0, syscall(SYS_mbind, buf, BUF_SIZE, MPOL_BIND, &mask, 64,
			     MPOL_MF_MOVE | MPOL_MF_STRICT))
		TH_LOG("mbind: %s", strerror(errno));
	EXPECT_EQ(0UL, pages_off_node(buf, BUF_SIZE, to));
	EXPECT_TRUE(check(buf, BUF_SIZE, 3));
}

static bool swap_active(void)
{
	unsigned long total = hm_meminfo_kb("SwapTotal");

	return total > 0 && total != ULONG_MAX;
}

/*
 * Pages are written to swap, then the swap entries are shared with a child
 * (fork after swap-out), so that swap-in goes through the swap cache and
 * its readahead, which allocate ordinary pages.  They must end up mapped
 * from the partition, with their data.
 */
TEST_F_TIMEOUT(bound, swapin_keeps_pages_in_partition, TIMEOUT)
{
	unsigned long copies;
	int pipefd[2], status;
	char *buf, c;
	pid_t pid;

	if (!swap_active())
		SKIP(return, "needs an active swap device");
	buf = map_filled(BUF_SIZE, 4);
	ASSERT_NE(NULL, buf);
	ASSERT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));

	/* Exclusive swap entries on a synchronous device: the direct path. */
	ASSERT_EQ(0, madvise(buf, BUF_SIZE, MADV_PAGEOUT));
	ASSERT_LT(BUF_SIZE / PAGE / 2, hm_pages_with(buf, BUF_SIZE, PM_SWAP));
	EXPECT_TRUE(check(buf, BUF_SIZE, 4));
	EXPECT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));

	/* Shared swap entries: through the swap cache. */
	ASSERT_EQ(0, madvise(buf, BUF_SIZE, MADV_PAGEOUT));
	ASSERT_LT(BUF_SIZE / PAGE / 2, hm_pages_with(buf, BUF_SIZE, PM_SWAP));
	ASSERT_EQ(0, pipe(pipefd));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		close(pipefd[1]);
		/* Keep the swap entries shared until the parent is done. */
		while (read(pipefd[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(check(buf, BUF_SIZE, 4) ? 0 : 1);
	}
	close(pipefd[0]);
	copies = hm_vmstat("hotmem_swapin_copy");
	EXPECT_TRUE(check(buf, BUF_SIZE, 4));
	EXPECT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));
	EXPECT_LT(copies, hm_vmstat("hotmem_swapin_copy"));
	close(pipefd[1]);
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
		TH_LOG("the child's copy of the data is damaged");
}

static int ksm_start(void)
{
	if (hm_write_str(KSM "/pages_to_scan", "4096") ||
	    hm_write_str(KSM "/sleep_millisecs", "1") ||
	    hm_write_str(KSM "/run", "1"))
		return -1;
	return 0;
}

/* Wait for ksmd to finish @n more full scans; false on timeout. */
static bool ksm_wait_scans(unsigned long n)
{
	unsigned long start = hm_read_ulong(KSM "/full_scans");
	int i;

	for (i = 0; i < 600; i++) {
		if (hm_read_ulong(KSM "/full_scans") >= start + n)
			return true;
		usleep(100000);
	}
	return false;
}

/*
 * KSM merges identical pages of different processes.  A partition's page
 * merged into another process would keep the partition in use after its
 * instance exits (and share one tenant's memory with another).  Two full
 * scans over identical pages leave every one of them unmerged, in place.
 */
TEST_F_TIMEOUT(bound, ksm_never_merges_partition_pages, TIMEOUT)
{
	unsigned long sharing;
	size_t off;
	char *buf;

	if (access(KSM "/run", F_OK))
		SKIP(return, "no KSM");
	buf = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, buf);
	madvise(buf, BUF_SIZE, MADV_NOHUGEPAGE);
	memset(buf, 0x5a, BUF_SIZE);
	ASSERT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));
	/* Unmerge whatever an earlier user left, then merge from scratch. */
	ASSERT_EQ(0, hm_write_str(KSM "/run", "2"));
	sharing = hm_read_ulong(KSM "/pages_sharing");
	ASSERT_EQ(0, madvise(buf, BUF_SIZE, MADV_MERGEABLE));
	ASSERT_EQ(0, ksm_start());
	ASSERT_TRUE(ksm_wait_scans(3));

	EXPECT_EQ(0UL, hm_pages_outside(&self->part, buf, BUF_SIZE));
	/*
	 * Not /proc/kpageflags: its KPF_KSM is set for every anonymous page
	 * in 6.12 (it tests mapping & PAGE_MAPPING_KSM, which is non-zero
	 * for PAGE_MAPPING_ANON alone).
	 */
	EXPECT_EQ(0UL, hm_read_ulong("/proc/self/ksm_merging_pages"));
	EXPECT_EQ(sharing, hm_read_ulong(KSM "/pages_sharing"));
	for (off = 0; off < BUF_SIZE; off++)
		if (buf[off] != 0x5a)
			break;
	EXPECT_EQ(BUF_SIZE, off);

	hm_write_str(KSM "/run", "2");
}

TEST_F_TIMEOUT(unbound, ksm_merges_unbound_memory, TIMEOUT)
{
	unsigned long before;
	char *buf;

	if (access(KSM "/run", F_OK))
		SKIP(return, "no KSM");
	hm_write_str(KSM "/run", "2");
	buf = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, buf);
	madvise(buf, BUF_SIZE, MADV_NOHUGEPAGE);
	memset(buf, 0x5a, BUF_SIZE);
	before = hm_read_ulong(KSM "/pages_sharing");
	ASSERT_EQ(0, madvise(buf, BUF_SIZE, MADV_MERGEABLE));
	ASSERT_EQ(0, ksm_start());
	ASSERT_TRUE(ksm_wait_scans(3));
	EXPECT_LT(before + BUF_SIZE / PAGE / 2, hm_read_ulong(KSM "/pages_sharing"));
	hm_write_str(KSM "/run", "2");
}

TEST_HARNESS_MAIN
