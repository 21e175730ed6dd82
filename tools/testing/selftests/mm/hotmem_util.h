/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the HotMem selftests (hotmem_*.c): the prctl, the
 * files under /sys/kernel/mm/hotmem and /sys/devices/system/memory,
 * /proc/meminfo and /proc/vmstat, pagemap, child processes that hold
 * memory while the test looks at the partitions, and the data pattern
 * that every test writes and then verifies byte for byte.
 *
 * Header only (static inline), so that each test builds from its one
 * source file.
 */
#ifndef __SELFTESTS_MM_HOTMEM_UTIL_H
#define __SELFTESTS_MM_HOTMEM_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_HOTMEM
#define PR_HOTMEM		0x484d454d
#define PR_HOTMEM_BIND		1
#define PR_HOTMEM_GET		2
#define PR_HOTMEM_NONBLOCK	1UL
#endif

#define HOTMEM		"/sys/kernel/mm/hotmem"
#define MEMORY		"/sys/devices/system/memory"
#define PAGE		4096UL
#define MIB		(1024UL * 1024)
#define HOTMEM_MAX_PARTS	1024

#ifndef BIT_ULL
#define BIT_ULL(nr)	(1ULL << (nr))
#endif
#define PM_PRESENT	BIT_ULL(63)
#define PM_SWAP		BIT_ULL(62)
#define PM_PFN_MASK	(BIT_ULL(55) - 1)

/* Reads @path into @buf without its trailing newline; 0 or -errno. */
static inline int hm_read_str(const char *path, char *buf, size_t len)
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
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

/* Writes @val to @path in one write(); 0 or the write's -errno. */
static inline int hm_write_str(const char *path, const char *val)
{
	int fd, ret = 0;
	ssize_t n;

	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -errno;
	n = write(fd, val, strlen(val));
	if (n < 0)
		ret = -errno;
	else if (n != (ssize_t)strlen(val))
		ret = -EIO;
	close(fd);
	return ret;
}

/* A number in @path (decimal, or 0x hex); ULONG_MAX if unreadable. */
static inline unsigned long hm_read_ulong(const char *path)
{
	char buf[64];

	if (hm_read_str(path, buf, sizeof(buf)) || !buf[0])
		return ULONG_MAX;
	return strtoul(buf, NULL, 0);
}

/* The value of /proc/meminfo line @key (in kB); ULONG_MAX if absent. */
static inline unsigned long hm_meminfo_kb(const char *key)
{
	unsigned long val = ULONG_MAX, v;
	size_t klen = strlen(key);
	char k[64];
	FILE *f;

	f = fopen("/proc/meminfo", "r");
	if (!f)
		return ULONG_MAX;
	while (fscanf(f, "%63s %lu%*[^\n]\n", k, &v) == 2)
		if (!strncmp(k, key, klen) && k[klen] == ':')
			val = v;
	fclose(f);
	return val;
}

/* Counter @name of /proc/vmstat; ULONG_MAX if absent. */
static inline unsigned long hm_vmstat(const char *name)
{
	unsigned long val = ULONG_MAX, v;
	char k[64];
	FILE *f;

	f = fopen("/proc/vmstat", "r");
	if (!f)
		return ULONG_MAX;
	while (fscanf(f, "%63s %lu\n", k, &v) == 2)
		if (!strcmp(k, name))
			val = v;
	fclose(f);
	return val;
}

static inline long hm_prctl(unsigned long op, unsigned long a3,
			    unsigned long a4, unsigned long a5)
{
	long ret = prctl(PR_HOTMEM, op, a3, a4, a5);

	return ret < 0 ? -errno : ret;
}

/* Binds the calling process; the partition id or -errno. */
static inline long hm_bind(unsigned long flags, unsigned long timeout_ms)
{
	return hm_prctl(PR_HOTMEM_BIND, flags, timeout_ms, 0);
}

