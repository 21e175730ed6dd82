// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: binding and routing.  Bound anonymous memory (faults, COW
 * copies, THP) comes from the partition and nothing else does; the
 * binding follows fork and exec and ends with the last process; a bound
 * partition's blocks cannot be offlined; a full partition OOM-kills only
 * its own process; binders wait for a free partition, with timeouts that
 * expire or (past 32 bits of milliseconds) do not; a new instance sees
 * only zeroed memory.
 *
 * Each instance is a child of the test that binds, fills memory with a
 * pattern, holds it while the test looks at the partitions and verifies
 * it byte for byte before it exits.
 *
 * Needs root and a HotMem guest with at least two free partitions.
 */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "../kselftest_harness.h"
#include "hotmem_util.h"

#define BIND_TIMEOUT_MS	30000
#define TIMEOUT		300
#define THP_SIZE	(2 * MIB)

/* Exit statuses of the instances. */
enum {
	OK = 0,
	BIND_FAILED = 10,
	NO_MEMORY = 11,
	OUTSIDE = 12,
	DATA_LOST = 13,
	NOT_ZERO = 14,
	WRONG_ERRNO = 15,
	NOT_BOUND = 16,
	CHILD_FAILED = 17,
	IN_HOTMEM = 18,
};

/* Maps @len bytes of private anonymous memory, aligned to THP_SIZE. */
static char *map_anon(size_t len)
{
	char *p = mmap(NULL, len + THP_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	return (char *)(((uintptr_t)p + THP_SIZE - 1) & ~(THP_SIZE - 1));
}

/* Every page of [buf, buf + len) is present and inside partition @id. */
static int in_partition(long id, const char *buf, size_t len)
{
	struct hm_part p;
	unsigned long out, present;

	if (hm_part_range(id, &p))
		return hm_fail(OUTSIDE, "partition %ld has no range", id);
	out = hm_pages_outside(&p, buf, len);
	present = hm_pages_with(buf, len, PM_PRESENT);
	if (out || present != len / PAGE)
		return hm_fail(OUTSIDE, "%lu of %lu pages outside partition %ld, %lu present",
			       out, len / PAGE, id, present);
	return OK;
}

static int verify(const char *buf, size_t len, uint64_t seed)
{
	ssize_t bad = hm_check(buf, len, seed);

	if (bad >= 0)
		return hm_fail(DATA_LOST, "pattern %llu differs at offset %zd",
			       (unsigned long long)seed, bad);
	return OK;
}

/* An instance: bind, map, fill, check where the pages are. */
struct instance {
	size_t size;
	uint64_t seed;
	unsigned long bind_flags;
	unsigned long timeout_ms;
	int advice;		/* madvise() before touching, or -1 */
};

static int instance(struct hm_child *c, void *arg)
{
	const struct instance *in = arg;
	long id = hm_bind(in->bind_flags, in->timeout_ms);
	char *buf;
	int ret;

	if (id < 0)
		return hm_fail(BIND_FAILED, "bind: %s", strerror(-id));
	buf = map_anon(in->size);
	if (!buf)
		return NO_MEMORY;
	if (in->advice >= 0 && madvise(buf, in->size, in->advice))
		return NO_MEMORY;
	hm_fill(buf, in->size, in->seed);
	ret = in_partition(id, buf, in->size);
	hm_child_ready(c, id);
	hm_child_hold(c);
	return ret ?: verify(buf, in->size, in->seed) ?: in_partition(id, buf, in->size);
}

FIXTURE(bind)
{
	unsigned long psize;
	unsigned long total_kb;
	int nr_parts;
};

FIXTURE_SETUP(bind)
{
	if (!hm_enabled())
		SKIP(return, "HotMem is off");
	self->nr_parts = (int)hm_read_ulong(HOTMEM "/nr_partitions");
	ASSERT_LE(2, self->nr_parts);
	ASSERT_TRUE(hm_settle()) TH_LOG("partitions are not all free");
	self->psize = hm_partition_size();
	self->total_kb = hm_meminfo_kb("HotMemTotal");
}

FIXTURE_TEARDOWN(bind)
{
}

static int bind_and_hold(struct hm_child *c, void *arg)
{
	long id = hm_bind(PR_HOTMEM_NONBLOCK, 0);

	if (id < 0)
		return hm_fail(BIND_FAILED, "bind: %s", strerror(-id));
	if (hm_prctl(PR_HOTMEM_GET, 0, 0, 0) != id)
		return hm_fail(NOT_BOUND, "PR_HOTMEM_GET is not %ld", id);
	hm_child_ready(c, id);
	hm_child_hold(c);
	return OK;
}

TEST_F_TIMEOUT(bind, bind_marks_partition_bound, TIMEOUT)
{
	struct hm_child c;
	long id;

	ASSERT_EQ(0, hm_child_start(&c, bind_and_hold, NULL));
	ASSERT_EQ(0, hm_child_wait_ready(&c, &id, 30000));
	EXPECT_TRUE(hm_part_is(id, "bound"));
	EXPECT_EQ(1UL, hm_part_ulong(id, "users"));
	EXPECT_EQ(1, hm_count_in("bound"));
	EXPECT_EQ(self->nr_parts - 1, hm_count_in("free"));
	EXPECT_EQ(0, hm_child_wait(&c));
	EXPECT_TRUE(hm_settle()) TH_LOG("the partition is not free after exit");
}

/*
 * 64 MiB of anonymous memory is in the partition and counted there, and a
 * block of the bound partition cannot be offlined.
 */
TEST_F_TIMEOUT(bind, anon_memory_comes_from_partition, TIMEOUT)
{
	struct instance in = { .size = 64 * MIB, .seed = 1, .advice = -1,
			       .timeout_ms = BIND_TIMEOUT_MS };
	unsigned long allocs = hm_vmstat("hotmem_alloc");
	unsigned long used;
	struct hm_child c;
	long id, block;

	ASSERT_EQ(0, hm_child_start(&c, instance, &in));
	ASSERT_EQ(0, hm_child_wait_ready(&c, &id, 120000));
	used = hm_part_ulong(id, "used_pages");
	EXPECT_LE(in.size / PAGE, used);
	EXPECT_EQ(1UL, hm_part_ulong(id, "users"));
	EXPECT_LE(in.size / 1024, self->total_kb - hm_meminfo_kb("HotMemFree"));

	block = hm_part_block(id);
	ASSERT_LE(0, block);
	EXPECT_EQ(-EBUSY, hm_block_set(block, "offline"));
	EXPECT_TRUE(hm_block_is(block, "online"));
	EXPECT_TRUE(hm_part_is(id, "bound"));
	EXPECT_EQ(used, hm_part_ulong(id, "used_pages"));

	EXPECT_EQ(OK, hm_child_wait(&c));
	EXPECT_LE(allocs + in.size / PAGE, hm_vmstat("hotmem_alloc"));
	EXPECT_TRUE(hm_settle()) TH_LOG("exit left used pages behind");
}

/*
 * The second half of fork_and_exec_share_binding, run in the process
 * that the bound child exec()ed: HOTMEM_BIND_EXEC="id ready-fd go-fd".
 */
#define EXEC_SIZE	(16 * MIB)

static int cow_child(long id, char *buf, int ready_fd)
{
	char b = 1;
	int ret;

	if (hm_prctl(PR_HOTMEM_GET, 0, 0, 0) != id)
		return hm_fail(NOT_BOUND, "the forked child is not bound to %ld", id);
	/* Write every page: COW copies, which must come from the partition. */
	hm_fill(buf, EXEC_SIZE, 3);
	ret = in_partition(id, buf, EXEC_SIZE);
	if (write(ready_fd, &b, 1) != 1)
		return CHILD_FAILED;
	return ret;
}

static int exec_instance(const char *env)
{
	struct hm_child c;
	int ready[2], status, ret;
	long id, got;
	pid_t pid;
	char *buf, b;

	if (sscanf(env, "%ld %d %d", &id, &c.ready[1], &c.go[0]) != 3)
		return CHILD_FAILED;
	got = hm_prctl(PR_HOTMEM_GET, 0, 0, 0);
	if (got != id)
		return hm_fail(NOT_BOUND, "after exec bound to %ld, not %ld", got, id);
	buf = map_anon(EXEC_SIZE);
	if (!buf || madvise(buf, EXEC_SIZE, MADV_NOHUGEPAGE))
		return NO_MEMORY;
	hm_fill(buf, EXEC_SIZE, 2);
	ret = in_partition(id, buf, EXEC_SIZE);
	if (ret)
		return ret;
	if (pipe(ready))
		return CHILD_FAILED;
	pid = fork();
	if (pid < 0)
		return CHILD_FAILED;
	if (!pid) {
		close(ready[0]);
		ret = cow_child(id, buf, ready[1]);
		hm_child_hold(&c);
		_exit(ret ?: verify(buf, EXEC_SIZE, 3) ?: in_partition(id, buf, EXEC_SIZE));
	}
	close(ready[1]);
	if (read(ready[0], &b, 1) != 1)
		return CHILD_FAILED;
	/* Both processes hold the partition now. */
	hm_child_ready(&c, id);
	hm_child_hold(&c);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return CHILD_FAILED;
	if (WEXITSTATUS(status))
		return WEXITSTATUS(status);
	/* The child's writes went to its copies: ours are untouched. */
	return verify(buf, EXEC_SIZE, 2) ?: in_partition(id, buf, EXEC_SIZE);
}

static void __attribute__((constructor)) exec_role(void)
{
	const char *env = getenv("HOTMEM_BIND_EXEC");

	if (env)
		_exit(exec_instance(env));
}

static int bind_and_exec(struct hm_child *c, void *arg)
{
	char env[64];
	long id;

	id = hm_bind(0, BIND_TIMEOUT_MS);
	if (id < 0)
		return hm_fail(BIND_FAILED, "bind: %s", strerror(-id));
	snprintf(env, sizeof(env), "%ld %d %d", id, c->ready[1], c->go[0]);
	if (setenv("HOTMEM_BIND_EXEC", env, 1))
		return CHILD_FAILED;
	execl("/proc/self/exe", "hotmem_bind", NULL);
	return hm_fail(CHILD_FAILED, "exec: %s", strerror(errno));
}

/*
 * A bound process execs, the new program forks, and both (and the
 * COW copies the child makes) use the same partition; it is freed with
 * the last of them.
 */
TEST_F_TIMEOUT(bind, fork_and_exec_share_binding, TIMEOUT)
{
	unsigned long allocs = hm_vmstat("hotmem_alloc");
	struct hm_child c;
	long id;

	ASSERT_EQ(0, hm_child_start(&c, bind_and_exec, NULL));
	ASSERT_EQ(0, hm_child_wait_ready(&c, &id, 120000));
	EXPECT_TRUE(hm_part_is(id, "bound"));
	EXPECT_EQ(2UL, hm_part_ulong(id, "users"));
	EXPECT_EQ(1, hm_count_in("bound"));
	EXPECT_LE(2 * EXEC_SIZE / PAGE, hm_part_ulong(id, "used_pages"));
	EXPECT_EQ(OK, hm_child_wait(&c));
	/* The parent's pages and the child's COW copies. */
	EXPECT_LE(allocs + 2 * EXEC_SIZE / PAGE, hm_vmstat("hotmem_alloc"));
	EXPECT_TRUE(hm_settle()) TH_LOG("not freed with the last process");
}

TEST_F_TIMEOUT(bind, thp_faults_come_from_partition, TIMEOUT)
{
	struct instance in = { .size = 64 * MIB, .seed = 4,
			       .advice = MADV_HUGEPAGE,
			       .timeout_ms = BIND_TIMEOUT_MS };
	unsigned long thp = hm_vmstat("thp_fault_alloc");
	char mode[64];
	struct hm_child c;
	long id;

	ASSERT_EQ(0, hm_read_str("/sys/kernel/mm/transparent_hugepage/enabled",
				 mode, sizeof(mode)));
	if (strstr(mode, "[never]"))
		SKIP(return, "THP is disabled");
	ASSERT_EQ(0, hm_child_start(&c, instance, &in));
	ASSERT_EQ(0, hm_child_wait_ready(&c, &id, 120000));
	EXPECT_LT(thp, hm_vmstat("thp_fault_alloc"));
	EXPECT_LE(in.size / PAGE, hm_part_ulong(id, "used_pages"));
	EXPECT_EQ(OK, hm_child_wait(&c));
	EXPECT_TRUE(hm_settle());
}

#define FILE_MIB	32

static const char *const cache_files[] = {
	"/dev/shm/hotmem_bind", "/tmp/hotmem_bind",
};

/* Bound: write and read back a tmpfs file and a page cache file. */
static int write_files(struct hm_child *c, void *arg)
{
	char *buf = malloc(MIB);
	long id = hm_bind(0, BIND_TIMEOUT_MS);
	unsigned long used, i, f;
	int fd;

	if (id < 0)
		return hm_fail(BIND_FAILED, "bind: %s", strerror(-id));
	if (!buf)
		return NO_MEMORY;
	for (f = 0; f < 2; f++) {
		fd = open(cache_files[f], O_RDWR | O_CREAT | O_TRUNC, 0600);
		if (fd < 0)
			return CHILD_FAILED;
		for (i = 0; i < FILE_MIB; i++) {
			hm_fill(buf, MIB, 100 * f + i);
			if (write(fd, buf, MIB) != MIB)
				return CHILD_FAILED;
		}
		for (i = 0; i < FILE_MIB; i++) {
			if (pread(fd, buf, MIB, i * MIB) != MIB)
				return CHILD_FAILED;
			if (verify(buf, MIB, 100 * f + i))
				return DATA_LOST;
		}
		close(fd);
	}
	/* 64 MiB of file data, none of it in the partition. */
	used = hm_part_ulong(id, "used_pages");
	if (used >= 2048)
		return hm_fail(IN_HOTMEM, "%lu pages used in the partition", used);
	return OK;
}

static long check_file(const char *path, uint64_t seed0)
{
	char *buf = malloc(MIB);
	long bad = -1;
	unsigned long i;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || !buf)
		return 0;
	for (i = 0; i < FILE_MIB && bad < 0; i++)
		if (pread(fd, buf, MIB, i * MIB) != MIB ||
		    hm_check(buf, MIB, seed0 + i) >= 0)
			bad = i * MIB;
	close(fd);
	free(buf);
	return bad;
}

