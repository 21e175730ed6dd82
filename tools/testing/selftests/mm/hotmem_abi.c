// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: bad input to prctl(PR_HOTMEM) and /sys/kernel/mm/hotmem is
 * refused with a specific errno and changes nothing.
 *
 * Needs root and a HotMem guest with at least one free partition (so that
 * the geometry is in use and binding can succeed).
 */
#define _GNU_SOURCE
#include <linux/capability.h>
#include <sys/syscall.h>

#include "../kselftest_harness.h"
#include "hotmem_util.h"

static bool has_partitions(void)
{
	unsigned long n = hm_read_ulong(HOTMEM "/nr_partitions");

	return n && n != ULONG_MAX;
}

FIXTURE(hotmem)
{
	char waiters[32];
};

FIXTURE_SETUP(hotmem)
{
	if (access(HOTMEM "/partitions", F_OK))
		SKIP(return, "HotMem is off");
	ASSERT_EQ(0, hm_read_str(HOTMEM "/waiters", self->waiters,
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

	EXPECT_EQ(-ENODATA, hm_prctl(PR_HOTMEM_GET, 0, 0, 0));
	ASSERT_EQ(0, hm_read_str(HOTMEM "/waiters", waiters, sizeof(waiters)));
	EXPECT_STREQ(self->waiters, waiters);
}

TEST_F(hotmem, unknown_op_is_einval)
{
	EXPECT_EQ(-EINVAL, hm_prctl(0, 0, 0, 0));
	EXPECT_EQ(-EINVAL, hm_prctl(3, 0, 0, 0));
	EXPECT_EQ(-EINVAL, hm_prctl(~0UL, 0, 0, 0));
	assert_unbound(_metadata, self);
}

TEST_F(hotmem, unknown_bind_flags_are_einval)
{
	EXPECT_EQ(-EINVAL, hm_prctl(PR_HOTMEM_BIND, 2, 0, 0));
	EXPECT_EQ(-EINVAL, hm_prctl(PR_HOTMEM_BIND, ~PR_HOTMEM_NONBLOCK, 0, 0));
	assert_unbound(_metadata, self);
}

TEST_F(hotmem, unused_arguments_must_be_zero)
{
	EXPECT_EQ(-EINVAL, hm_prctl(PR_HOTMEM_BIND, PR_HOTMEM_NONBLOCK, 0, 1));
	EXPECT_EQ(-EINVAL, hm_prctl(PR_HOTMEM_GET, 1, 0, 0));
	EXPECT_EQ(-EINVAL, hm_prctl(PR_HOTMEM_GET, 0, 1, 0));
	EXPECT_EQ(-EINVAL, hm_prctl(PR_HOTMEM_GET, 0, 0, 1));
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
	EXPECT_EQ(-EPERM, hm_prctl(PR_HOTMEM_BIND, PR_HOTMEM_NONBLOCK, 0, 0));
	assert_unbound(_metadata, self);
}

TEST_F(hotmem, binding_is_one_way)
{
	long id = hm_prctl(PR_HOTMEM_BIND, PR_HOTMEM_NONBLOCK, 0, 0);

	ASSERT_LE(0, id) TH_LOG("bind: %s", strerror(-id));
	EXPECT_EQ(id, hm_prctl(PR_HOTMEM_GET, 0, 0, 0));
	EXPECT_EQ(-EBUSY, hm_prctl(PR_HOTMEM_BIND, PR_HOTMEM_NONBLOCK, 0, 0));
	EXPECT_EQ(-EBUSY, hm_prctl(PR_HOTMEM_BIND, 0, 100, 0));
	EXPECT_EQ(id, hm_prctl(PR_HOTMEM_GET, 0, 0, 0));
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