/* Whether HotMem is on (hotmem=on, CONFIG_HOTMEM). */
static inline bool hm_enabled(void)
{
	return !access(HOTMEM "/partitions", F_OK);
}

static inline unsigned long hm_partition_size(void)
{
	return hm_read_ulong(HOTMEM "/partition_size");
}

/* The memory block size (block_size_bytes is hex without 0x). */
static inline unsigned long hm_block_size(void)
{
	char buf[64];

	if (hm_read_str(MEMORY "/block_size_bytes", buf, sizeof(buf)))
		return 0;
	return strtoul(buf, NULL, 16);
}

static inline unsigned long hm_part_ulong(long id, const char *file)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), HOTMEM "/partitions/part%ld/%s", id, file);
	return hm_read_ulong(path);
}

/* Whether partition @id is in @state. */
static inline bool hm_part_is(long id, const char *state)
{
	char path[PATH_MAX], buf[32];

	snprintf(path, sizeof(path), HOTMEM "/partitions/part%ld/state", id);
	return !hm_read_str(path, buf, sizeof(buf)) && !strcmp(buf, state);
}

static inline int hm_cmp_long(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;

	return x < y ? -1 : x > y;
}

/* The ids of every partition, in ascending order; their number or -1. */
static inline int hm_partitions(long *ids, int max)
{
	struct dirent *d;
	int n = 0;
	DIR *dir;

	dir = opendir(HOTMEM "/partitions");
	if (!dir)
		return -1;
	while ((d = readdir(dir)) && n < max)
		if (!strncmp(d->d_name, "part", 4))
			ids[n++] = strtol(d->d_name + 4, NULL, 10);
	closedir(dir);
	qsort(ids, n, sizeof(*ids), hm_cmp_long);
	return n;
}

/* The number of partitions in @state. */
static inline int hm_count_in(const char *state)
{
	long ids[HOTMEM_MAX_PARTS];
	int i, n, found = 0;

	n = hm_partitions(ids, HOTMEM_MAX_PARTS);
	for (i = 0; i < n; i++)
		found += hm_part_is(ids[i], state);
	return found;
}

/* The first partition (lowest id) in @state, or -1. */
static inline long hm_first_in(const char *state)
{
	long ids[HOTMEM_MAX_PARTS];
	int i, n;

	n = hm_partitions(ids, HOTMEM_MAX_PARTS);
	for (i = 0; i < n; i++)
		if (hm_part_is(ids[i], state))
			return ids[i];
	return -1;
}

/* The sum of file @file over every partition. */
static inline unsigned long hm_sum(const char *file)
{
	long ids[HOTMEM_MAX_PARTS];
	unsigned long sum = 0;
	int i, n;

	n = hm_partitions(ids, HOTMEM_MAX_PARTS);
	for (i = 0; i < n; i++)
		sum += hm_part_ulong(ids[i], file);
	return sum;
}

/* A partition's pfn range and node. */
struct hm_part {
	long id;
	unsigned long start_pfn, end_pfn;
	int nid;
};

static inline int hm_part_range(long id, struct hm_part *p)
{
	unsigned long start = hm_part_ulong(id, "start_phys");
	unsigned long size = hm_partition_size();

	if (start == ULONG_MAX || size == ULONG_MAX)
		return -ENOENT;
	p->id = id;
	p->start_pfn = start / PAGE;
	p->end_pfn = p->start_pfn + size / PAGE;
	p->nid = (int)hm_part_ulong(id, "nid");
	return 0;
}

/* The memory block holding partition @id's first page, or -1. */
static inline long hm_part_block(long id)
{
	unsigned long start = hm_part_ulong(id, "start_phys");
	unsigned long bsize = hm_block_size();

	return start == ULONG_MAX || !bsize ? -1 : (long)(start / bsize);
}

static inline void hm_block_path(char *path, size_t len, long block)
{
	snprintf(path, len, MEMORY "/memory%ld/state", block);
}