/* tmpfs and page cache written by a bound process stay out of HotMem. */
TEST_F_TIMEOUT(bind, page_cache_and_tmpfs_stay_out, TIMEOUT)
{
	struct hm_child c;

	ASSERT_EQ(0, hm_child_start(&c, write_files, NULL));
	EXPECT_EQ(OK, hm_child_wait(&c));
	EXPECT_TRUE(hm_settle()) TH_LOG("file pages of a bound process are in HotMem");
	EXPECT_EQ(-1, check_file(cache_files[0], 0));
	EXPECT_EQ(-1, check_file(cache_files[1], 100));
	unlink(cache_files[0]);
	unlink(cache_files[1]);
}

/* An unbound process holding a pattern. */
static int bystander(struct hm_child *c, void *arg)
{
	size_t len = 16 * MIB;
	char *buf = map_anon(len);

	if (!buf)
		return NO_MEMORY;
	hm_fill(buf, len, 6);
	hm_child_ready(c, 0);
	hm_child_hold(c);
	return verify(buf, len, 6);
}

/*
 * An instance that outgrows its partition is OOM-killed, alone: like a
 * memcg OOM, not a panic under panic_on_oom=1.
 */
TEST_F_TIMEOUT(bind, oom_kills_only_the_instance, TIMEOUT)
{
	struct instance in = { .size = self->psize + 64 * MIB, .seed = 5,
			       .advice = -1, .timeout_ms = BIND_TIMEOUT_MS };
	unsigned long kills = hm_vmstat("oom_kill");
	struct hm_child by, c;
	char saved[16];
	long v;
	int ret;

	ASSERT_EQ(0, hm_read_str("/proc/sys/vm/panic_on_oom", saved, sizeof(saved)));
	ASSERT_EQ(0, hm_child_start(&by, bystander, NULL));
	ASSERT_EQ(0, hm_child_wait_ready(&by, &v, 30000));
	ASSERT_EQ(0, hm_write_str("/proc/sys/vm/panic_on_oom", "1"));
	ret = hm_child_start(&c, instance, &in);
	if (!ret)
		ret = hm_child_wait(&c);
	hm_write_str("/proc/sys/vm/panic_on_oom", saved);
	EXPECT_EQ(128 + SIGKILL, ret);
	EXPECT_LT(kills, hm_vmstat("oom_kill"));
	EXPECT_TRUE(hm_child_alive(&by)) TH_LOG("the bystander was killed");
	EXPECT_EQ(OK, hm_child_wait(&by));
	EXPECT_TRUE(hm_settle()) TH_LOG("the partition is not free after the OOM kill");
}

