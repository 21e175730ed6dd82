// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: bad input to prctl(PR_HOTMEM) and /sys/kernel/mm/hotmem is
 * refused with a specific errno and changes nothing.
 *
 * Needs root and a HotMem guest with at least one free partition (so that
 * the geometry is in use and binding can succeed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../kselftest_harness.h"

#ifndef PR_HOTMEM
#define PR_HOTMEM		0x484d454d
#define PR_HOTMEM_BIND		1
#define PR_HOTMEM_GET		2
#define PR_HOTMEM_NONBLOCK	1UL
#endif

#define HOTMEM	"/sys/kernel/mm/hotmem"

static int read_str(const char *path, char *buf, size_t len)
{
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

/* Writes @val; returns 0 or the negative errno of the write. */
static int write_str(const char *path, const char *val)
{
	ssize_t n;
	int fd, ret = 0;

	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -errno;
	n = write(fd, val, strlen(val));
	if (n < 0)
		ret = -errno;
	close(fd);
	return ret;
}

static bool has_partitions(void)
{
	char buf[32];

	return !read_str(HOTMEM "/nr_partitions", buf, sizeof(buf)) &&
	       strtoul(buf, NULL, 10) > 0;
}

static long hotmem(unsigned long op, unsigned long a3, unsigned long a4,
		   unsigned long a5)
{
	long ret = prctl(PR_HOTMEM, op, a3, a4, a5);

	return ret < 0 ? -errno : ret;
}

FIXTURE(hotmem)
{
	char waiters[32];
};

FIXTURE_SETUP(hotmem)
{
	if (access(HOTMEM "/partitions", F_OK))
		SKIP(return, "HotMem is off");
	ASSERT_EQ(0, read_str(HOTMEM "/waiters", self->waiters,
			      sizeof(self->waiters)));
}

FIXTURE_TEARDOWN(hotmem)
{
}

/* Nothing a refused call could have changed has changed. */
static void assert_unbound(struct __test_metadata *_metadata,
			   struct _test_data_hotmem *self)
{
	char waiters[32];

	EXPECT_EQ(-ENODATA, hotmem(PR_HOTMEM_GET, 0, 0, 0));
	ASSERT_EQ(0, read_str(HOTMEM "/waiters", waiters, sizeof(waiters)));
	EXPECT_STREQ(self->waiters, waiters);
}

TEST_F(hotmem, unknown_op_is_einval)
{
	EXPECT_EQ(-EINVAL, hotmem(0, 0, 0, 0));
	EXPECT_EQ(-EINVAL, hotmem(3, 0, 0, 0));
	EXPECT_EQ(-EINVAL, hotmem(~0UL, 0, 0, 0));
	assert_unbound(_metadata, self);
}

TEST_F(hotmem, unknown_bind_flags_are_einval)
{
	EXPECT_EQ(-EINVAL, hotmem(PR_HOTMEM_BIND, 2, 0, 0));
	EXPECT_EQ(-EINVAL, hotmem(PR_HOTMEM_BIND, ~PR_HOTMEM_NONBLOCK, 0, 0));
	assert_unbound(_metadata, self);
}

TEST_F(hotmem, unused_arguments_must_be_zero)
{
	EXPECT_EQ(-EINVAL, hotmem(PR_HOTMEM_BIND, PR_HOTMEM_NONBLOCK, 0, 1));
	EXPECT_EQ(-EINVAL, hotmem(PR_HOTMEM_GET, 1, 0, 0));
	EXPECT_EQ(-EINVAL, hotmem(PR_HOTMEM_GET, 0, 1, 0));
	EXPECT_EQ(-EINVAL, hotmem(PR_HOTMEM_GET, 0, 0, 1));
	assert_unbound(_metadata, self);
}

TEST_F(hotmem, bind_needs_cap_sys_resource)
{
	struct __user_cap_header_struct hdr = {
		.version = _LINUX_CAPABILITY_VERSION_3,
	};
	struct __user_cap_data_struct data[2];

	ASSERT_EQ(0, syscall(SYS_capget, &hdr, data));
	data[CAP_SYS_RESOURCE / 32].effective &= ~(1U << (CAP_SYS_RESOURCE % 32));
	ASSERT_EQ(0, syscall(SYS_capset, &hdr, data));
	EXPECT_EQ(-EPERM, hotmem(PR_HOTMEM_BIND, PR_HOTMEM_NONBLOCK, 0, 0));
	assert_unbound(_metadata, self);
}

TEST_F(hotmem, binding_is_one_way)
{
	long id = hotmem(PR_HOTMEM_BIND, PR_HOTMEM_NONBLOCK, 0, 0);

	ASSERT_LE(0, id) TH_LOG("bind: %s", strerror(-id));
	EXPECT_EQ(id, hotmem(PR_HOTMEM_GET, 0, 0, 0));
	EXPECT_EQ(-EBUSY, hotmem(PR_HOTMEM_BIND, PR_HOTMEM_NONBLOCK, 0, 0));
	EXPECT_EQ(-EBUSY, hotmem(PR_HOTMEM_BIND, 0, 100, 0));
	EXPECT_EQ(id, hotmem(PR_HOTMEM_GET, 0, 0, 0));
}

/* A write to @file that must fail with @err and leave its value alone. */
static void refused(struct __test_metadata *_metadata, const char *file,
		    const char *val, int err)
{
	char before[64], after[64];

	ASSERT_EQ(0, read_str(file, before, sizeof(before)));
	EXPECT_EQ(-err, write_str(file, val)) TH_LOG("%s <- '%s'", file, val);
	ASSERT_EQ(0, read_str(file, after, sizeof(after)));
	EXPECT_STREQ(before, after);
}

TEST_F(hotmem, bad_partition_size_is_refused)
{
	const char *f = HOTMEM "/partition_size";

	refused(_metadata, f, "\n", EINVAL);	/* an empty line */
	refused(_metadata, f, "abc", EINVAL);
	refused(_metadata, f, "128Mx", EINVAL);
	refused(_metadata, f, "0", EINVAL);
	refused(_metadata, f, "3M", EINVAL);	/* not a power of two */
	refused(_metadata, f, "4096", EINVAL);	/* smaller than a block */
	/* A valid size while partitions exist. */
	ASSERT_TRUE(has_partitions());
	refused(_metadata, f, "1G", EBUSY);
}

TEST_F(hotmem, bad_max_partitions_is_refused)
{
	const char *f = HOTMEM "/max_partitions";

	refused(_metadata, f, "0", EINVAL);
	refused(_metadata, f, "-1", EINVAL);
	refused(_metadata, f, "many", EINVAL);
	refused(_metadata, f, "99999999999", EINVAL);
	ASSERT_TRUE(has_partitions());
	refused(_metadata, f, "8", EBUSY);
}

TEST_F(hotmem, read_only_files_refuse_writes)
{
	refused(_metadata, HOTMEM "/nr_partitions", "0", EACCES);
	refused(_metadata, HOTMEM "/waiters", "0", EACCES);
	refused(_metadata, HOTMEM "/enabled", "0", EACCES);
}

TEST_HARNESS_MAIN