/* Writes @state to memory block @block; 0 or -errno. */
static inline int hm_block_set(long block, const char *state)
{
	char path[PATH_MAX];

	hm_block_path(path, sizeof(path), block);
	return hm_write_str(path, state);
}

/* Whether memory block @block is in @state. */
static inline bool hm_block_is(long block, const char *state)
{
	char path[PATH_MAX], buf[32];

	hm_block_path(path, sizeof(path), block);
	return !hm_read_str(path, buf, sizeof(buf)) && !strcmp(buf, state);
}

/* The numbers of the offline memory blocks, ascending; their number. */
static inline int hm_offline_blocks(long *blocks, int max)
{
	struct dirent *d;
	long b;
	int n = 0;
	DIR *dir;

	dir = opendir(MEMORY);
	if (!dir)
		return -1;
	while ((d = readdir(dir)) && n < max) {
		if (strncmp(d->d_name, "memory", 6) ||
		    d->d_name[6] < '0' || d->d_name[6] > '9')
			continue;
		b = strtol(d->d_name + 6, NULL, 10);
		if (hm_block_is(b, "offline"))
			blocks[n++] = b;
	}
	closedir(dir);
	qsort(blocks, n, sizeof(*blocks), hm_cmp_long);
	return n;
}

/* The pagemap entries of [buf, buf + len) into @ents; 0 or -1. */
static inline int hm_pagemap(const void *buf, size_t len, uint64_t *ents)
{
	size_t size = len / PAGE * sizeof(*ents);
	ssize_t n;
	int fd;

	fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd < 0)
		return -1;
	n = pread(fd, ents, size, (uintptr_t)buf / PAGE * sizeof(*ents));
	close(fd);
	return n == (ssize_t)size ? 0 : -1;
}

/*
 * Pages of [buf, buf + len) that are present but outside partition @p;
 * ULONG_MAX if pagemap cannot be read (PFNs need CAP_SYS_ADMIN).
 */
static inline unsigned long hm_pages_outside(const struct hm_part *p,
					     const void *buf, size_t len)
{
	uint64_t *ents = calloc(len / PAGE, sizeof(*ents));
	unsigned long n = 0, i, pfn;

	if (!ents || hm_pagemap(buf, len, ents)) {
		free(ents);
		return ULONG_MAX;
	}
	for (i = 0; i < len / PAGE; i++) {
		if (!(ents[i] & PM_PRESENT))
			continue;
		pfn = ents[i] & PM_PFN_MASK;
		if (pfn < p->start_pfn || pfn >= p->end_pfn)
			n++;
	}
	free(ents);
	return n;
}

/* Pages of [buf, buf + len) whose pagemap entry has @bit (ULONG_MAX: error). */
static inline unsigned long hm_pages_with(const void *buf, size_t len,
					  uint64_t bit)
{
	uint64_t *ents = calloc(len / PAGE, sizeof(*ents));
	unsigned long n = 0, i;

	if (!ents || hm_pagemap(buf, len, ents)) {
		free(ents);
		return ULONG_MAX;
	}
	for (i = 0; i < len / PAGE; i++)
		n += !!(ents[i] & bit);
	free(ents);
	return n;
}

/* Present pages of [buf, buf + len) inside any partition (ULONG_MAX: error). */
static inline unsigned long hm_pages_in_hotmem(const void *buf, size_t len)
{
	long ids[HOTMEM_MAX_PARTS];
	struct hm_part p;
	unsigned long in = 0, out;
	int i, n;

	n = hm_partitions(ids, HOTMEM_MAX_PARTS);
	for (i = 0; i < n; i++) {
		if (hm_part_range(ids[i], &p))
			return ULONG_MAX;
		out = hm_pages_outside(&p, buf, len);
		if (out == ULONG_MAX)
			return ULONG_MAX;
		in += hm_pages_with(buf, len, PM_PRESENT) - out;
	}
	return in;
}

