// SPDX-License-Identifier: GPL-2.0
/*
 * HotMem: hotplugged memory split into fixed-size partitions.
 *
 * Memory blocks onlined with "online_hotmem" go to ZONE_HOTMEM, which no GFP
 * mask resolves to.  The zone is cut into partitions: naturally aligned,
 * power-of-two multiples of the memory block size.  Every partition keeps its
 * own buddy free lists; the zone's free_area and pcp lists stay empty.  Free
 * pages of the zone are diverted here from the page freeing paths
 * (hotmem_free_pages()), and a partition whose pages are all free can be
 * offlined by unlinking its max-order buddies: no scan, no isolation, no
 * migration.
 *
 * See Documentation/mm/hotmem-design.rst for why this representation was
 * chosen over a zone per partition.
 */

#define pr_fmt(fmt) "hotmem: " fmt

#include <acpi/acpi_numa.h>
#include <linux/capability.h>
#include <linux/gfp.h>
#include <linux/highmem.h>
#include <linux/hotmem.h>
#include <linux/init.h>
#include <linux/kobject.h>
#include <linux/log2.h>
#include <linux/memory.h>
#include <linux/memcontrol.h>
#include <linux/memory_hotplug.h>
#include <linux/mm.h>
#include <linux/notifier.h>
#include <linux/mmzone.h>
#include <linux/oom.h>
#include <linux/pfn.h>
#include <linux/prctl.h>
#include <linux/printk.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/seq_file.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/swap.h>
#include <linux/sysfs.h>
#include <linux/vmstat.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "internal.h"

static const char * const hotmem_state_names[NR_HOTMEM_STATES] = {
	[HOTMEM_ABSENT]		= "absent",
	[HOTMEM_POPULATING]	= "populating",
	[HOTMEM_FREE]		= "free",
	[HOTMEM_BOUND]		= "bound",
	[HOTMEM_DRAINING]	= "draining",
	[HOTMEM_OFFLINING]	= "offlining",
};

/**
 * struct hotmem_part - one HotMem partition
 * @lock:	protects everything below it; irq-safe because pages are freed
 *		from any context.
 * @state:	see enum hotmem_state.
 * @users:	number of mm_structs bound to the partition.
 * @nr_blocks:	number of online memory blocks.
 * @nr_managed:	pages of online blocks that were handed to the partition.
 * @nr_free:	pages on @free_list.
 * @nr_poisoned: hardware-poisoned pages of online blocks.  They are neither
 *		free nor in use, never return to @free_list, and are dropped
 *		when their block goes offline.
 * @free_list:	buddy free lists, one per order; free pages are PageBuddy with
 *		their order in page_private, as in the zone free lists.
 * @prev_state:	state to return to if an offline is cancelled.
 * @id:		index of the partition: start_pfn >> hotmem_part_shift.
 * @nid:	node of the partition's memory.
 * @start_pfn:	first pfn; the partition spans 1 << hotmem_part_shift pages.
 * @kobj:	/sys/kernel/mm/hotmem/partitions/partN.
 * @rcu:	freeing is RCU-delayed for lockless walkers of the table.
 *
 * State transitions (enum hotmem_state; all under @lock; those that change
 * the set of online blocks also under mem_hotplug_lock held for write and
 * hotmem_mutex):
 *
 *   ABSENT     -> POPULATING  first block onlined          (online_pages)
 *   POPULATING -> FREE        last block onlined           (online_pages)
 *   FREE       -> BOUND       first mm binds               (prctl)
 *   BOUND      -> FREE        last mm released, all free   (mm teardown)
 *   BOUND      -> DRAINING    last mm released, pages left (mm teardown)
 *   DRAINING   -> FREE        last page freed              (page free path)
 *   FREE, POPULATING, DRAINING -> OFFLINING                (offline_pages)
 *   OFFLINING  -> @prev_state offline cancelled; DRAINING becomes FREE if
 *                             its last page went meanwhile
 *   OFFLINING  -> POPULATING  block gone, others remain
 *   OFFLINING  -> ABSENT      last block gone
 *
 * A BOUND partition is never offlined.  An offline owns the partition from
 * hotmem_offline_begin() to the commit or cancel: OFFLINING cannot be
 * bound, so a DRAINING partition whose used pages the slow path migrates
 * cannot be claimed by a binder when its last page goes, and the migration
 * never moves a new instance's pages out.  Blocks are only taken out once
 * no page of the partition is used, so a partition that loses blocks never
 * has used pages, and a DRAINING partition always has all its blocks.
 *
 * Invariant: every page of an online block is on @free_list, in use, or
 * poisoned; no page is in use exactly when @nr_free + @nr_poisoned ==
 * @nr_managed (hotmem_part_empty()), which always holds in POPULATING and
 * FREE, and in OFFLINING unless @prev_state is DRAINING.  Buddies never
 * merge across partitions because partitions are aligned to their size,
 * which is at least a memory block and so larger than a max-order buddy.
 *
 * A partition is created when its first block is onlined and lives until
 * the partition geometry is changed; pointers to it stay valid meanwhile.
 */
struct hotmem_part {
	spinlock_t lock;	/* see above: protects the fields up to @free_list */
	enum hotmem_state state;
	unsigned int users;
	unsigned long nr_blocks;
	unsigned long nr_managed;
	unsigned long nr_free;
	unsigned long nr_poisoned;
	struct list_head free_list[NR_PAGE_ORDERS];
	enum hotmem_state prev_state;

	unsigned long id;
	int nid;
	unsigned long start_pfn;
	struct kobject kobj;
	struct rcu_head rcu;
};

DEFINE_STATIC_KEY_FALSE(hotmem_free_key);

/* Set from the hotmem= boot parameter only; read-only afterwards. */
static bool hotmem_on __ro_after_init;

/*
 * hotmem_mutex serialises changes of the partition table and geometry.  It
 * nests inside mem_hotplug_lock.  Lookups from the free path use
 * xa_load() under RCU and need no lock: entries are only erased when no
 * partition has an online block, i.e. when nothing can be freed into them.
 */
static DEFINE_MUTEX(hotmem_mutex);
static DEFINE_XARRAY(hotmem_parts);

/* Partition geometry; changed only under hotmem_mutex with no partition. */
static unsigned long hotmem_part_bytes = SZ_128M;
static unsigned int hotmem_part_shift;	/* log2(pages per partition) */
static unsigned int hotmem_max_parts = 64;
static unsigned int hotmem_nr_parts;	/* partitions not ABSENT */

/* Tasks waiting in PR_HOTMEM_BIND for a partition to become free. */
static DECLARE_WAIT_QUEUE_HEAD(hotmem_bind_wq);

static struct kobject *hotmem_kobj;
static struct kobject *hotmem_parts_kobj;

/*
 * An early parameter, so that it is known before memhp_default_state= is
 * parsed wherever the two stand on the command line.
 */
static int __init setup_hotmem(char *str)
{
	if (!str || kstrtobool(str, &hotmem_on))
		pr_warn("ignoring invalid hotmem=%s, HotMem stays off\n", str ?: "");
	return 0;
}
early_param("hotmem", setup_hotmem);

static int __init setup_hotmem_partition_size(char *str)
{
	unsigned long long size = memparse(str, NULL);

	if (!size || !is_power_of_2(size))
		pr_warn("ignoring hotmem_partition_size=%s: not a power of two\n", str);
	else
		hotmem_part_bytes = size;
	return 1;
}
__setup("hotmem_partition_size=", setup_hotmem_partition_size);

static int __init setup_hotmem_partitions(char *str)
{
	unsigned int n;

	if (kstrtouint(str, 0, &n) || !n)
		pr_warn("ignoring invalid hotmem_partitions=%s\n", str);
	else
		hotmem_max_parts = n;
	return 1;
}
__setup("hotmem_partitions=", setup_hotmem_partitions);

