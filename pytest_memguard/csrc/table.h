/* The pointer -> size table for blocks the page map does not take. Included once, by allochook.c,
   which says why the extension is one translation unit. */

/* ---------------------------------------------------------------- table */

/* Fibonacci hashing. (Keeping neighbouring blocks in neighbouring slots was tried for cache
   locality: with linear probing the runs of sequential keys clustered and it cost 2x more.) */
static inline size_t slot_of(const table_t *t, uintptr_t key)
{
    return (size_t)(((uint64_t)(key >> 3) * 0x9E3779B97F4A7C15ULL) >> t->shift);
}

static int table_init(table_t *t, unsigned bits)
{
    size_t n = (size_t)1 << bits;
    entry_t *slots = (entry_t *)calloc(n, sizeof(entry_t));
    if (slots == NULL) {
        return -1;
    }
    own_add(n * sizeof(entry_t));
    t->slots = slots;
    t->mask = n - 1;
    t->used = 0;
    t->shift = 64 - bits;
    return 0;
}

static void table_put(table_t *t, uintptr_t key, uint32_t size, int32_t sample);

static int table_grow(table_t *t)
{
    table_t bigger;
    unsigned bits = 64 - t->shift + 1;
    if (table_init(&bigger, bits) < 0) {
        return -1;
    }
    for (size_t i = 0; i <= t->mask; i++) {
        if (t->slots[i].key) {
            table_put(&bigger, t->slots[i].key, t->slots[i].size, t->slots[i].sample);
        }
    }
    free(t->slots);
    own_sub((t->mask + 1) * sizeof(entry_t));
    *t = bigger;
    return 0;
}

static void table_put(table_t *t, uintptr_t key, uint32_t size, int32_t sample)
{
    size_t i = slot_of(t, key);
    while (t->slots[i].key != 0 && t->slots[i].key != key) {
        i = (i + 1) & t->mask;
    }
    if (t->slots[i].key == 0) {
        t->used++;
    }
    t->slots[i].key = key;
    t->slots[i].size = size;
    t->slots[i].sample = sample;
}

/* Insert, growing at 3/4 load. Returns 0, or -1 when memory for the table ran out. */
static int table_insert(table_t *t, uintptr_t key, size_t size, int32_t sample)
{
    if (t->slots == NULL && table_init(t, 8) < 0) {
        return -1;
    }
    if ((t->used + 1) * 4 > (t->mask + 1) * 3 && table_grow(t) < 0) {
        return -1;
    }
    if (size >= HUGE_SIZE) {
        if (n_huge >= MAX_HUGE) {
            return -1;
        }
        huge[n_huge].key = key;
        huge[n_huge].size = size;
        n_huge++;
        table_put(t, key, HUGE_SIZE, sample);
        return 0;
    }
    table_put(t, key, (uint32_t)size, sample);
    return 0;
}

static size_t entry_size(const entry_t *e)
{
    if (e->size != HUGE_SIZE) {
        return e->size;
    }
    for (int i = 0; i < n_huge; i++) {
        if (huge[i].key == e->key) {
            return huge[i].size;
        }
    }
    return 0;
}

static void forget_huge(uintptr_t key)
{
    for (int i = 0; i < n_huge; i++) {
        if (huge[i].key == key) {
            huge[i] = huge[--n_huge];
            return;
        }
    }
}

static entry_t *table_find(table_t *t, uintptr_t key)
{
    if (t->slots == NULL) {
        return NULL;
    }
    size_t i = slot_of(t, key);
    while (t->slots[i].key != 0) {
        if (t->slots[i].key == key) {
            return &t->slots[i];
        }
        i = (i + 1) & t->mask;
    }
    return NULL;
}

/* Remove with backward-shift deletion, so the table never fills with tombstones. */
static int table_remove(table_t *t, uintptr_t key, size_t *size, int32_t *sample)
{
    entry_t *e = table_find(t, key);
    if (e == NULL) {
        return 0;
    }
    *size = entry_size(e);
    *sample = e->sample;
    if (e->size == HUGE_SIZE) {
        forget_huge(key);
    }
    size_t i = (size_t)(e - t->slots);
    size_t j = i;
    for (;;) {
        j = (j + 1) & t->mask;
        if (t->slots[j].key == 0) {
            break;
        }
        size_t k = slot_of(t, t->slots[j].key);
        /* Move slot j into the hole at i unless its home k lies cyclically in (i, j]. */
        int stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].key = 0;
    t->used--;
    return 1;
}

static void table_clear(table_t *t)
{
    if (t->slots != NULL && t->used == 0 && t->mask + 1 <= ((size_t)1 << 14)) {
        return; /* already empty: nothing to wipe */
    }
    if (t->slots != NULL) {
        if (t->mask + 1 > ((size_t)1 << 14)) {
            /* Shrink after a big test: the memory goes back, the next clear is cheap again. */
            free(t->slots);
            own_sub((t->mask + 1) * sizeof(entry_t));
            t->slots = NULL;
        }
        else {
            memset(t->slots, 0, (t->mask + 1) * sizeof(entry_t));
        }
    }
    t->used = 0;
}
