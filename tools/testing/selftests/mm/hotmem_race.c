// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: binding, exiting and offlining race each other.
 *
 * Several workers bind, fill memory with a pattern, check it and exit, in
 * a loop, while another process offlines and re-onlines the partitions'
 * memory blocks as fast as it can.  An offline must only ever succeed on a
 * block whose partition nobody uses (or fail with EBUSY/EAGAIN), a bound
 * instance must never lose data or see a page outside its partition, and
 * at the end every partition is free with all its pages, nobody waits,
 * and HotMemFree equals HotMemTotal.
 *
 * Needs root and a HotMem guest with at least two free partitions onlined
 * through sysfs (memory blocks the test can offline and online again).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../kselftest_harness.h"

#ifndef PR_HOTMEM
#define PR_HOTMEM		0x484d454d
#define PR_HOTMEM_BIND		1
#endif

#define HOTMEM		"/sys/kernel/mm/hotmem"
#define MEMORY		"/sys/devices/system/memory"
#define PAGE		4096UL
#define BUF_SIZE	(8UL << 20)
#define WORKERS		3
#define SECONDS		30
#define MAX_BLOCKS	64
#ifndef BIT_ULL
#define BIT_ULL(nr)	(1ULL << (nr))
#endif
#define PM_PRESENT	BIT_ULL(63)
#define PM_PFN_MASK	(BIT_ULL(55) - 1)

static unsigned long read_ulong(const char *path)
{
	char buf[64] = "";
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd < 0)
		return ULONG_MAX;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? strtoul(buf, NULL, 0) : ULONG_MAX;
}

static int read_word(const char *path, char *buf, size_t len)
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

