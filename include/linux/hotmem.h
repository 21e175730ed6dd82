/* SPDX-License-Identifier: GPL-2.0 */
/*
 * HotMem: hotplugged memory split into fixed-size partitions, one per
 * function instance, so that an instance's memory can be unplugged at once
 * when it exits.  See Documentation/admin-guide/mm/hotmem.rst.
 */
#ifndef _LINUX_HOTMEM_H
#define _LINUX_HOTMEM_H

#include <linux/err.h>
#include <linux/jump_label.h>
#include <linux/mm_types.h>
#include <linux/mmzone.h>
#include <linux/types.h>

struct notifier_block;
struct seq_file;

/**
 * enum hotmem_state - life cycle of a HotMem partition
 *
 * @HOTMEM_ABSENT:     no block of the partition is online.
 * @HOTMEM_POPULATING: some but not all blocks are online (or some went
 *                     offline); every online page is free.  Cannot be bound.
 * @HOTMEM_FREE:       all blocks online, every page free, no users.  Can be
 *                     bound or offlined on the fast path.
 * @HOTMEM_BOUND:      at least one mm is bound; only bound mms allocate here.
 * @HOTMEM_DRAINING:   no users left, but some pages are still referenced
 *                     (pins, pipes, in-flight I/O).  Frees are accepted,
 *                     nothing is allocated; becomes FREE (or POPULATING, if
 *                     blocks are missing) with the last page.  Its blocks
 *                     are offlined on the slow path.
 * @HOTMEM_OFFLINING:  claimed by an offline of one of its blocks (and, if it
 *                     was DRAINING, the migration of its used pages);
 *                     transient, inside one offline_pages() call.  Cannot
 *                     be bound.
 *
 * The transitions are documented at struct hotmem_part in mm/hotmem.c.
 */
enum hotmem_state {
	HOTMEM_ABSENT,
	HOTMEM_POPULATING,
	HOTMEM_FREE,
	HOTMEM_BOUND,
	HOTMEM_DRAINING,
	HOTMEM_OFFLINING,
	NR_HOTMEM_STATES,
};

/**
 * struct hotmem_partition_info - snapshot of one partition, for drivers
 * @state: its state
 * @users: number of mms bound to it
 * @nid: its node
 * @online_blocks: number of online memory blocks
 * @managed_pages: pages of online blocks handed to the partition
 * @free_pages: of those, the free ones
 */
struct hotmem_partition_info {
	enum hotmem_state state;
	unsigned int users;
	int nid;
	unsigned long online_blocks;
	unsigned long managed_pages;
	unsigned long free_pages;
};

/*
 * Notifier actions of hotmem_register_notifier().  @data is NULL: the
 * callee looks at the partitions it cares about with hotmem_partition_info().
 *
 * HOTMEM_PARTITIONS_RELEASED: at least one partition lost its last user and
 *	became FREE (or, via DRAINING, became FREE or POPULATING) since the
 *	previous call.  Several releases may be reported by one call.
 */
#define HOTMEM_PARTITIONS_RELEASED	1

#ifdef CONFIG_HOTMEM

bool hotmem_enabled(void);
unsigned long hotmem_partition_bytes(void);
bool hotmem_online_by_default(void);

/* For drivers that plug and unplug whole partitions (virtio-mem). */
int hotmem_add_partitions(int nid, u64 start, u64 size,
			  const char *resource_name);
int hotmem_node_for(int pxm, u64 start);
int hotmem_remove_partitions(u64 start, u64 size);
int hotmem_partition_info(u64 start, struct hotmem_partition_info *info);
int hotmem_register_notifier(struct notifier_block *nb);
int hotmem_unregister_notifier(struct notifier_block *nb);

/*
 * Outside mm/: /proc/meminfo, binding (kernel/fork.c, kernel/sys.c).  The
 * hooks of the allocator, onlining and offlining are in mm/internal.h.
 */
DECLARE_STATIC_KEY_FALSE(hotmem_free_key);
void hotmem_report_meminfo(struct seq_file *m);
void __hotmem_mm_init(struct mm_struct *mm);
void __hotmem_mm_release(struct mm_struct *mm);
long hotmem_prctl(unsigned long op, unsigned long arg3, unsigned long arg4,
		  unsigned long arg5);

/*
 * Binding needs a FREE partition, which needs an onlined HotMem block: until
 * the first one (hotmem_free_key), no mm can be bound, and fork, exec and
 * exit pay a patched-out branch.
 */
static __always_inline void hotmem_mm_init(struct mm_struct *mm)
{
	if (static_branch_unlikely(&hotmem_free_key))
		__hotmem_mm_init(mm);
}

static __always_inline void hotmem_mm_release(struct mm_struct *mm)
{
	if (static_branch_unlikely(&hotmem_free_key))
		__hotmem_mm_release(mm);
}

#else /* !CONFIG_HOTMEM */

static inline bool hotmem_enabled(void)
{
	return false;
}

static inline unsigned long hotmem_partition_bytes(void)
{
	return 0;
}

static inline bool hotmem_online_by_default(void)
{
	return false;
}

static inline int hotmem_add_partitions(int nid, u64 start, u64 size,
					const char *resource_name)
{
	return -EOPNOTSUPP;
}

static inline int hotmem_node_for(int pxm, u64 start)
{
	return NUMA_NO_NODE;
}

static inline int hotmem_remove_partitions(u64 start, u64 size)
{
	return -EOPNOTSUPP;
}

static inline int hotmem_partition_info(u64 start,
					struct hotmem_partition_info *info)
{
	return -EOPNOTSUPP;
}

static inline int hotmem_register_notifier(struct notifier_block *nb)
{
	return -EOPNOTSUPP;
}

static inline int hotmem_unregister_notifier(struct notifier_block *nb)
{
	return -EOPNOTSUPP;
}

static inline void hotmem_report_meminfo(struct seq_file *m)
{
}

static inline void hotmem_mm_init(struct mm_struct *mm)
{
}

static inline void hotmem_mm_release(struct mm_struct *mm)
{
}

static inline long hotmem_prctl(unsigned long op, unsigned long arg3,
				unsigned long arg4, unsigned long arg5)
{
	return -EINVAL;
}
#endif /* CONFIG_HOTMEM */
#endif /* _LINUX_HOTMEM_H */