/**
 * hotmem_enabled - whether HotMem was switched on at boot
 *
 * With hotmem=off (the default) nothing can be onlined into ZONE_HOTMEM and
 * the kernel behaves as without CONFIG_HOTMEM.
 *
 * Return: true if the kernel was booted with hotmem=on.
 */
bool hotmem_enabled(void)
{
	return hotmem_on;
}
EXPORT_SYMBOL_GPL(hotmem_enabled);

/**
 * hotmem_partition_bytes - size of a HotMem partition in bytes
 *
 * Drivers plug and unplug memory in whole partitions of this size, aligned
 * to it.
 *
 * Return: the partition size in bytes.
 */
unsigned long hotmem_partition_bytes(void)
{
	return READ_ONCE(hotmem_part_bytes);
}
EXPORT_SYMBOL_GPL(hotmem_partition_bytes);

/**
 * hotmem_online_by_default - whether hot-added memory goes to HotMem
 *
 * Drivers that choose how to plug memory (virtio-mem) plug memory that the
 * auto-online policy puts into HotMem in whole partitions: a partition can
 * only take blocks whose pages are all onlined at once.
 *
 * Return: true if HotMem is on and the auto-online policy is
 * "online_hotmem".
 */
bool hotmem_online_by_default(void)
{
	return hotmem_on && mhp_get_default_online_type() == MMOP_ONLINE_HOTMEM;
}
EXPORT_SYMBOL_GPL(hotmem_online_by_default);

/**
 * hotmem_node_for - the node of a range a driver is about to add
 * @pxm: ACPI proximity domain the device names, or negative for none
 * @start: physical start address of the range
 *
 * Return: the node of @pxm if the platform knows it, else the node the
 * architecture assigns to @start.
 */
int hotmem_node_for(int pxm, u64 start)
{
	int nid = NUMA_NO_NODE;

#ifdef CONFIG_ACPI_NUMA
	if (pxm >= 0)
		nid = pxm_to_node(pxm);
#endif
	if (nid == NUMA_NO_NODE)
		nid = memory_add_physaddr_to_nid(start);
	return nid;
}
EXPORT_SYMBOL_GPL(hotmem_node_for);

static bool hotmem_size_valid(unsigned long bytes)
{
	return is_power_of_2(bytes) && bytes >= memory_block_size_bytes();
}

static int hotmem_update_geometry(void)
{
	lockdep_assert_held(&hotmem_mutex);
	if (!hotmem_size_valid(hotmem_part_bytes)) {
		pr_warn_once("partition size %lu is not a power-of-two multiple of the memory block size %lu\n",
			     hotmem_part_bytes, memory_block_size_bytes());
		return -EINVAL;
	}
	hotmem_part_shift = ilog2(hotmem_part_bytes >> PAGE_SHIFT);
	return 0;
}

static inline struct hotmem_part *hotmem_pfn_to_part(unsigned long pfn)
{
	return xa_load(&hotmem_parts, pfn >> hotmem_part_shift);
}

/* Caller holds part->lock.  Whether no page of the partition is in use. */
static inline bool hotmem_part_empty(const struct hotmem_part *part)
{
	lockdep_assert_held(&part->lock);
	return part->nr_free + part->nr_poisoned == part->nr_managed;
}

/* ---------------------------------------------------------------------
 * Partition buddy allocator
 */

static inline void hotmem_add_free(struct hotmem_part *part, struct page *page,
				   unsigned int order)
{
	set_page_private(page, order);
	__SetPageBuddy(page);
	list_add(&page->buddy_list, &part->free_list[order]);
}

static inline void hotmem_del_free(struct page *page)
{
	list_del(&page->buddy_list);
	__ClearPageBuddy(page);
	set_page_private(page, 0);
}

/* Caller holds part->lock.  Merges @page with its free buddies. */
static void __hotmem_free_one(struct hotmem_part *part, struct page *page,
			      unsigned long pfn, unsigned int order)
{
	unsigned long buddy_pfn;
	struct page *buddy;

	lockdep_assert_held(&part->lock);
	while (order < MAX_PAGE_ORDER) {
		buddy = find_buddy_page_pfn(page, pfn, order, &buddy_pfn);
		if (!buddy)
			break;
		hotmem_del_free(buddy);
		page = page + (min(pfn, buddy_pfn) - pfn);
		pfn = min(pfn, buddy_pfn);
		order++;
	}
	hotmem_add_free(part, page, order);
}

/*
 * Caller holds part->lock.  Free a block that may contain hardware-poisoned
 * pages (a THP that memory-failure could not split): those stay off the
 * free lists; they are counted in @nr_poisoned already.  Only called while
 * the partition has poisoned pages, so the common free path does not look
 * at every page.  Return: the number of pages freed.
 */
static unsigned long hotmem_free_unpoisoned(struct hotmem_part *part,
					    struct page *page,
					    unsigned long pfn,
					    unsigned int order)
{
	unsigned long i, nr = 1UL << order, freed = 0;

	lockdep_assert_held(&part->lock);
	for (i = 0; i < nr; i++)
		if (PageHWPoison(page + i))
			break;
	if (i == nr) {
		__hotmem_free_one(part, page, pfn, order);
		return nr;
	}
	for (i = 0; i < nr; i++) {
		if (PageHWPoison(page + i))
			continue;
		__hotmem_free_one(part, page + i, pfn + i, 0);
		freed++;
	}
	return freed;
}

/*
 * Free pages into @part.  Return: true if that made a DRAINING partition
 * FREE; the caller then calls hotmem_part_released().  An OFFLINING
 * partition stays OFFLINING: its offline decides what it becomes.
 */
static bool __hotmem_free_pages(struct hotmem_part *part, struct page *page,
				unsigned long pfn, unsigned int order)
{
	unsigned long flags, freed = 1UL << order;
	bool released = false;

	spin_lock_irqsave(&part->lock, flags);
	if (unlikely(part->nr_poisoned) && order)
		freed = hotmem_free_unpoisoned(part, page, pfn, order);
	else
		__hotmem_free_one(part, page, pfn, order);
	part->nr_free += freed;
	VM_WARN_ON_ONCE(part->nr_free + part->nr_poisoned > part->nr_managed &&
			part->state != HOTMEM_POPULATING);
	if (part->state == HOTMEM_DRAINING && hotmem_part_empty(part)) {
		part->state = HOTMEM_FREE;
		released = true;
	}
	spin_unlock_irqrestore(&part->lock, flags);
	return released;
}

static void hotmem_notify_workfn(struct work_struct *work);
static DECLARE_WORK(hotmem_notify_work, hotmem_notify_workfn);

/*
 * A partition became FREE: wake binders, and tell drivers (from process
 * context) that they may unplug it.  Any context.
 */
static void hotmem_part_released(void)
{
	wake_up_all(&hotmem_bind_wq);
	schedule_work(&hotmem_notify_work);
}

/**
 * hotmem_free_pages - return pages of ZONE_HOTMEM to their partition
 * @page: first page, already through free_pages_prepare()
 * @pfn: its pfn
 * @order: order of the free block
 *
 * Called from the page freeing paths instead of the pcp and zone free lists
 * for every page of ZONE_HOTMEM.  Any context.
 */
void hotmem_free_pages(struct page *page, unsigned long pfn, unsigned int order)
{
	struct hotmem_part *part = hotmem_pfn_to_part(pfn);

	/* Onlining creates the partition before any of its page is freed. */
	if (WARN_ON_ONCE(!part))
		return;

	if (__hotmem_free_pages(part, page, pfn, order))
		hotmem_part_released();

	__count_vm_events(PGFREE, 1 << order);
}

/* ---------------------------------------------------------------------
 * Onlining and offlining of blocks
 */