/* Binds with flags and timeout from @arg; exits with the bind's errno. */
struct try_bind {
	unsigned long flags, timeout_ms;
};

static int try_bind(struct hm_child *c, void *arg)
{
	const struct try_bind *t = arg;
	unsigned long start = hm_now_ms();
	long id = hm_bind(t->flags, t->timeout_ms);

	if (id >= 0) {
		hm_child_ready(c, id);
		hm_child_hold(c);
		return OK;
	}
	hm_child_ready(c, hm_now_ms() - start);
	return -id;
}

/* Starts one holder per partition; 0 once all are bound. */
static int bind_all(struct hm_child *holders, int n)
{
	long id;
	int i;

	for (i = 0; i < n; i++)
		if (hm_child_start(&holders[i], bind_and_hold, NULL) ||
		    hm_child_wait_ready(&holders[i], &id, 30000))
			return -1;
	return hm_count_in("bound") == n ? 0 : -1;
}

/*
 * With every partition bound, a non-blocking bind fails with EAGAIN and a
 * 200 ms bind times out; a bind timeout of 2^32 + 1 ms (msecs_to_jiffies()
 * takes an unsigned int: it used to be 1 ms) is still waiting after 1 s,
 * and gets a partition once one is free.
 */
TEST_F_TIMEOUT(bind, bind_timeouts, TIMEOUT)
{
	struct try_bind nonblock = { .flags = PR_HOTMEM_NONBLOCK };
	struct try_bind shrt = { .timeout_ms = 200 };
	struct try_bind lng = { .timeout_ms = (1UL << 32) + 1 };
	struct hm_child holders[HOTMEM_MAX_PARTS], t, waiter;
	int i, n = self->nr_parts;
	long val;

	ASSERT_GE(HOTMEM_MAX_PARTS, n);
	ASSERT_EQ(0, bind_all(holders, n));

	ASSERT_EQ(0, hm_child_start(&t, try_bind, &nonblock));
	EXPECT_EQ(EAGAIN, hm_child_wait(&t));
	ASSERT_EQ(0, hm_child_start(&t, try_bind, &shrt));
	ASSERT_EQ(0, hm_child_wait_ready(&t, &val, 30000));
	EXPECT_EQ(ETIMEDOUT, hm_child_wait(&t));
	EXPECT_LE(190, val) TH_LOG("the 200 ms bind gave up after %ld ms", val);

	ASSERT_EQ(0, hm_child_start(&waiter, try_bind, &lng));
	EXPECT_EQ(-ETIMEDOUT, hm_child_wait_ready(&waiter, &val, 1000));
	EXPECT_EQ(1UL, hm_read_ulong(HOTMEM "/waiters"));

	/* One holder exits: the waiter gets its partition. */
	EXPECT_EQ(OK, hm_child_wait(&holders[0]));
	ASSERT_EQ(0, hm_child_wait_ready(&waiter, &val, 30000));
	EXPECT_TRUE(hm_part_is(val, "bound"));
	EXPECT_EQ(0UL, hm_read_ulong(HOTMEM "/waiters"));
	EXPECT_EQ(OK, hm_child_wait(&waiter));
	for (i = 1; i < n; i++)
		EXPECT_EQ(OK, hm_child_wait(&holders[i]));
	EXPECT_TRUE(hm_settle());
}

