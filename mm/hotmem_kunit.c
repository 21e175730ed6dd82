// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for the HotMem partition allocator and state machine.
 * Included from mm/hotmem.c so that they can reach its static functions.
 *
 * The partitions here are not in the partition table: they are fake
 * partitions built on a max-order block borrowed from the page allocator,
 * which exercises the same buddy code on real struct pages.  The tests use
 * the part-level functions (__hotmem_part_put() and the like), which never
 * wake binders or call the notifier chain of the real partitions.
 */

#include <kunit/test.h>
#include <linux/page-isolation.h>

struct hotmem_test_block {
	struct hotmem_part part;
	struct page *page;
	int migratetype;
};

/*
 * While a test runs, the block's pages look free (PageBuddy) but sit on the
 * fake partition's lists, not on their zone's.  Isolating its pageblocks
 * keeps away the pfn walkers that would take a free page they find:
 * compaction's free scanner skips isolated pageblocks, and
 * alloc_contig_range() refuses to isolate them again.
 */
static void hotmem_test_set_migratetype(struct page *page, int migratetype)
{
	unsigned long pfn;

	for (pfn = 0; pfn < MAX_ORDER_NR_PAGES; pfn += pageblock_nr_pages)
		set_pageblock_migratetype(page + pfn, migratetype);
}

static int hotmem_test_init(struct kunit *test)
{
	struct hotmem_test_block *b;

	b = kunit_kzalloc(test, sizeof(*b), GFP_KERNEL);
	if (!b)
		return -ENOMEM;
	b->page = alloc_pages(GFP_KERNEL, MAX_PAGE_ORDER);
	if (!b->page)
		return -ENOMEM;
	b->migratetype = get_pageblock_migratetype(b->page);
	hotmem_test_set_migratetype(b->page, MIGRATE_ISOLATE);
	hotmem_init_part(&b->part);
	/* Hand the block to the fake partition as one free buddy. */
	set_page_count(b->page, 0);
	hotmem_add_free(&b->part, b->page, MAX_PAGE_ORDER);
	b->part.nr_free = MAX_ORDER_NR_PAGES;
	b->part.nr_managed = MAX_ORDER_NR_PAGES;
	b->part.state = HOTMEM_FREE;
	test->priv = b;
	return 0;
}

static void hotmem_test_exit(struct kunit *test)
{
	struct hotmem_test_block *b = test->priv;

	/* Every test leaves the block merged and free again. */
	hotmem_del_free(b->page);
	set_page_count(b->page, 1);
	hotmem_test_set_migratetype(b->page, b->migratetype);
	__free_pages(b->page, MAX_PAGE_ORDER);
}

static unsigned int hotmem_test_list_len(struct hotmem_part *part,
					 unsigned int order)
{
	struct list_head *pos;
	unsigned int n = 0;

	list_for_each(pos, &part->free_list[order])
		n++;
	return n;
}

static void hotmem_test_assert_merged(struct kunit *test,
				      struct hotmem_test_block *b)
{
	unsigned int order;

	for (order = 0; order < MAX_PAGE_ORDER; order++)
		KUNIT_EXPECT_EQ(test, hotmem_test_list_len(&b->part, order), 0);
	KUNIT_EXPECT_EQ(test, hotmem_test_list_len(&b->part, MAX_PAGE_ORDER), 1);
	KUNIT_EXPECT_TRUE(test, PageBuddy(b->page));
	KUNIT_EXPECT_EQ(test, buddy_order(b->page), MAX_PAGE_ORDER);
	KUNIT_EXPECT_EQ(test, b->part.nr_free, b->part.nr_managed);
}

static void hotmem_test_free(struct hotmem_test_block *b, struct page *page,
			     unsigned int order)
{
	spin_lock_irq(&b->part.lock);
	__hotmem_free_one(&b->part, page, page_to_pfn(page), order);
	b->part.nr_free += 1UL << order;
	spin_unlock_irq(&b->part.lock);
}

static struct page *hotmem_test_rmqueue(struct hotmem_part *part,
					unsigned int order)
{
	struct page *page;

	spin_lock_irq(&part->lock);
	page = __hotmem_rmqueue(part, order);
	spin_unlock_irq(&part->lock);
	return page;
}