static struct hotmem_part *hotmem_alloc_part(unsigned long id, int nid);
static void hotmem_part_sysfs_add(struct hotmem_part *part);

/*
 * The pfn range hotmem_add_partitions() is adding, see hotmem_add_begin().
 * Written under hotmem_mutex and the device hotplug lock, read under
 * hotmem_mutex.
 */
static unsigned long hotmem_adding_start_pfn, hotmem_adding_end_pfn;

static bool __hotmem_adding(unsigned long pfn)
{
	lockdep_assert_held(&hotmem_mutex);
	return pfn >= hotmem_adding_start_pfn && pfn < hotmem_adding_end_pfn;
}

static unsigned long hotmem_blocks_per_part(void)
{
	return hotmem_part_bytes / memory_block_size_bytes();
}

/*
 * Caller holds part->lock.  A POPULATING partition whose blocks are all
 * online becomes FREE, unless it is @held.  Return: true if it did.
 */
static bool hotmem_part_complete(struct hotmem_part *part, bool held)
{
	lockdep_assert_held(&part->lock);
	if (held || part->state != HOTMEM_POPULATING ||
	    part->nr_blocks != hotmem_blocks_per_part())
		return false;
	part->state = HOTMEM_FREE;
	return true;
}

/**
 * hotmem_online_begin - prepare a partition for a block about to be onlined
 * @pfn: first pfn of the block
 * @nr_pages: number of pages of the block
 * @nid: node of the block
 *
 * Called by online_pages() under mem_hotplug_lock (write) before the pages
 * of the block are freed, so that the free path finds their partition.
 *
 * Return: 0, or -EPERM if HotMem is off, -EINVAL for a bad geometry, -EBUSY
 * if the partition cannot take a block now, -ENOSPC if the maximum number
 * of partitions exists, -ENOMEM.
 */
int hotmem_online_begin(unsigned long pfn, unsigned long nr_pages, int nid)
{
	unsigned long id, flags;
	struct hotmem_part *part;
	int ret;

	if (!hotmem_on)
		return -EPERM;

	mutex_lock(&hotmem_mutex);
	ret = hotmem_update_geometry();
	if (ret)
		goto out;

	id = pfn >> hotmem_part_shift;
	if (id != (pfn + nr_pages - 1) >> hotmem_part_shift) {
		ret = -EINVAL;
		goto out;
	}

	part = xa_load(&hotmem_parts, id);
	if (!part) {
		part = hotmem_alloc_part(id, nid);
		if (!part) {
			ret = -ENOMEM;
			goto out;
		}
		ret = xa_err(xa_store(&hotmem_parts, id, part, GFP_KERNEL));
		if (ret) {
			kfree(part);
			goto out;
		}
		hotmem_part_sysfs_add(part);
	}

	if (part->nid != nid) {
		ret = -EINVAL;
		goto out;
	}

	spin_lock_irqsave(&part->lock, flags);
	switch (part->state) {
	case HOTMEM_ABSENT:
		if (hotmem_nr_parts >= hotmem_max_parts) {
			ret = -ENOSPC;
			break;
		}
		hotmem_nr_parts++;
		part->state = HOTMEM_POPULATING;
		break;
	case HOTMEM_POPULATING:
		break;
	default:
		/* Complete partitions have no offline block to online. */
		WARN_ON_ONCE(1);
		ret = -EBUSY;
	}
	spin_unlock_irqrestore(&part->lock, flags);

	if (!ret)
		static_branch_enable_cpuslocked(&hotmem_free_key);
out:
	mutex_unlock(&hotmem_mutex);
	return ret;
}

/**
 * hotmem_online_end - account a block whose pages went to its partition
 * @pfn: first pfn of the block
 * @success: false if onlining was cancelled before any page was freed
 *
 * Completes a partition once its last block is online: it becomes FREE and
 * can be bound.  Called under mem_hotplug_lock (write).
 */
void hotmem_online_end(unsigned long pfn, bool success)
{
	struct hotmem_part *part;
	unsigned long flags;

	mutex_lock(&hotmem_mutex);
	part = hotmem_pfn_to_part(pfn);
	if (WARN_ON_ONCE(!part))
		goto out;

	spin_lock_irqsave(&part->lock, flags);
	if (WARN_ON_ONCE(part->state != HOTMEM_POPULATING)) {
		spin_unlock_irqrestore(&part->lock, flags);
		goto out;
	}
	if (success) {
		/*
		 * Nothing allocates from a POPULATING partition, so whatever
		 * onlining freed into it is exactly what it now manages (an
		 * online callback may have kept some pages back).
		 */
		part->nr_managed = part->nr_free + part->nr_poisoned;
		part->nr_blocks++;
	}
	if (!part->nr_blocks) {
		part->state = HOTMEM_ABSENT;
		hotmem_nr_parts--;
	} else {
		hotmem_part_complete(part, __hotmem_adding(part->start_pfn));
	}
	spin_unlock_irqrestore(&part->lock, flags);
	if (part->state == HOTMEM_FREE)
		wake_up_all(&hotmem_bind_wq);
out:
	mutex_unlock(&hotmem_mutex);
}

/**
 * hotmem_add_begin - hold the partitions of a range being added
 * @pfn: first pfn of the range, partition-aligned
 * @nr_pages: its size in pages, whole partitions
 *
 * For hotmem_add_partitions(), which onlines the range block by block and
 * takes all of it back if one block fails: a partition that completes
 * meanwhile must not be bound, or the caller would be told that memory it
 * is using was not added.  Partitions in the range stay POPULATING until
 * hotmem_add_end().  Called under the device hotplug lock, which
 * serializes hotmem_add_partitions() callers.
 */
void hotmem_add_begin(unsigned long pfn, unsigned long nr_pages)
{
	mutex_lock(&hotmem_mutex);
	WARN_ON_ONCE(hotmem_adding_end_pfn);
	hotmem_adding_start_pfn = pfn;
	hotmem_adding_end_pfn = pfn + nr_pages;
	mutex_unlock(&hotmem_mutex);
}

/**
 * hotmem_add_end - publish the partitions held by hotmem_add_begin()
 *
 * Every complete partition of the range becomes FREE, and binders waiting
 * for one are woken.  Partitions taken back meanwhile are ABSENT by now.
 */
void hotmem_add_end(void)
{
	unsigned long pfn, end, flags;
	struct hotmem_part *part;
	bool published = false;

	mutex_lock(&hotmem_mutex);
	pfn = hotmem_adding_start_pfn;
	end = hotmem_adding_end_pfn;
	hotmem_adding_start_pfn = 0;
	hotmem_adding_end_pfn = 0;
	for (; pfn < end; pfn += 1UL << hotmem_part_shift) {
		part = hotmem_pfn_to_part(pfn);
		if (!part)
			continue;
		spin_lock_irqsave(&part->lock, flags);
		published |= hotmem_part_complete(part, false);
		spin_unlock_irqrestore(&part->lock, flags);
	}
	mutex_unlock(&hotmem_mutex);
	if (published)
		wake_up_all(&hotmem_bind_wq);
}

/**
 * hotmem_adding - whether hotmem_add_partitions() is onlining a pfn
 * @pfn: the pfn
 *
 * Return: true if @pfn is in the range held by hotmem_add_begin().
 */
bool hotmem_adding(unsigned long pfn)
{
	bool ret;

	mutex_lock(&hotmem_mutex);
	ret = __hotmem_adding(pfn);
	mutex_unlock(&hotmem_mutex);
	return ret;
}

/*
 * Resource names of memory added by hotmem_add_partitions().  The resource
 * points to its name for as long as the memory stays added, which can be
 * longer than the driver that named it stays loaded (memory that cannot be
 * offlined outlives an rmmod).  Each distinct name is copied once and kept;
 * drivers use one fixed name, so the list stays short.  Protected by
 * hotmem_mutex.
 */
