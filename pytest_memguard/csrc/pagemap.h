/* Small blocks recorded by the page they live in. Included once, by allochook.c, which says why
   the extension is one translation unit. */

/* ---------------------------------------------------------------- small blocks by page

   Most blocks are small and born next to each other (pymalloc carves a pool into equal blocks
   and hands them out in address order), while a pointer-keyed hash scatters neighbours over
   the whole table: with a few hundred thousand live blocks every insert and every free was a
   cache miss, and tracking cost 2.5x. Here a block of up to 64 KiB with a 16-byte aligned
   address is recorded in the record of its 4 KiB page, one 16-bit size per 16-byte granule:
   neighbours share a record, the last record used is remembered, and the page index stays
   small enough for the CPU caches. Everything else (large, unaligned or sampled blocks) stays
   in the pointer table above. Only the MEM and OBJ domains (GIL held) use it. */

#define PAGE_SHIFT 12
#define GRANULE_SHIFT 4
#define GRANULES (1u << (PAGE_SHIFT - GRANULE_SHIFT))
#define SMALL_MAX 0xFFFFu

typedef struct {
    uint16_t size[GRANULES];
} page_t;

typedef struct {
    uintptr_t key;  /* page number */
    uint32_t rec;   /* index into recs */
    uint32_t epoch; /* the slot is in use only when this is the map's epoch */
} page_slot_t;

typedef struct {
    page_slot_t *slots;
    size_t mask;
    size_t used;
    unsigned shift;
    page_t *recs;
    size_t n_recs, cap_recs;
    uintptr_t last_key;
    size_t last_rec;
    /* Emptying the index is a new epoch, not a wipe: a window starts with one increment
       instead of a memset of the whole index (which was most of the cost of opening a window
       in a pytest run). Never 0, the epoch of a freshly zeroed slot. */
    uint32_t epoch;
} pagemap_t;

static pagemap_t pagemaps[N_DOMAINS];

static inline size_t page_slot_of(const pagemap_t *m, uintptr_t key)
{
    return (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ULL) >> m->shift);
}

static int pagemap_index_init(pagemap_t *m, unsigned bits)
{
    size_t n = (size_t)1 << bits;
    page_slot_t *slots = (page_slot_t *)calloc(n, sizeof(page_slot_t));
    if (slots == NULL) {
        return -1;
    }
    own_add(n * sizeof(page_slot_t));
    m->slots = slots;
    m->mask = n - 1;
    m->used = 0;
    m->shift = 64 - bits;
    if (m->epoch == 0) {
        m->epoch = 1;
    }
    return 0;
}

static void pagemap_index_put(pagemap_t *m, uintptr_t key, size_t rec)
{
    size_t i = page_slot_of(m, key);
    while (m->slots[i].epoch == m->epoch) {
        i = (i + 1) & m->mask;
    }
    m->slots[i].key = key;
    m->slots[i].rec = (uint32_t)rec;
    m->slots[i].epoch = m->epoch;
    m->used++;
}

/* The record of page ``key``, or NULL if it has none. */
HOT page_t *pagemap_find(pagemap_t *m, uintptr_t key)
{
    if (key == m->last_key && m->recs != NULL) {
        return &m->recs[m->last_rec];
    }
    if (m->slots != NULL) {
        size_t i = page_slot_of(m, key);
        while (m->slots[i].epoch == m->epoch) {
            if (m->slots[i].key == key) {
                m->last_key = key;
                m->last_rec = m->slots[i].rec;
                return &m->recs[m->last_rec];
            }
            i = (i + 1) & m->mask;
        }
    }
    return NULL;
}

/* A new zeroed record for page ``key`` (which has none); NULL when out of memory. */
COLD page_t *pagemap_new(pagemap_t *m, uintptr_t key)
{
    if (m->slots == NULL && pagemap_index_init(m, 8) < 0) {
        return NULL;
    }
    if ((m->used + 1) * 2 > m->mask + 1) { /* grow the index at half load */
        pagemap_t bigger = *m;
        if (pagemap_index_init(&bigger, 64 - m->shift + 1) < 0) {
            return NULL;
        }
        for (size_t i = 0; i <= m->mask; i++) {
            if (m->slots[i].epoch == m->epoch) {
                pagemap_index_put(&bigger, m->slots[i].key, m->slots[i].rec);
            }
        }
        free(m->slots);
        own_sub((m->mask + 1) * sizeof(page_slot_t));
        m->slots = bigger.slots;
        m->mask = bigger.mask;
        m->used = bigger.used;
        m->shift = bigger.shift;
    }
    if (m->n_recs == m->cap_recs) {
        if (m->cap_recs >= UINT32_MAX / 2) {
            return NULL; /* 8 TiB of tracked pages: not a real process */
        }
        size_t cap = m->cap_recs ? m->cap_recs * 2 : 64;
        page_t *grown = (page_t *)realloc(m->recs, cap * sizeof(page_t));
        if (grown == NULL) {
            return NULL;
        }
        own_add((cap - m->cap_recs) * sizeof(page_t));
        m->recs = grown;
        m->cap_recs = cap;
    }
    size_t rec = m->n_recs++;
    memset(&m->recs[rec], 0, sizeof(page_t));
    pagemap_index_put(m, key, rec);
    m->last_key = key;
    m->last_rec = rec;
    return &m->recs[rec];
}

/* 1: recorded here; 0: not a block for the page map; -1: out of memory. */
HOT int pagemap_insert(pagemap_t *m, uintptr_t ptr, size_t size)
{
    if (size == 0 || size > SMALL_MAX || (ptr & ((1u << GRANULE_SHIFT) - 1))) {
        return 0;
    }
    page_t *page = pagemap_find(m, ptr >> PAGE_SHIFT);
    if (page == NULL && (page = pagemap_new(m, ptr >> PAGE_SHIFT)) == NULL) {
        return -1;
    }
    page->size[(ptr >> GRANULE_SHIFT) & (GRANULES - 1)] = (uint16_t)size;
    return 1;
}

/* The size of a tracked block at ``ptr`` (and forget it), or 0 if the page map has none. */
HOT size_t pagemap_remove(pagemap_t *m, uintptr_t ptr, int forget)
{
    if (ptr & ((1u << GRANULE_SHIFT) - 1)) {
        return 0;
    }
    page_t *page = pagemap_find(m, ptr >> PAGE_SHIFT);
    if (page == NULL) {
        return 0;
    }
    uint16_t *slot = &page->size[(ptr >> GRANULE_SHIFT) & (GRANULES - 1)];
    size_t size = *slot;
    if (forget) {
        *slot = 0;
    }
    return size;
}

/* Empty, keeping small allocations for the next window and giving back big ones. */
static void pagemap_clear(pagemap_t *m, int release_big)
{
    int big = m->cap_recs > 256;
    if (release_big && !big) {
        return;
    }
    if (big || m->slots == NULL) {
        free(m->recs);
        own_sub(m->cap_recs * sizeof(page_t));
        m->recs = NULL;
        m->cap_recs = 0;
        free(m->slots);
        if (m->slots != NULL) {
            own_sub((m->mask + 1) * sizeof(page_slot_t));
        }
        m->slots = NULL;
        m->mask = 0;
        m->shift = 64;
    }
    else if (++m->epoch == 0) { /* wrapped after 4 billion windows: wipe once */
        memset(m->slots, 0, (m->mask + 1) * sizeof(page_slot_t));
        m->epoch = 1;
    }
    m->used = 0;
    m->n_recs = 0;
    m->last_key = 0;
}