/* Dirties all but 32 MiB of a partition with 0xa5 and holds it. */
static int dirty(struct hm_child *c, void *arg)
{
	size_t len = *(size_t *)arg;
	long id = hm_bind(0, BIND_TIMEOUT_MS);
	char *buf;

	if (id < 0)
		return hm_fail(BIND_FAILED, "bind: %s", strerror(-id));
	buf = map_anon(len);
	if (!buf)
		return NO_MEMORY;
	memset(buf, 0xa5, len);
	hm_child_ready(c, id);
	hm_child_hold(c);
	return hm_check_byte(buf, len, 0xa5) < 0 ? OK : DATA_LOST;
}

/* Waits for a partition; every byte it is given must be zero. */
static int fresh(struct hm_child *c, void *arg)
{
	size_t len = *(size_t *)arg, off;
	long id;
	char *buf;

	id = hm_bind(0, 120000);
	if (id < 0)
		return hm_fail(BIND_FAILED, "bind: %s", strerror(-id));
	buf = map_anon(len);
	if (!buf)
		return NO_MEMORY;
	/* A write fault allocates the page; then the rest must read zero. */
	for (off = 0; off < len; off += PAGE) {
		buf[off] = 0;
		if (hm_check_byte(buf + off, PAGE, 0) >= 0)
			return hm_fail(NOT_ZERO, "page %zu is not zeroed", off / PAGE);
	}
	hm_fill(buf, len, 7);
	return in_partition(id, buf, len) ?: verify(buf, len, 7);
}