/*
 * The pattern: every 8-byte word differs from its neighbours and from the
 * same word of every other page and seed, so that a lost, swapped, shifted
 * or stale page shows.
 */
static inline uint64_t hm_word(size_t off, uint64_t seed)
{
	return (off + 8) * 0x9e3779b97f4a7c15ULL ^ seed;
}

static inline void hm_fill(void *buf, size_t len, uint64_t seed)
{
	size_t off;

	for (off = 0; off + 8 <= len; off += 8)
		*(uint64_t *)((char *)buf + off) = hm_word(off, seed);
}

/*
 * Bytes [@from, @len) of @buf, which hm_fill(buf, len, seed) filled: the
 * offset of the first that differs from the pattern, or -1.
 */
static inline ssize_t hm_check_from(const void *buf, size_t from, size_t len,
				    uint64_t seed)
{
	uint64_t want;
	size_t off;

	for (off = from & ~7UL; off + 8 <= len; off += 8) {
		want = hm_word(off, seed);
		if (memcmp((const char *)buf + off, &want, 8))
			return off;
	}
	return -1;
}

/* The offset of the first byte that differs from the pattern, or -1. */
static inline ssize_t hm_check(const void *buf, size_t len, uint64_t seed)
{
	return hm_check_from(buf, 0, len, seed);
}

/* The offset of the first byte that is not @c, or -1. */
static inline ssize_t hm_check_byte(const void *buf, size_t len, int c)
{
	const unsigned char *p = buf;
	size_t off;

	for (off = 0; off < len; off++)
		if (p[off] != (unsigned char)c)
			return off;
	return -1;
}

static inline unsigned long hm_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000UL + ts.tv_nsec / 1000000;
}

/* Evaluates @cond every 50 ms for up to @ms; whether it became true. */
#define hm_poll(cond, ms)						\
({									\
	unsigned long __end = hm_now_ms() + (ms);			\
	bool __ok;							\
									\
	while (!(__ok = (cond)) && hm_now_ms() < __end)			\
		usleep(50000);						\
	__ok;								\
})

/*
 * Every partition free, with no user and no used page, nobody waiting,
 * and HotMemFree all of HotMemTotal but the poisoned pages.
 */
static inline bool hm_all_free(void)
{
	unsigned long poisoned_kb = hm_sum("poisoned_pages") * (PAGE / 1024);
	long ids[HOTMEM_MAX_PARTS];
	int i, n;

	n = hm_partitions(ids, HOTMEM_MAX_PARTS);
	if (n < 0 || hm_read_ulong(HOTMEM "/waiters") != 0 ||
	    hm_meminfo_kb("HotMemFree") + poisoned_kb != hm_meminfo_kb("HotMemTotal"))
		return false;
	for (i = 0; i < n; i++)
		if (!hm_part_is(ids[i], "free") || hm_part_ulong(ids[i], "users") ||
		    hm_part_ulong(ids[i], "used_pages"))
			return false;
	return true;
}

/* hm_all_free() within 10 s. */
static inline bool hm_settle(void)
{
	return hm_poll(hm_all_free(), 10000);
}

/*
 * A child process that sets something up (binds, maps, fills), reports a
 * number through hm_child_ready() and then holds on until the test calls
 * hm_child_release(); its exit status is the verdict.  Children forked
 * later inherit the pipes of earlier ones, so release is a byte written,
 * not the end of the pipe, and a child that died is noticed by its pid.
 */
struct hm_child {
	pid_t pid;
	int ready[2];	/* child -> test: one long when set up */
	int go[2];	/* test -> child: a byte to release it */
};

/*
 * Forks a child running @fn(@c, @arg); its return value becomes the
 * child's exit status.  0, or -errno.
 */