#define HOTMEM_MAX_NAMES	16

struct hotmem_name {
	struct list_head list;
	const char *name;
};

static LIST_HEAD(hotmem_names);
static unsigned int hotmem_nr_names;

/**
 * hotmem_intern_name - a copy of a resource name that is never freed
 * @name: the name
 *
 * Return: the kept copy of @name, or ERR_PTR(-EINVAL) for no name,
 * ERR_PTR(-ENOSPC) past HOTMEM_MAX_NAMES distinct names, ERR_PTR(-ENOMEM).
 */
const char *hotmem_intern_name(const char *name)
{
	struct hotmem_name *n;
	const char *ret;

	if (!name)
		return ERR_PTR(-EINVAL);

	mutex_lock(&hotmem_mutex);
	list_for_each_entry(n, &hotmem_names, list) {
		if (!strcmp(n->name, name)) {
			ret = n->name;
			goto out;
		}
	}
	ret = ERR_PTR(-ENOSPC);
	if (hotmem_nr_names >= HOTMEM_MAX_NAMES)
		goto out;
	ret = ERR_PTR(-ENOMEM);
	n = kmalloc(sizeof(*n), GFP_KERNEL);
	if (!n)
		goto out;
	n->name = kstrdup_const(name, GFP_KERNEL);
	if (!n->name) {
		kfree(n);
		goto out;
	}
	list_add(&n->list, &hotmem_names);
	hotmem_nr_names++;
	ret = n->name;
out:
	mutex_unlock(&hotmem_mutex);
	return ret;
}

/* See hotmem_offline_begin(). */
static int __hotmem_offline_begin(struct hotmem_part *part)
{
	unsigned long flags;
	int ret = 0;

	spin_lock_irqsave(&part->lock, flags);
	switch (part->state) {
	case HOTMEM_FREE:
	case HOTMEM_POPULATING:
		if (WARN_ON_ONCE(!hotmem_part_empty(part))) {
			ret = -EBUSY;
			break;
		}
		part->prev_state = part->state;
		part->state = HOTMEM_OFFLINING;
		break;
	case HOTMEM_DRAINING:
		/* Claimed all the same: nobody may bind it while it drains. */
		part->prev_state = part->state;
		part->state = HOTMEM_OFFLINING;
		ret = -EAGAIN;
		break;
	default:
		ret = -EBUSY;
	}
	spin_unlock_irqrestore(&part->lock, flags);
	return ret;
}

/**
 * hotmem_offline_begin - claim the partition of a block for offlining
 * @pfn: first pfn of the block
 * @nr_pages: number of pages of the block
 *
 * Only partitions without users can be claimed.  A claimed partition is
 * OFFLINING until hotmem_offline_commit() or hotmem_offline_cancel(): it
 * cannot be bound meanwhile.  If all its pages are free the block is then
 * taken out without looking at its pages one by one.  Called by
 * offline_pages() under mem_hotplug_lock (write).
 *
 * Return: 0; -EAGAIN if the partition was claimed but still has used pages
 * (it was DRAINING: the caller must migrate them, see
 * hotmem_offline_used(), before committing, or cancel); -EBUSY if the
 * partition is bound or being offlined by someone else.
 */
int hotmem_offline_begin(unsigned long pfn, unsigned long nr_pages)
{
	struct hotmem_part *part = hotmem_pfn_to_part(pfn);

	if (WARN_ON_ONCE(!part))
		return -EINVAL;
	return __hotmem_offline_begin(part);
}

/**
 * hotmem_offline_used - whether a claimed partition still has used pages
 * @pfn: a pfn of an online block of the partition
 * @start_pfn: set to the first pfn of the partition
 * @end_pfn: set to the pfn after its last one
 *
 * For the offline slow path, between hotmem_offline_begin() returning
 * -EAGAIN and the commit or cancel.  A partition that was DRAINING has all
 * its blocks online, so the whole range can be scanned.
 *
 * Return: true if some page of the partition is still in use.
 */
bool hotmem_offline_used(unsigned long pfn, unsigned long *start_pfn,
			 unsigned long *end_pfn)
{
	struct hotmem_part *part = hotmem_pfn_to_part(pfn);
	unsigned long flags;
	bool used;

	if (WARN_ON_ONCE(!part))
		return false;
	*start_pfn = part->start_pfn;
	*end_pfn = part->start_pfn + (1UL << hotmem_part_shift);
	spin_lock_irqsave(&part->lock, flags);
	VM_WARN_ON_ONCE(part->state != HOTMEM_OFFLINING);
	used = !hotmem_part_empty(part);
	spin_unlock_irqrestore(&part->lock, flags);
	return used;
}

/*
 * See hotmem_offline_cancel().  Return: true if the partition is FREE
 * again; the caller then calls hotmem_part_released(), since binders and
 * drivers may have been waiting for it while it was claimed.
 */
static bool __hotmem_offline_cancel(struct hotmem_part *part)
{
	unsigned long flags;
	bool released = false;

	spin_lock_irqsave(&part->lock, flags);
	if (!WARN_ON_ONCE(part->state != HOTMEM_OFFLINING)) {
		part->state = part->prev_state;
		/* The slow path may have emptied it before failing. */
		if (part->state == HOTMEM_DRAINING && hotmem_part_empty(part))
			part->state = HOTMEM_FREE;
		released = part->state == HOTMEM_FREE;
	}
	spin_unlock_irqrestore(&part->lock, flags);
	return released;
}

/**
 * hotmem_offline_cancel - undo hotmem_offline_begin()
 * @pfn: first pfn of the block
 *
 * The partition returns to the state it was claimed in, or to FREE if it
 * was DRAINING and its last used page went meanwhile.
 */
void hotmem_offline_cancel(unsigned long pfn)
{
	struct hotmem_part *part = hotmem_pfn_to_part(pfn);

	if (WARN_ON_ONCE(!part))
		return;
	if (__hotmem_offline_cancel(part))
		hotmem_part_released();
}

/**
 * hotmem_offline_commit - take the pages of a claimed block off its partition
 * @pfn: first pfn of the block
 * @nr_pages: number of pages of the block
 * @slow: the partition had to be emptied by migration first
 *
 * Every page of the block is free, and merging is eager, so the block is a
 * run of max-order buddies: unlinking them costs one step per 4 MiB, with
 * no isolation, migration or zeroing.  Hardware-poisoned pages, the only
 * other pages a claimed partition may have, are skipped and dropped, as
 * __offline_isolated_pages() skips them.
 *
 * Return: the number of managed pages removed, poisoned ones included.
 */
unsigned long hotmem_offline_commit(unsigned long pfn, unsigned long nr_pages,
				    bool slow)
{
	struct hotmem_part *part = hotmem_pfn_to_part(pfn);
	unsigned long end_pfn = pfn + nr_pages, removed = 0, poisoned = 0;
	unsigned long flags;
	struct page *page;
	unsigned int order;

	spin_lock_irqsave(&part->lock, flags);
	VM_WARN_ON_ONCE(part->state != HOTMEM_OFFLINING ||
			!hotmem_part_empty(part));
	while (pfn < end_pfn) {
		page = pfn_to_page(pfn);
		if (PageBuddy(page)) {
			order = buddy_order(page);
			hotmem_del_free(page);
			removed += 1UL << order;
			pfn += 1UL << order;
		} else {
			WARN_ON_ONCE(!PageHWPoison(page));
			poisoned++;
			pfn++;
		}
	}
	part->nr_free -= removed;
	part->nr_poisoned -= poisoned;
	part->nr_managed -= removed + poisoned;
	part->nr_blocks--;
	if (!part->nr_blocks) {
		part->state = HOTMEM_ABSENT;
		WARN_ON_ONCE(part->nr_managed || part->nr_free ||
			     part->nr_poisoned);
	} else {
		part->state = HOTMEM_POPULATING;
	}
	spin_unlock_irqrestore(&part->lock, flags);

	if (part->state == HOTMEM_ABSENT) {
		mutex_lock(&hotmem_mutex);
		hotmem_nr_parts--;
		mutex_unlock(&hotmem_mutex);
	}
	count_vm_event(slow ? HOTMEM_OFFLINE_SLOW : HOTMEM_OFFLINE_FAST);
	return removed + poisoned;
}