TEST_F_TIMEOUT(bind, fresh_memory_is_zeroed, TIMEOUT)
{
	struct try_bind nonblock = { .flags = PR_HOTMEM_NONBLOCK };
	struct hm_child dirtiers[HOTMEM_MAX_PARTS], t, waiter;
	size_t len = self->psize - 32 * MIB;
	unsigned long waits;
	int i, n = self->nr_parts;
	long id;

	ASSERT_GE(HOTMEM_MAX_PARTS, n);
	for (i = 0; i < n; i++) {
		ASSERT_EQ(0, hm_child_start(&dirtiers[i], dirty, &len));
		ASSERT_EQ(0, hm_child_wait_ready(&dirtiers[i], &id, 120000));
	}
	ASSERT_EQ(n, hm_count_in("bound"));
	ASSERT_EQ(0, hm_child_start(&t, try_bind, &nonblock));
	EXPECT_EQ(EAGAIN, hm_child_wait(&t));

	waits = hm_vmstat("hotmem_bind_wait");
	ASSERT_EQ(0, hm_child_start(&waiter, fresh, &len));
	EXPECT_TRUE(hm_poll(hm_read_ulong(HOTMEM "/waiters") == 1, 10000));
	for (i = 0; i < n; i++)
		EXPECT_EQ(OK, hm_child_wait(&dirtiers[i]));
	EXPECT_EQ(OK, hm_child_wait(&waiter));
	EXPECT_LT(waits, hm_vmstat("hotmem_bind_wait"));
	EXPECT_TRUE(hm_settle());
}

TEST_HARNESS_MAIN
