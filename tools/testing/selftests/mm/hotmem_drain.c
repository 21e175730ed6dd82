// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: the slow offline path.  A bound process vmsplice()s its memory
 * into a pipe that the (unbound) test holds, and exits: the partition has
 * no user but referenced pages (DRAINING).  Offlining it fails with EBUSY
 * and leaves the pages alone; if the pipe is read while an offline is
 * retrying, the offline completes on the slow path.  Either way the data
 * read from the pipe is the pattern, byte for byte.
 *
 * Needs root and a HotMem guest with a free partition.
 */
#define _GNU_SOURCE
#include <sys/mman.h>
#include <sys/uio.h>

#include "../kselftest_harness.h"
#include "hotmem_util.h"

#define SIZE		(256UL << 10)	/* 64 pages */
#define TIMEOUT		300

/* The bound process: fill, vmsplice (without SPLICE_F_GIFT) and exit. */
static int splicer(struct hm_child *c, void *arg)
{
	int fd = *(int *)arg;
	struct iovec iov;
	long id;
	char *buf;

	id = hm_bind(0, 30000);
	if (id < 0)
		return hm_fail(1, "bind: %s", strerror(-id));
	buf = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 2;
	hm_fill(buf, SIZE, 0xa5);
	iov.iov_base = buf;
	iov.iov_len = SIZE;
	if (vmsplice(fd, &iov, 1, 0) != (ssize_t)SIZE)
		return hm_fail(3, "vmsplice: %s", strerror(errno));
	hm_child_ready(c, id);
	return 0;
}

FIXTURE(drain)
{
	int pipe[2];
	long id;
	long block;
	unsigned long used;
};

FIXTURE_SETUP(drain)
{
	struct hm_child c;

	self->pipe[0] = -1;
	if (!hm_enabled())
		SKIP(return, "HotMem is off");
	ASSERT_TRUE(hm_settle());
	ASSERT_LT(0, hm_count_in("free"));

	ASSERT_EQ(0, pipe(self->pipe));
	ASSERT_EQ((int)SIZE, fcntl(self->pipe[1], F_SETPIPE_SZ, SIZE));
	ASSERT_EQ(0, hm_child_start(&c, splicer, &self->pipe[1]));
	ASSERT_EQ(0, hm_child_wait_ready(&c, &self->id, 60000));
	ASSERT_EQ(0, hm_child_wait(&c));
	close(self->pipe[1]);

	/* The pipe holds the pages of a partition that nobody uses. */
	ASSERT_TRUE(hm_part_is(self->id, "draining"));
	self->used = hm_part_ulong(self->id, "used_pages");
	ASSERT_LE(SIZE / PAGE, self->used);
	ASSERT_EQ(0UL, hm_part_ulong(self->id, "users"));
	self->block = hm_part_block(self->id);
	ASSERT_LE(0, self->block);
}

FIXTURE_TEARDOWN(drain)
{
	if (self->pipe[0] >= 0)
		close(self->pipe[0]);
}

/* Reads the pipe; the offset of the first byte that is not the pattern. */
static ssize_t read_pipe(int fd, char *buf)
{
	size_t got = 0;
	ssize_t n;

	while (got < SIZE) {
		n = read(fd, buf + got, SIZE - got);
		if (n <= 0)
			return got;
		got += n;
	}
	return hm_check(buf, SIZE, 0xa5);
}

TEST_F_TIMEOUT(drain, pipe_keeps_partition_draining, TIMEOUT)
{
	char *buf = malloc(SIZE);

	ASSERT_NE(NULL, buf);
	EXPECT_EQ(-EBUSY, hm_block_set(self->block, "offline"));
	EXPECT_TRUE(hm_block_is(self->block, "online"));
	EXPECT_TRUE(hm_part_is(self->id, "draining"));
	EXPECT_EQ(self->used, hm_part_ulong(self->id, "used_pages"));

	/* Once the pipe is read the partition is free, and nothing was lost. */
	EXPECT_EQ(-1, read_pipe(self->pipe[0], buf));
	EXPECT_TRUE(hm_poll(hm_part_is(self->id, "free"), 10000));
	EXPECT_EQ(0UL, hm_part_ulong(self->id, "used_pages"));
	free(buf);
}

/* The state of process @pid ('R', 'S', 'D', ...). */
static char proc_state(pid_t pid)
{
	char path[64], buf[512], *p;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if (hm_read_str(path, buf, sizeof(buf)))
		return '?';
	p = strrchr(buf, ')');
	return p && p[1] && p[2] ? p[2] : '?';
}

struct reader {
	int fd;
	char *buf;	/* shared with the test */
};

/*
 * Reads the pipe once the test is in the kernel, offlining: the slow path
 * sleeps (state D) between its passes.
 */
static int reader(struct hm_child *c, void *arg)
{
	const struct reader *r = arg;
	pid_t test = getppid();
	int i;

	for (i = 0; i < 500 && proc_state(test) != 'D'; i++)
		usleep(20000);
	usleep(300000);
	return read_pipe(r->fd, r->buf) < 0 ? 0 : 1;
}

TEST_F_TIMEOUT(drain, offline_completes_when_pipe_is_read, TIMEOUT)
{
	unsigned long slow = hm_vmstat("hotmem_offline_slow");
	char *buf = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct reader r = { .fd = self->pipe[0], .buf = buf };
	struct hm_child c;
	int ret;

	ASSERT_NE(MAP_FAILED, buf);
	ASSERT_EQ(0, hm_child_start(&c, reader, &r));
	ret = hm_block_set(self->block, "offline");
	EXPECT_EQ(0, ret) TH_LOG("offline: %s", strerror(-ret));
	EXPECT_EQ(0, hm_child_wait(&c));
	EXPECT_EQ(slow + 1, hm_vmstat("hotmem_offline_slow"));
	EXPECT_EQ(-1, hm_check(buf, SIZE, 0xa5)) TH_LOG("the pipe's data changed");
	EXPECT_EQ(0UL, hm_part_ulong(self->id, "used_pages"));

	ret = hm_block_set(self->block, "online_hotmem");
	EXPECT_EQ(0, ret) TH_LOG("online_hotmem: %s", strerror(-ret));
	EXPECT_TRUE(hm_part_is(self->id, "free"));
	EXPECT_TRUE(hm_settle());
}

TEST_HARNESS_MAIN