#ifdef CONFIG_MEMORY_FAILURE
/* Caller holds part->lock.  Split @head's buddy around @target, keep it out. */
static void hotmem_take_off_buddy(struct hotmem_part *part, struct page *head,
				  struct page *target, unsigned int order)
{
	lockdep_assert_held(&part->lock);
	hotmem_del_free(head);
	while (order) {
		order--;
		if (target >= head + (1UL << order)) {
			hotmem_add_free(part, head, order);
			head += 1UL << order;
		} else {
			hotmem_add_free(part, head + (1UL << order), order);
		}
	}
}

/**
 * hotmem_take_page_off - take a free, hardware-poisoned page off its partition
 * @page: the page
 *
 * take_page_off_buddy() for ZONE_HOTMEM: free pages are on partition free
 * lists, not on the zone's.  The page is counted as poisoned from now on,
 * so the partition can still become empty, and is never handed out.
 *
 * Return: true if @page was free and has been taken off.
 */
bool hotmem_take_page_off(struct page *page)
{
	unsigned long pfn = page_to_pfn(page), flags;
	struct hotmem_part *part = hotmem_pfn_to_part(pfn);
	struct page *head;
	unsigned int order;
	bool ret = false;

	if (WARN_ON_ONCE(!part))
		return false;

	spin_lock_irqsave(&part->lock, flags);
	for (order = 0; order < NR_PAGE_ORDERS; order++) {
		head = page - (pfn & ((1UL << order) - 1));
		if (PageBuddy(head) && buddy_order(head) >= order) {
			hotmem_take_off_buddy(part, head, page, buddy_order(head));
			part->nr_free--;
			part->nr_poisoned++;
			/* Tells hotmem_page_poisoned() it is counted. */
			SetPageHWPoisonTakenOff(page);
			ret = true;
			break;
		}
		if (page_count(head) > 0)
			break;
	}
	spin_unlock_irqrestore(&part->lock, flags);
	return ret;
}

/**
 * hotmem_page_poisoned - account a page that became hardware-poisoned
 * @pfn: its pfn
 *
 * Called by memory-failure for every page it newly counts as poisoned.  A
 * poisoned page in use is never freed (memory-failure keeps it): without
 * this its partition would stay DRAINING after its instance exits, and
 * every unplug would try to migrate it in vain.  Free pages are counted by
 * hotmem_take_page_off() instead.
 */
void hotmem_page_poisoned(unsigned long pfn)
{
	struct page *page = pfn_to_online_page(pfn);
	struct hotmem_part *part;
	unsigned long flags;
	bool released = false;

	/* Taken off the free lists by hotmem_take_page_off(): counted. */
	if (!page || !is_zone_hotmem_page(page) ||
	    page_private(page) == MAGIC_HWPOISON)
		return;
	part = hotmem_pfn_to_part(pfn);
	if (WARN_ON_ONCE(!part))
		return;

	spin_lock_irqsave(&part->lock, flags);
	part->nr_poisoned++;
	if (part->state == HOTMEM_DRAINING && hotmem_part_empty(part)) {
		part->state = HOTMEM_FREE;
		released = true;
	}
	spin_unlock_irqrestore(&part->lock, flags);
	if (released)
		hotmem_part_released();
}
#endif /* CONFIG_MEMORY_FAILURE */

/* ---------------------------------------------------------------------
 * Binding: an mm takes its private anonymous memory from one partition
 */

static atomic_t hotmem_nr_waiters;

static void hotmem_drain_workfn(struct work_struct *work);
static DECLARE_WORK(hotmem_drain_work, hotmem_drain_workfn);

/* Take a FREE partition for a new binding; NULL if none is free. */
static struct hotmem_part *hotmem_claim_free(void)
{
	struct hotmem_part *part, *found = NULL;
	unsigned long id, flags;

	/* Partitions are freed after a grace period; see hotmem_drop_parts(). */
	rcu_read_lock();
	xa_for_each(&hotmem_parts, id, part) {
		spin_lock_irqsave(&part->lock, flags);
		if (part->state == HOTMEM_FREE) {
			part->state = HOTMEM_BOUND;
			part->users = 1;
			found = part;
		}
		spin_unlock_irqrestore(&part->lock, flags);
		if (found)
			break;
	}
	rcu_read_unlock();
	return found;
}

/*
 * Drop one user; the last one leaves the partition FREE or DRAINING.
 * Return: the state the partition is left in.
 */
static enum hotmem_state __hotmem_part_put(struct hotmem_part *part)
{
	enum hotmem_state state;
	unsigned long flags;

	spin_lock_irqsave(&part->lock, flags);
	if (!WARN_ON_ONCE(part->state != HOTMEM_BOUND || !part->users) &&
	    !--part->users)
		part->state = hotmem_part_empty(part) ? HOTMEM_FREE :
							HOTMEM_DRAINING;
	state = part->state;
	spin_unlock_irqrestore(&part->lock, flags);
	return state;
}

/* See __hotmem_part_put(); wakes whoever waits for what it left. */
static void hotmem_part_put(struct hotmem_part *part)
{
	switch (__hotmem_part_put(part)) {
	case HOTMEM_FREE:
		hotmem_part_released();
		break;
	case HOTMEM_DRAINING:
		/* Pages may still sit in per-CPU LRU batches; flush them. */
		schedule_work(&hotmem_drain_work);
		break;
	default:
		break;
	}
}

static void hotmem_drain_workfn(struct work_struct *work)
{
	lru_add_drain_all();
	/* DRAINING -> FREE happens in the free path; wake binders for it. */
	wake_up_all(&hotmem_bind_wq);
}

static bool hotmem_part_get(struct hotmem_part *part)
{
	unsigned long flags;
	bool ok;

	spin_lock_irqsave(&part->lock, flags);
	ok = part->state == HOTMEM_BOUND && !WARN_ON_ONCE(!part->users);
	if (ok)
		part->users++;
	spin_unlock_irqrestore(&part->lock, flags);
	return ok;
}

/**
 * __hotmem_mm_init - inherit the binding of the current mm
 * @mm: a new mm, created by fork (dup_mm) or exec (bprm_mm_init)
 *
 * A child shares its parent's partition, and so does the image a bound
 * process exec()s: both create their mm while current->mm is the bound one.
 * Only called once a HotMem block was onlined (hotmem_mm_init()).
 */
void __hotmem_mm_init(struct mm_struct *mm)
{
	struct hotmem_part *part = NULL;

	if (current->mm)
		part = READ_ONCE(current->mm->hotmem);
	if (part && !hotmem_part_get(part))
		part = NULL;
	mm->hotmem = part;
}

/**
 * __hotmem_mm_release - drop the binding of an mm that is going away
 * @mm: the mm
 *
 * Called from __mmput() once the address space is torn down, and again
 * from __mmdrop() for mms that never reached __mmput() (exec failures);
 * the second call finds nothing to do.  May run in atomic context.  Only
 * called once a HotMem block was onlined (hotmem_mm_release()).
 */
void __hotmem_mm_release(struct mm_struct *mm)
{
	struct hotmem_part *part = xchg(&mm->hotmem, NULL);

	if (part)
		hotmem_part_put(part);
}

/*
 * msecs_to_jiffies() takes an unsigned int: a longer timeout would be
 * truncated (2^32 + 1 ms to 1 ms).  Anything past what it can express
 * (about 24.8 days already saturate to MAX_JIFFY_OFFSET) waits without end.
 */