static inline int hm_child_start(struct hm_child *c,
				 int (*fn)(struct hm_child *c, void *arg),
				 void *arg)
{
	if (pipe(c->ready))
		return -errno;
	if (pipe(c->go)) {
		close(c->ready[0]);
		close(c->ready[1]);
		return -errno;
	}
	signal(SIGPIPE, SIG_IGN);
	fflush(stdout);
	fflush(stderr);
	c->pid = fork();
	if (c->pid < 0)
		return -errno;
	if (!c->pid) {
		close(c->ready[0]);
		close(c->go[1]);
		_exit(fn(c, arg));
	}
	close(c->ready[1]);
	close(c->go[0]);
	return 0;
}

/* In the child: report @val to the test. */
static inline void hm_child_ready(struct hm_child *c, long val)
{
	if (write(c->ready[1], &val, sizeof(val)) != sizeof(val))
		_exit(100);
}

/* In the child: hold on until the test releases us. */
static inline void hm_child_hold(struct hm_child *c)
{
	char b;

	while (read(c->go[0], &b, 1) < 0 && errno == EINTR)
		;
}

/* Whether the child is still running (not yet reaped either way). */
static inline bool hm_child_alive(struct hm_child *c)
{
	siginfo_t info = {};

	return c->pid > 0 &&
	       !waitid(P_PID, c->pid, &info, WEXITED | WNOHANG | WNOWAIT) &&
	       info.si_pid == 0;
}

/*
 * In the test: wait up to @ms for the child's report.  0 and *@val, or
 * -ETIMEDOUT, or -EPIPE if the child ended without reporting.
 */
static inline int hm_child_wait_ready(struct hm_child *c, long *val, int ms)
{
	struct pollfd pfd = { .fd = c->ready[0], .events = POLLIN };
	unsigned long end = hm_now_ms() + ms;
	bool alive;
	int ret;

	do {
		alive = hm_child_alive(c);
		ret = poll(&pfd, 1, alive ? 100 : 0);
		if (ret > 0)
			return read(c->ready[0], val, sizeof(*val)) == sizeof(*val) ?
			       0 : -EPIPE;
		if (!alive)
			return -EPIPE;
	} while (hm_now_ms() < end);
	return -ETIMEDOUT;
}

static inline void hm_child_release(struct hm_child *c)
{
	if (c->go[1] < 0)
		return;
	/* EPIPE if it is gone already (SIGPIPE is ignored). */
	if (write(c->go[1], "", 1) < 0 && errno != EPIPE)
		perror("# releasing a child");
	close(c->go[1]);
	c->go[1] = -1;
}

/*
 * Releases the child and reaps it: its exit status, or 128 + the signal
 * that ended it (like a shell), or -1.
 */
static inline int hm_child_wait(struct hm_child *c)
{
	int status;

	hm_child_release(c);
	if (c->pid <= 0)
		return -1;
	if (waitpid(c->pid, &status, 0) != c->pid)
		return -1;
	c->pid = 0;
	close(c->ready[0]);
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

/* In a child: say why it fails, then return @code. */
#define hm_fail(code, fmt, ...)						\
({									\
	fprintf(stderr, "# %d: " fmt "\n", getpid(), ##__VA_ARGS__);	\
	(code);								\
})

/* Needs kselftest_harness.h, which every HotMem test includes first. */
#ifdef __KSELFTEST_HARNESS_H
/* A write to @file that must fail with @err and leave its value alone. */
static inline void refused(struct __test_metadata *_metadata,
			   const char *file, const char *val, int err)
{
	char before[64], after[64];

	ASSERT_EQ(0, hm_read_str(file, before, sizeof(before)));
	EXPECT_EQ(-err, hm_write_str(file, val)) TH_LOG("%s <- '%s'", file, val);
	ASSERT_EQ(0, hm_read_str(file, after, sizeof(after)));
	EXPECT_STREQ(before, after);
}
#endif

#endif /* __SELFTESTS_MM_HOTMEM_UTIL_H */