/* An order-0 allocation splits the block once per order; freeing merges it. */
static void hotmem_test_split_merge(struct kunit *test)
{
	struct hotmem_test_block *b = test->priv;
	struct page *page;
	unsigned int order;

	page = hotmem_test_rmqueue(&b->part, 0);
	KUNIT_ASSERT_NOT_NULL(test, page);
	KUNIT_EXPECT_PTR_EQ(test, page, b->page);
	KUNIT_EXPECT_FALSE(test, PageBuddy(page));
	KUNIT_EXPECT_EQ(test, b->part.nr_free, MAX_ORDER_NR_PAGES - 1);
	for (order = 0; order < MAX_PAGE_ORDER; order++)
		KUNIT_EXPECT_EQ(test, hotmem_test_list_len(&b->part, order), 1);
	KUNIT_EXPECT_EQ(test, hotmem_test_list_len(&b->part, MAX_PAGE_ORDER), 0);

	hotmem_test_free(b, page, 0);
	hotmem_test_assert_merged(test, b);
}

/* The block holds exactly two order-(max-1) folios, then nothing. */
static void hotmem_test_exhaust(struct kunit *test)
{
	struct hotmem_test_block *b = test->priv;
	const unsigned int order = MAX_PAGE_ORDER - 1;
	struct page *first, *second;

	first = hotmem_test_rmqueue(&b->part, order);
	second = hotmem_test_rmqueue(&b->part, order);
	KUNIT_ASSERT_NOT_NULL(test, first);
	KUNIT_ASSERT_NOT_NULL(test, second);
	KUNIT_EXPECT_NULL(test, hotmem_test_rmqueue(&b->part, 0));
	KUNIT_EXPECT_EQ(test, b->part.nr_free, 0);

	/* Free in the other order: merging must not depend on it. */
	hotmem_test_free(b, second, order);
	KUNIT_EXPECT_EQ(test, hotmem_test_list_len(&b->part, order), 1);
	hotmem_test_free(b, first, order);
	hotmem_test_assert_merged(test, b);
}

/* Many small allocations in a scattered free order still merge back. */
static void hotmem_test_scattered_free(struct kunit *test)
{
	struct hotmem_test_block *b = test->priv;
	struct page *pages[64];
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(pages); i++) {
		pages[i] = hotmem_test_rmqueue(&b->part, i % 3);
		KUNIT_ASSERT_NOT_NULL(test, pages[i]);
	}
	for (i = 0; i < ARRAY_SIZE(pages); i += 2)
		hotmem_test_free(b, pages[i], i % 3);
	for (i = 1; i < ARRAY_SIZE(pages); i += 2)
		hotmem_test_free(b, pages[i], i % 3);
	hotmem_test_assert_merged(test, b);
}

/* Users come and go; the last one leaves FREE or DRAINING. */
static void hotmem_test_users(struct kunit *test)
{
	struct hotmem_test_block *b = test->priv;
	struct hotmem_part *part = &b->part;
	struct page *page;

	part->state = HOTMEM_BOUND;
	part->users = 1;
	KUNIT_EXPECT_TRUE(test, hotmem_part_get(part));
	KUNIT_EXPECT_EQ(test, part->users, 2);
	KUNIT_EXPECT_EQ(test, __hotmem_part_put(part), HOTMEM_BOUND);
	KUNIT_EXPECT_EQ(test, __hotmem_part_put(part), HOTMEM_FREE);
	KUNIT_EXPECT_EQ(test, part->users, 0);
	/* A free partition cannot gain users by inheritance. */
	KUNIT_EXPECT_FALSE(test, hotmem_part_get(part));

	/* Released with a page still in use: draining until it comes back. */
	part->state = HOTMEM_BOUND;
	part->users = 1;
	page = hotmem_test_rmqueue(part, 0);
	KUNIT_ASSERT_NOT_NULL(test, page);
	KUNIT_EXPECT_EQ(test, __hotmem_part_put(part), HOTMEM_DRAINING);
	hotmem_test_free(b, page, 0);
	part->state = HOTMEM_FREE;
	hotmem_test_assert_merged(test, b);
}

/*
 * An offline claims a DRAINING partition for the whole slow path: when its
 * last page goes during the migration, it must not become FREE (and so
 * claimable by a binder whose pages the migration would then move out).
 */