static unsigned long hotmem_bind_timeout(unsigned long timeout_ms)
{
	if (timeout_ms > UINT_MAX)
		return MAX_JIFFY_OFFSET;
	return msecs_to_jiffies(timeout_ms);
}

static long hotmem_bind(unsigned long flags, unsigned long timeout_ms)
{
	struct mm_struct *mm = current->mm;
	struct hotmem_part *part;
	long ret;

	if (!capable(CAP_SYS_RESOURCE))
		return -EPERM;
	if (flags & ~PR_HOTMEM_NONBLOCK)
		return -EINVAL;
	if (!mm || READ_ONCE(mm->hotmem))
		return -EBUSY;

	part = hotmem_claim_free();
	if (!part && (flags & PR_HOTMEM_NONBLOCK))
		return -EAGAIN;
	if (!part) {
		count_vm_event(HOTMEM_BIND_WAIT);
		atomic_inc(&hotmem_nr_waiters);
		if (timeout_ms) {
			ret = wait_event_interruptible_timeout(hotmem_bind_wq,
							       (part = hotmem_claim_free()),
							       hotmem_bind_timeout(timeout_ms));
			if (!ret)
				ret = -ETIMEDOUT;
		} else {
			ret = wait_event_interruptible(hotmem_bind_wq,
						       (part = hotmem_claim_free()));
		}
		atomic_dec(&hotmem_nr_waiters);
		if (ret < 0)
			return ret;
	}

	/* Binding is one-way: a racing bind of another thread loses. */
	if (cmpxchg_release(&mm->hotmem, NULL, part)) {
		hotmem_part_put(part);
		return -EBUSY;
	}
	count_vm_event(HOTMEM_BIND);
	return part->id;
}

/**
 * hotmem_prctl - prctl(PR_HOTMEM, ...)
 * @op: PR_HOTMEM_BIND or PR_HOTMEM_GET
 * @arg3: for PR_HOTMEM_BIND, flags (PR_HOTMEM_NONBLOCK)
 * @arg4: for PR_HOTMEM_BIND, timeout in milliseconds, 0 for none
 * @arg5: must be 0
 *
 * With hotmem=off the option does not exist, as for any unknown prctl.
 *
 * Return: the partition id, or a negative errno.
 */
long hotmem_prctl(unsigned long op, unsigned long arg3, unsigned long arg4,
		  unsigned long arg5)
{
	struct hotmem_part *part;

	if (!hotmem_on || arg5)
		return -EINVAL;
	switch (op) {
	case PR_HOTMEM_BIND:
		return hotmem_bind(arg3, arg4);
	case PR_HOTMEM_GET:
		if (arg3 || arg4)
			return -EINVAL;
		part = current->mm ? READ_ONCE(current->mm->hotmem) : NULL;
		return part ? part->id : -ENODATA;
	default:
		return -EINVAL;
	}
}

/* ---------------------------------------------------------------------
 * Allocation for bound mms
 */

/* Caller holds part->lock.  Smallest fit, splitting larger buddies. */
static struct page *__hotmem_rmqueue(struct hotmem_part *part,
				     unsigned int order)
{
	unsigned int cur;
	struct page *page;

	lockdep_assert_held(&part->lock);
	for (cur = order; cur < NR_PAGE_ORDERS; cur++) {
		page = list_first_entry_or_null(&part->free_list[cur],
						struct page, buddy_list);
		if (page)
			break;
	}
	if (!page)
		return NULL;

	hotmem_del_free(page);
	while (cur > order) {
		cur--;
		hotmem_add_free(part, page + (1UL << cur), cur);
	}
	part->nr_free -= 1UL << order;
	return page;
}

/*
 * Take a block of 2^@order pages from @part for @mm.  The partition must
 * still be BOUND and still be @mm's: a caller that loaded mm->hotmem
 * before the mm released it (khugepaged allocates after dropping
 * mmap_lock; the mm may be exiting) would otherwise allocate from a
 * partition that has been bound to another instance since.
 *
 * Return: the first page, NULL if the partition is full, or
 * ERR_PTR(-ENOENT) if @mm is not bound to @part.
 */
static struct page *hotmem_rmqueue_bound(struct hotmem_part *part,
					 struct mm_struct *mm,
					 unsigned int order)
{
	struct page *page = ERR_PTR(-ENOENT);
	unsigned long flags;

	spin_lock_irqsave(&part->lock, flags);
	/* hotmem_mm_release() clears mm->hotmem before it drops the user. */
	if (part->state == HOTMEM_BOUND && READ_ONCE(mm->hotmem) == part)
		page = __hotmem_rmqueue(part, order);
	spin_unlock_irqrestore(&part->lock, flags);
	return page;
}

/*
 * The partition is full: kill a process bound to it, as memcg does for its
 * members, and let the caller retry.  Returns false if the caller should
 * give up (it is being killed itself, or no victim could be found).
 */
static bool hotmem_oom(struct hotmem_part *part, gfp_t gfp)
{
	struct oom_control oc = {
		.gfp_mask = gfp,
		.order = 0,
		.hotmem = part,
	};
	bool ret;

	count_vm_event(HOTMEM_ALLOC_FAIL);
	if (fatal_signal_pending(current))
		return false;
	if (!mutex_trylock(&oom_lock)) {
		/* Someone else is killing; give them time. */
		schedule_timeout_killable(1);
		return !fatal_signal_pending(current);
	}
	ret = out_of_memory(&oc);
	mutex_unlock(&oom_lock);
	if (ret)
		schedule_timeout_killable(1);
	return ret && !fatal_signal_pending(current);
}

/**
 * hotmem_alloc_folio - allocate a private anonymous folio for a bound mm
 * @gfp: GFP flags of the fault path
 * @order: folio order
 * @mm: the bound mm
 *
 * There is no fallback to other memory: when the partition is full,
 * order-0 allocations run the OOM killer among the partition's processes,
 * larger ones fail so that the caller falls back to smaller folios.
 *
 * Return: the folio, NULL on failure, or ERR_PTR(-ENOENT) if @mm is no
 * longer bound and the ordinary allocator should be used.
 */
struct folio *hotmem_alloc_folio(gfp_t gfp, unsigned int order,
				 struct mm_struct *mm)
{
	/* Pairs with cmpxchg_release() in hotmem_bind(). */
	struct hotmem_part *part = smp_load_acquire(&mm->hotmem);
	struct page *page;

	if (!part)
		return ERR_PTR(-ENOENT);
retry:
	page = hotmem_rmqueue_bound(part, mm, order);
	if (IS_ERR(page))
		return ERR_CAST(page);
	if (!page) {
		if (!order && hotmem_oom(part, gfp))
			goto retry;
		return NULL;
	}
	__count_zid_vm_events(PGALLOC, ZONE_HOTMEM, 1 << order);
	count_vm_events(HOTMEM_ALLOC, 1 << order);
	if (order)
		gfp |= __GFP_COMP;
	hotmem_prep_new_page(page, order, gfp);
	return page_rmappable_folio(page);
}

/**
 * __hotmem_swapin_copy - keep what a bound mm swaps in inside its partition
 * @folio: the locked, uptodate-or-not swap cache folio about to be mapped
 * @page: the page of @folio for @addr
 * @vma: the VMA, of a bound mm
 * @addr: the user address
 *
 * Swap-in reads into the swap cache with ordinary pages: readahead does not
 * know who will map them, and after fork a swap entry can be shared with a
 * process outside the partition.  Mapping such a page would let the
 * instance grow past its partition, so map a copy taken from the partition
 * instead, as KSM does for pages it cannot map as they are.  The swap cache
 * keeps its clean page, which reclaim can free.
 *
 * Return: @folio if @page is in the mm's partition (or cannot be read); a
 * new locked folio of the partition holding a copy of @page; NULL if none
 * could be had (the partition is full); ERR_PTR(-EHWPOISON) if @page could
 * not be copied.
 */