static int write_word(const char *path, const char *val)
{
	int fd, ret = 0;

	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -errno;
	if (write(fd, val, strlen(val)) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

static unsigned long meminfo_kb(const char *key)
{
	unsigned long val = ULONG_MAX, v;
	char k[64];
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return ULONG_MAX;
	while (fscanf(f, "%63s %lu kB\n", k, &v) == 2)
		if (!strncmp(k, key, strlen(key)) && k[strlen(key)] == ':')
			val = v;
	fclose(f);
	return val;
}

/* The memory block numbers of every partition, from their start and size. */
static int partition_blocks(int *blocks, int max)
{
	unsigned long bsize, psize, start, b;
	char path[PATH_MAX];
	struct dirent *d;
	int n = 0;
	DIR *dir;

	/* block_size_bytes is hex without a prefix. */
	if (read_word(MEMORY "/block_size_bytes", path, sizeof(path)))
		return -1;
	bsize = strtoul(path, NULL, 16);
	psize = read_ulong(HOTMEM "/partition_size");
	dir = opendir(HOTMEM "/partitions");
	if (!dir || !bsize || psize == ULONG_MAX)
		return -1;
	while ((d = readdir(dir))) {
		if (strncmp(d->d_name, "part", 4))
			continue;
		snprintf(path, sizeof(path), HOTMEM "/partitions/%s/start_phys",
			 d->d_name);
		start = read_ulong(path);
		for (b = start / bsize; b < (start + psize) / bsize && n < max; b++)
			blocks[n++] = (int)b;
	}
	closedir(dir);
	return n;
}

static void fill(char *buf, size_t len, uint64_t seed)
{
	size_t off;

	for (off = 0; off < len; off += sizeof(uint64_t))
		*(uint64_t *)(buf + off) = off * 0x9e3779b97f4a7c15ULL ^ seed;
}

static bool check(const char *buf, size_t len, uint64_t seed)
{
	size_t off;

	for (off = 0; off < len; off += sizeof(uint64_t))
		if (*(uint64_t *)(buf + off) != (off * 0x9e3779b97f4a7c15ULL ^ seed))
			return false;
	return true;
}

/* Whether every page of @buf is inside partition @id. */
static bool in_partition(const char *buf, size_t len, long id)
{
	static uint64_t ents[BUF_SIZE / PAGE];
	unsigned long start, size, pfn, i;
	char path[PATH_MAX];
	bool ok = true;
	int fd;

	snprintf(path, sizeof(path), HOTMEM "/partitions/part%ld/start_phys", id);
	start = read_ulong(path) / PAGE;
	size = read_ulong(HOTMEM "/partition_size") / PAGE;
	fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd < 0)
		return false;
	if (pread(fd, ents, len / PAGE * sizeof(ents[0]),
		  (uintptr_t)buf / PAGE * sizeof(ents[0])) !=
	    (ssize_t)(len / PAGE * sizeof(ents[0])))
		ok = false;
	close(fd);
	for (i = 0; ok && i < len / PAGE; i++) {
		pfn = ents[i] & PM_PFN_MASK;
		if (!(ents[i] & PM_PRESENT) || pfn < start || pfn >= start + size)
			ok = false;
	}
	return ok;
}

/*
 * One instance: bind (waiting at most 2 s), fill, let the offliner have a
 * go, check.  Exit status 0: fine; 2: no partition in time; 1: data lost or
 * a page outside the partition.
 */
static void instance(uint64_t seed)
{
	long id = prctl(PR_HOTMEM, PR_HOTMEM_BIND, 0, 2000, 0);
	char *buf;

	if (id < 0)
		_exit(errno == ETIMEDOUT ? 2 : 3);
	buf = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		_exit(3);
	fill(buf, BUF_SIZE, seed);
	usleep(20000);
	if (!check(buf, BUF_SIZE, seed) || !in_partition(buf, BUF_SIZE, id))
		_exit(1);
	_exit(0);
}

/* Bind/exit in a loop until @end; returns instances that lost data. */
static int worker(time_t end, int w, int *ran)
{
	int status, bad = 0;
	uint64_t seed = w;
	pid_t pid;

	*ran = 0;
	while (time(NULL) < end) {
		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		pid = fork();
		if (pid < 0)
			return -1;
		if (!pid)
			instance(seed);
		if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
			return -1;
		switch (WEXITSTATUS(status)) {
		case 0:
			(*ran)++;
			break;
		case 2:
			break;
		default:
			bad++;
		}
	}
	return bad;
}

/*
 * Offline and re-online the blocks in turn until @end.  Returns the number
 * of offlines that succeeded, or -1 on an unexpected error (an errno other
 * than EBUSY or EAGAIN, or a block that would not come back online).
 */
static int offliner(time_t end, const int *blocks, int n)
{
	char path[PATH_MAX], state[32];
	int i = 0, done = 0, ret;

	while (time(NULL) < end) {
		snprintf(path, sizeof(path), MEMORY "/memory%d/state", blocks[i]);
		ret = write_word(path, "offline");
		if (!ret) {
			done++;
			if (write_word(path, "online_hotmem"))
				return -1;
		} else if (ret != -EBUSY && ret != -EAGAIN) {
			fprintf(stderr, "# offline of memory%d: %s\n", blocks[i],
				strerror(-ret));
			return -1;
		}
		if (read_word(path, state, sizeof(state)) || strcmp(state, "online"))
			return -1;
		i = (i + 1) % n;
	}
	return done;
}

struct results {
	int bad[WORKERS];	/* instances that lost data, -1: worker failed */
	int ran[WORKERS];	/* instances that bound and checked out */
	int offlined;		/* successful offlines, -1: unexpected error */
};

FIXTURE(race)
{
	int blocks[MAX_BLOCKS];
	int nr_blocks;
};

FIXTURE_SETUP(race)
{
	if (access(HOTMEM "/partitions", F_OK))
		SKIP(return, "HotMem is off");
	ASSERT_LE(2UL, read_ulong(HOTMEM "/nr_partitions"));
	self->nr_blocks = partition_blocks(self->blocks, MAX_BLOCKS);
	ASSERT_LT(0, self->nr_blocks);
}

FIXTURE_TEARDOWN(race)
{
}

/* Every partition free with all its pages; false after 10 s. */
static bool settled(unsigned long total_kb)
{
	char path[PATH_MAX], state[32];
	struct dirent *d;
	bool ok = false;
	int i;
	DIR *dir;

	for (i = 0; i < 100 && !ok; i++, usleep(100000)) {
		ok = meminfo_kb("HotMemFree") == total_kb &&
		     meminfo_kb("HotMemTotal") == total_kb &&
		     read_ulong(HOTMEM "/waiters") == 0;
		dir = opendir(HOTMEM "/partitions");
		if (!dir)
			return false;
		while (ok && (d = readdir(dir))) {
			if (strncmp(d->d_name, "part", 4))
				continue;
			snprintf(path, sizeof(path), HOTMEM "/partitions/%s/state",
				 d->d_name);
			ok = !read_word(path, state, sizeof(state)) &&
			     !strcmp(state, "free");
			snprintf(path, sizeof(path), HOTMEM "/partitions/%s/users",
				 d->d_name);
			ok = ok && read_ulong(path) == 0;
		}
		closedir(dir);
	}
	return ok;
}

TEST_F_TIMEOUT(race, bind_exit_and_offline, 300)
{
	unsigned long total = meminfo_kb("HotMemTotal");
	time_t end = time(NULL) + SECONDS;
	struct results *res;
	int w, status, bad = 0, ran = 0;
	pid_t pid[WORKERS + 1];

	res = mmap(NULL, sizeof(*res), PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, res);
	for (w = 0; w <= WORKERS; w++) {
		pid[w] = fork();
		ASSERT_LE(0, pid[w]);
		if (pid[w])
			continue;
		if (w < WORKERS)
			res->bad[w] = worker(end, w, &res->ran[w]);
		else
			res->offlined = offliner(end, self->blocks,
						 self->nr_blocks);
		_exit(0);
	}
	for (w = 0; w <= WORKERS; w++) {
		ASSERT_EQ(pid[w], waitpid(pid[w], &status, 0));
		EXPECT_TRUE(WIFEXITED(status) && !WEXITSTATUS(status));
	}
	for (w = 0; w < WORKERS; w++) {
		EXPECT_LE(0, res->bad[w]);
		bad += res->bad[w];
		ran += res->ran[w];
	}
	TH_LOG("%d instances ran, %d offlines succeeded", ran, res->offlined);
	EXPECT_EQ(0, bad) TH_LOG("instances lost data or left their partition");
	EXPECT_LT(0, ran);
	/* Offlines succeeded: the race with binders was really run. */
	EXPECT_LT(0, res->offlined);
	EXPECT_TRUE(settled(total));
}

TEST_HARNESS_MAIN