static void hotmem_test_offline_claims_draining(struct kunit *test)
{
	struct hotmem_test_block *b = test->priv;
	struct hotmem_part *part = &b->part;
	struct page *page;

	page = hotmem_test_rmqueue(part, 0);
	KUNIT_ASSERT_NOT_NULL(test, page);
	part->state = HOTMEM_DRAINING;

	KUNIT_EXPECT_EQ(test, __hotmem_offline_begin(part), -EAGAIN);
	KUNIT_EXPECT_EQ(test, part->state, HOTMEM_OFFLINING);
	KUNIT_EXPECT_EQ(test, __hotmem_offline_begin(part), -EBUSY);

	KUNIT_EXPECT_FALSE(test, __hotmem_free_pages(part, page,
						     page_to_pfn(page), 0));
	KUNIT_EXPECT_EQ(test, part->state, HOTMEM_OFFLINING);

	/* Cancelled now that it is empty: FREE, and binders must be woken. */
	KUNIT_EXPECT_TRUE(test, __hotmem_offline_cancel(part));
	KUNIT_EXPECT_EQ(test, part->state, HOTMEM_FREE);
	hotmem_test_assert_merged(test, b);
}

/* Cancelling the offline of a FREE partition wakes binders; BOUND is refused. */
static void hotmem_test_offline_cancel(struct kunit *test)
{
	struct hotmem_test_block *b = test->priv;
	struct hotmem_part *part = &b->part;
	struct page *page;

	KUNIT_EXPECT_EQ(test, __hotmem_offline_begin(part), 0);
	KUNIT_EXPECT_EQ(test, part->state, HOTMEM_OFFLINING);
	KUNIT_EXPECT_TRUE(test, __hotmem_offline_cancel(part));
	KUNIT_EXPECT_EQ(test, part->state, HOTMEM_FREE);

	part->state = HOTMEM_BOUND;
	KUNIT_EXPECT_EQ(test, __hotmem_offline_begin(part), -EBUSY);
	KUNIT_EXPECT_EQ(test, part->state, HOTMEM_BOUND);

	/* Still in use when the slow path gives up: back to DRAINING. */
	page = hotmem_test_rmqueue(part, 0);
	KUNIT_ASSERT_NOT_NULL(test, page);
	part->state = HOTMEM_DRAINING;
	KUNIT_EXPECT_EQ(test, __hotmem_offline_begin(part), -EAGAIN);
	KUNIT_EXPECT_FALSE(test, __hotmem_offline_cancel(part));
	KUNIT_EXPECT_EQ(test, part->state, HOTMEM_DRAINING);
	KUNIT_EXPECT_TRUE(test, __hotmem_free_pages(part, page,
						    page_to_pfn(page), 0));
	KUNIT_EXPECT_EQ(test, part->state, HOTMEM_FREE);
	hotmem_test_assert_merged(test, b);
}

/*
 * An allocation for an mm that no longer owns the partition fails even if
 * the partition is BOUND (to another instance by now).
 */
static void hotmem_test_alloc_checks_owner(struct kunit *test)
{
	struct hotmem_test_block *b = test->priv;
	struct hotmem_part *part = &b->part;
	struct mm_struct *mm;
	struct page *page;

	mm = kunit_kzalloc(test, sizeof(*mm), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, mm);
	part->state = HOTMEM_BOUND;
	part->users = 1;
	mm->hotmem = part;

	page = hotmem_rmqueue_bound(part, mm, 0);
	KUNIT_ASSERT_FALSE(test, IS_ERR_OR_NULL(page));
	hotmem_test_free(b, page, 0);

	mm->hotmem = NULL;
	KUNIT_EXPECT_PTR_EQ(test, hotmem_rmqueue_bound(part, mm, 0),
			    ERR_PTR(-ENOENT));
	KUNIT_EXPECT_EQ(test, part->nr_free, part->nr_managed);

	part->users = 0;
	part->state = HOTMEM_FREE;
	hotmem_test_assert_merged(test, b);
}

/* Bind timeouts past 32 bits of milliseconds are not truncated. */
static void hotmem_test_bind_timeout(struct kunit *test)
{
	KUNIT_EXPECT_EQ(test, hotmem_bind_timeout(1000), msecs_to_jiffies(1000));
	KUNIT_EXPECT_EQ(test, hotmem_bind_timeout(1UL << 32),
			MAX_JIFFY_OFFSET);
	KUNIT_EXPECT_EQ(test, hotmem_bind_timeout((1UL << 32) + 1),
			MAX_JIFFY_OFFSET);
	KUNIT_EXPECT_EQ(test, hotmem_bind_timeout(ULONG_MAX), MAX_JIFFY_OFFSET);
}