struct folio *__hotmem_swapin_copy(struct folio *folio, struct page *page,
				   struct vm_area_struct *vma,
				   unsigned long addr)
{
	struct hotmem_part *part = READ_ONCE(vma->vm_mm->hotmem);
	struct folio *new;

	if (!part || !folio_test_uptodate(folio))
		return folio;
	if (is_zone_hotmem_page(page) &&
	    hotmem_pfn_to_part(page_to_pfn(page)) == part)
		return folio;

	new = vma_alloc_folio(GFP_HIGHUSER_MOVABLE, 0, vma, addr, false);
	if (!new)
		return NULL;
	if (mem_cgroup_charge(new, vma->vm_mm, GFP_KERNEL)) {
		folio_put(new);
		return NULL;
	}
	if (copy_mc_user_highpage(folio_page(new, 0), page, addr, vma)) {
		folio_put(new);
		return ERR_PTR(-EHWPOISON);
	}
	folio_set_dirty(new);
	__folio_mark_uptodate(new);
	__folio_set_locked(new);
	count_vm_event(HOTMEM_SWAPIN_COPY);
	return new;
}

/**
 * hotmem_oom_task_eligible - may the OOM killer pick @task for @part?
 * @task: a candidate
 * @part: the full partition
 *
 * Return: true if @task's mm is bound to @part.
 */
bool hotmem_oom_task_eligible(struct task_struct *task, struct hotmem_part *part)
{
	struct task_struct *p = find_lock_task_mm(task);
	bool ret;

	if (!p)
		return false;
	ret = READ_ONCE(p->mm->hotmem) == part;
	task_unlock(p);
	return ret;
}

/**
 * hotmem_oom_totalpages - size of a partition, for OOM badness scaling
 * @part: the partition
 *
 * Return: the number of pages the partition manages.
 */
unsigned long hotmem_oom_totalpages(struct hotmem_part *part)
{
	return READ_ONCE(part->nr_managed) ?: 1;
}

/* ---------------------------------------------------------------------
 * Interface for drivers that plug and unplug whole partitions
 */

static BLOCKING_NOTIFIER_HEAD(hotmem_notifier);

static void hotmem_notify_workfn(struct work_struct *work)
{
	blocking_notifier_call_chain(&hotmem_notifier,
				     HOTMEM_PARTITIONS_RELEASED, NULL);
}

/**
 * hotmem_register_notifier - be told when partitions are released
 * @nb: notifier block; its callback gets HOTMEM_PARTITIONS_RELEASED and
 *	NULL data
 *
 * The callback runs in process context on the system workqueue, some time
 * after one or more partitions became FREE (their last user went, and all
 * their pages are free again), so that a driver waiting to unplug memory
 * can do so without polling.  It may sleep, but should queue the unplug on
 * its own work item rather than do it inline: other drivers are waiting.
 *
 * Return: 0.
 */
int hotmem_register_notifier(struct notifier_block *nb)
{
	return blocking_notifier_chain_register(&hotmem_notifier, nb);
}
EXPORT_SYMBOL_GPL(hotmem_register_notifier);

/**
 * hotmem_unregister_notifier - undo hotmem_register_notifier()
 * @nb: the notifier block
 *
 * After it returns the callback is not running and will not run again.
 *
 * Return: 0, or -ENOENT if @nb was not registered.
 */
int hotmem_unregister_notifier(struct notifier_block *nb)
{
	return blocking_notifier_chain_unregister(&hotmem_notifier, nb);
}
EXPORT_SYMBOL_GPL(hotmem_unregister_notifier);

/**
 * hotmem_partition_info - look at one partition
 * @start: physical address of the partition, aligned to the partition size
 * @info: filled with a consistent snapshot of the partition
 *
 * Return: 0, -EINVAL for a misaligned @start, or -ENOENT if no block of
 * the partition was ever onlined (an absent partition may also report 0
 * with state HOTMEM_ABSENT).
 */
int hotmem_partition_info(u64 start, struct hotmem_partition_info *info)
{
	struct hotmem_part *part;
	unsigned long flags;
	int ret = -ENOENT;

	if (!IS_ALIGNED(start, hotmem_partition_bytes()))
		return -EINVAL;

	rcu_read_lock();
	part = hotmem_pfn_to_part(PHYS_PFN(start));
	if (part) {
		spin_lock_irqsave(&part->lock, flags);
		info->state = part->state;
		info->users = part->users;
		info->nid = part->nid;
		info->online_blocks = part->nr_blocks;
		info->managed_pages = part->nr_managed;
		info->free_pages = part->nr_free;
		spin_unlock_irqrestore(&part->lock, flags);
		ret = 0;
	}
	rcu_read_unlock();
	return ret;
}
EXPORT_SYMBOL_GPL(hotmem_partition_info);

/**
 * hotmem_remove_partitions - offline and remove whole partitions
 * @start: physical start address, aligned to the partition size
 * @size: size in bytes, a multiple of the partition size
 *
 * Partitions without users go through the fast offline path, or through
 * the slow one if some page is still referenced.  If any partition in the
 * range is bound, or cannot be emptied, nothing is removed: blocks that
 * were already offlined are onlined again.  May sleep; takes the device
 * hotplug lock.
 *
 * Return: 0, -EINVAL for a misaligned range, -EOPNOTSUPP with HotMem off,
 * -EBUSY, or another error from offline_and_remove_memory().
 */
int hotmem_remove_partitions(u64 start, u64 size)
{
	struct hotmem_partition_info info;
	u64 pos;

	if (!hotmem_on)
		return -EOPNOTSUPP;
	if (!size || !IS_ALIGNED(start | size, hotmem_partition_bytes()))
		return -EINVAL;

	/* Cheap refusal; offline_pages() checks again under the locks. */
	for (pos = start; pos < start + size; pos += hotmem_partition_bytes()) {
		if (hotmem_partition_info(pos, &info))
			return -EINVAL;
		if (info.state == HOTMEM_BOUND)
			return -EBUSY;
	}
	return offline_and_remove_memory(start, size);
}
EXPORT_SYMBOL_GPL(hotmem_remove_partitions);

/* ---------------------------------------------------------------------
 * Partition objects and sysfs
 */

#define to_part(k) container_of(k, struct hotmem_part, kobj)

static void hotmem_part_release(struct kobject *kobj)
{
	kfree_rcu(to_part(kobj), rcu);
}

#define HOTMEM_PART_ATTR(_name, _fmt, _expr)				\
static ssize_t _name##_show(struct kobject *kobj,			\
			    struct kobj_attribute *attr, char *buf)	\
{									\
	struct hotmem_part *part = to_part(kobj);			\
	unsigned long flags;						\
	ssize_t len;							\
									\
	spin_lock_irqsave(&part->lock, flags);				\
	len = sysfs_emit(buf, _fmt "\n", _expr);			\
	spin_unlock_irqrestore(&part->lock, flags);			\
	return len;							\
}									\
static struct kobj_attribute part_##_name##_attr = __ATTR_RO(_name)

HOTMEM_PART_ATTR(state, "%s", hotmem_state_names[part->state]);
HOTMEM_PART_ATTR(users, "%u", part->users);
HOTMEM_PART_ATTR(nid, "%d", part->nid);
HOTMEM_PART_ATTR(start_phys, "0x%llx", (u64)PFN_PHYS(part->start_pfn));
HOTMEM_PART_ATTR(online_blocks, "%lu", part->nr_blocks);
HOTMEM_PART_ATTR(managed_pages, "%lu", part->nr_managed);
HOTMEM_PART_ATTR(free_pages, "%lu", part->nr_free);
HOTMEM_PART_ATTR(poisoned_pages, "%lu", part->nr_poisoned);
HOTMEM_PART_ATTR(used_pages, "%lu",
		 part->nr_managed - part->nr_free - part->nr_poisoned);

static struct attribute *hotmem_part_attrs[] = {
	&part_state_attr.attr,
	&part_users_attr.attr,
	&part_nid_attr.attr,
	&part_start_phys_attr.attr,
	&part_online_blocks_attr.attr,
	&part_managed_pages_attr.attr,
	&part_free_pages_attr.attr,
	&part_poisoned_pages_attr.attr,
	&part_used_pages_attr.attr,
	NULL,
};
ATTRIBUTE_GROUPS(hotmem_part);

static const struct kobj_type hotmem_part_ktype = {
	.release	= hotmem_part_release,
	.sysfs_ops	= &kobj_sysfs_ops,
	.default_groups	= hotmem_part_groups,
};

/* Initialise an empty, absent partition (also used by the KUnit tests). */
static void hotmem_init_part(struct hotmem_part *part)
{
	unsigned int order;

	spin_lock_init(&part->lock);
	for (order = 0; order < NR_PAGE_ORDERS; order++)
		INIT_LIST_HEAD(&part->free_list[order]);
	part->state = HOTMEM_ABSENT;
}

static struct hotmem_part *hotmem_alloc_part(unsigned long id, int nid)
{
	struct hotmem_part *part;

	part = kzalloc(sizeof(*part), GFP_KERNEL);
	if (!part)
		return NULL;
	hotmem_init_part(part);
	part->id = id;
	part->nid = nid;
	part->start_pfn = id << hotmem_part_shift;
	kobject_init(&part->kobj, &hotmem_part_ktype);
	return part;
}

/* Sysfs is best effort: failures only warn. */
static void hotmem_part_sysfs_add(struct hotmem_part *part)
{
	lockdep_assert_held(&hotmem_mutex);
	if (!hotmem_parts_kobj)
		return;
	if (kobject_add(&part->kobj, hotmem_parts_kobj, "part%lu", part->id))
		pr_warn("no sysfs directory for partition %lu\n", part->id);
}

/* No partition may have an online block. */
static void hotmem_drop_parts(void)
{
	struct hotmem_part *part;
	unsigned long id;

	lockdep_assert_held(&hotmem_mutex);
	xa_for_each(&hotmem_parts, id, part) {
		WARN_ON_ONCE(part->state != HOTMEM_ABSENT);
		xa_erase(&hotmem_parts, id);
		/* The free path only looks up pfns of online blocks. */
		kobject_put(&part->kobj);
	}
}

static ssize_t enabled_show(struct kobject *kobj, struct kobj_attribute *attr,
			    char *buf)
{
	return sysfs_emit(buf, "%d\n", hotmem_on);
}

static struct kobj_attribute hotmem_enabled_attr = __ATTR_RO(enabled);

static ssize_t partition_size_show(struct kobject *kobj,
				   struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n", READ_ONCE(hotmem_part_bytes));
}

static ssize_t partition_size_store(struct kobject *kobj,
				    struct kobj_attribute *attr,
				    const char *buf, size_t count)
{
	unsigned long long bytes;
	char *end;
	int ret = 0;

	bytes = memparse(buf, &end);
	if (end == buf || (*end && *end != '\n') || !hotmem_size_valid(bytes))
		return -EINVAL;

	mutex_lock(&hotmem_mutex);
	if (hotmem_nr_parts) {
		ret = -EBUSY;
	} else if (bytes != hotmem_part_bytes) {
		hotmem_drop_parts();
		WRITE_ONCE(hotmem_part_bytes, bytes);
		ret = hotmem_update_geometry();
	}
	mutex_unlock(&hotmem_mutex);
	return ret ? ret : count;
}

static struct kobj_attribute hotmem_partition_size_attr =
	__ATTR_RW(partition_size);

static ssize_t max_partitions_show(struct kobject *kobj,
				   struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(hotmem_max_parts));
}

static ssize_t max_partitions_store(struct kobject *kobj,
				    struct kobj_attribute *attr,
				    const char *buf, size_t count)
{
	unsigned int n;
	int ret = 0;

	if (kstrtouint(buf, 0, &n) || !n)
		return -EINVAL;

	mutex_lock(&hotmem_mutex);
	if (hotmem_nr_parts)
		ret = -EBUSY;
	else
		WRITE_ONCE(hotmem_max_parts, n);
	mutex_unlock(&hotmem_mutex);
	return ret ? ret : count;
}

static struct kobj_attribute hotmem_max_partitions_attr =
	__ATTR_RW(max_partitions);

static ssize_t nr_partitions_show(struct kobject *kobj,
				  struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(hotmem_nr_parts));
}

static struct kobj_attribute hotmem_nr_partitions_attr =
	__ATTR_RO(nr_partitions);

static ssize_t waiters_show(struct kobject *kobj, struct kobj_attribute *attr,
			    char *buf)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&hotmem_nr_waiters));
}

static struct kobj_attribute hotmem_waiters_attr = __ATTR_RO(waiters);

static struct attribute *hotmem_attrs[] = {
	&hotmem_enabled_attr.attr,
	&hotmem_waiters_attr.attr,
	&hotmem_partition_size_attr.attr,
	&hotmem_max_partitions_attr.attr,
	&hotmem_nr_partitions_attr.attr,
	NULL,
};

static const struct attribute_group hotmem_attr_group = {
	.attrs = hotmem_attrs,
};

/**
 * hotmem_report_meminfo - HotMem lines of /proc/meminfo
 * @m: the seq_file of /proc/meminfo
 *
 * HotMem pages are part of MemTotal but never of MemFree or MemAvailable:
 * only processes bound to a partition can use them.
 */
void hotmem_report_meminfo(struct seq_file *m)
{
	unsigned long total = 0, free = 0, id;
	struct hotmem_part *part;

	if (!hotmem_on)
		return;
	/*
	 * Summed here, rather than kept in global counters, so that page
	 * faults and frees only write their own partition's cache lines.
	 */
	rcu_read_lock();
	xa_for_each(&hotmem_parts, id, part) {
		total += READ_ONCE(part->nr_managed);
		free += READ_ONCE(part->nr_free);
	}
	rcu_read_unlock();

	seq_printf(m, "HotMemTotal:    %8lu kB\n", total << (PAGE_SHIFT - 10));
	seq_printf(m, "HotMemFree:     %8lu kB\n", free << (PAGE_SHIFT - 10));
}

static int __init hotmem_init(void)
{
	int ret;

	BUILD_BUG_ON(ZONE_HOTMEM <= ZONE_MOVABLE);
	mutex_lock(&hotmem_mutex);
	hotmem_update_geometry();
	mutex_unlock(&hotmem_mutex);
	if (!hotmem_on) {
		/* Vanilla: no sysfs, no meminfo lines, no online_hotmem. */
		pr_info("disabled (boot with hotmem=on)\n");
		return 0;
	}
	pr_info("enabled, partition size %lu MiB, at most %u partitions\n",
		hotmem_part_bytes >> 20, hotmem_max_parts);

	hotmem_kobj = kobject_create_and_add("hotmem", mm_kobj);
	if (!hotmem_kobj)
		return -ENOMEM;
	ret = sysfs_create_group(hotmem_kobj, &hotmem_attr_group);
	if (ret)
		goto err;
	hotmem_parts_kobj = kobject_create_and_add("partitions", hotmem_kobj);
	if (!hotmem_parts_kobj) {
		ret = -ENOMEM;
		goto err;
	}
	return 0;
err:
	kobject_put(hotmem_kobj);
	hotmem_kobj = NULL;
	return ret;
}
subsys_initcall(hotmem_init);

#ifdef CONFIG_HOTMEM_KUNIT_TEST
#include "hotmem_kunit.c"
#endif