#ifdef CONFIG_MEMORY_FAILURE
/* A poisoned free page is split out of its buddy and kept off the lists. */
static void hotmem_test_take_off(struct kunit *test)
{
	struct hotmem_test_block *b = test->priv;
	struct hotmem_part *part = &b->part;
	struct page *target = b->page + 37;
	unsigned long pages = 0;
	unsigned int order;

	spin_lock_irq(&part->lock);
	hotmem_take_off_buddy(part, b->page, target, MAX_PAGE_ORDER);
	part->nr_free--;
	spin_unlock_irq(&part->lock);
	KUNIT_EXPECT_FALSE(test, PageBuddy(target));
	for (order = 0; order < NR_PAGE_ORDERS; order++)
		pages += hotmem_test_list_len(part, order) << order;
	KUNIT_EXPECT_EQ(test, pages, MAX_ORDER_NR_PAGES - 1);
	KUNIT_EXPECT_EQ(test, hotmem_test_list_len(part, MAX_PAGE_ORDER), 0);
	for (order = 0; order < MAX_PAGE_ORDER; order++)
		KUNIT_EXPECT_EQ(test, hotmem_test_list_len(part, order), 1);

	hotmem_test_free(b, target, 0);
	hotmem_test_assert_merged(test, b);
}
#endif

/*
 * A partition completed while hotmem_add_partitions() holds its range stays
 * POPULATING (not bindable) until the whole range is online, then is FREE.
 */
static void hotmem_test_add_hold(struct kunit *test)
{
	struct hotmem_test_block *b = test->priv;
	struct hotmem_part *part = &b->part;
	unsigned long pfn = ULONG_MAX >> 1;
	enum hotmem_state state[2];
	bool done[3];

	pfn &= ~((1UL << hotmem_part_shift) - 1);
	hotmem_add_begin(pfn, 1UL << hotmem_part_shift);
	KUNIT_EXPECT_TRUE(test, hotmem_adding(pfn));
	KUNIT_EXPECT_FALSE(test, hotmem_adding(pfn - 1));
	hotmem_add_end();
	KUNIT_EXPECT_FALSE(test, hotmem_adding(pfn));

	part->state = HOTMEM_POPULATING;
	part->nr_blocks = hotmem_blocks_per_part();
	spin_lock_irq(&part->lock);
	done[0] = hotmem_part_complete(part, true);
	state[0] = part->state;
	done[1] = hotmem_part_complete(part, false);
	state[1] = part->state;
	/* Only a POPULATING partition completes. */
	done[2] = hotmem_part_complete(part, false);
	spin_unlock_irq(&part->lock);
	KUNIT_EXPECT_FALSE(test, done[0]);
	KUNIT_EXPECT_EQ(test, state[0], HOTMEM_POPULATING);
	KUNIT_EXPECT_TRUE(test, done[1]);
	KUNIT_EXPECT_EQ(test, state[1], HOTMEM_FREE);
	KUNIT_EXPECT_FALSE(test, done[2]);
	part->nr_blocks = 0;
	hotmem_test_assert_merged(test, b);
}

static void hotmem_test_geometry(struct kunit *test)
{
	unsigned long block = memory_block_size_bytes();

	KUNIT_EXPECT_TRUE(test, hotmem_size_valid(block));
	KUNIT_EXPECT_TRUE(test, hotmem_size_valid(4 * block));
	KUNIT_EXPECT_FALSE(test, hotmem_size_valid(block / 2));
	KUNIT_EXPECT_FALSE(test, hotmem_size_valid(3 * block));
	KUNIT_EXPECT_FALSE(test, hotmem_size_valid(0));
}

static struct kunit_case hotmem_test_cases[] = {
	KUNIT_CASE(hotmem_test_split_merge),
	KUNIT_CASE(hotmem_test_exhaust),
	KUNIT_CASE(hotmem_test_scattered_free),
	KUNIT_CASE(hotmem_test_users),
	KUNIT_CASE(hotmem_test_offline_claims_draining),
	KUNIT_CASE(hotmem_test_offline_cancel),
	KUNIT_CASE(hotmem_test_alloc_checks_owner),
	KUNIT_CASE(hotmem_test_bind_timeout),
#ifdef CONFIG_MEMORY_FAILURE
	KUNIT_CASE(hotmem_test_take_off),
#endif
	KUNIT_CASE(hotmem_test_add_hold),
	KUNIT_CASE(hotmem_test_geometry),
	{}
};

static struct kunit_suite hotmem_test_suite = {
	.name = "hotmem",
	.init = hotmem_test_init,
	.exit = hotmem_test_exit,
	.test_cases = hotmem_test_cases,
};

kunit_test_suite(hotmem_test_suite);
