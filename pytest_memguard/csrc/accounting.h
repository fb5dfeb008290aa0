/* What each allocator call does to the counters, tables and peak. Included once, by allochook.c,
   which says why the extension is one translation unit. */

/* ---------------------------------------------------------------- accounting */

HOT void bump_peak(void)
{
    size_t total = LOAD(live_gil) + LOAD(live_raw);
    size_t cur = LOAD(peak);
    while (total > cur &&
           !__atomic_compare_exchange_n(&peak, &cur, total, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

COLD void note_alloc_raw(void *ptr, size_t size)
{
    int32_t sample = -1;
    if (sample_interval && PyGILState_Check()) {
        sample = maybe_sample(D_RAW, size);
    }
    PyThread_acquire_lock(raw_lock, WAIT_LOCK);
    if (table_insert(&tables[D_RAW], (uintptr_t)ptr, size, sample) == 0) {
        STORE(live_raw, LOAD(live_raw) + size);
        STORE(blocks_raw, LOAD(blocks_raw) + 1);
    }
    else {
        table_failed = 1;
    }
    PyThread_release_lock(raw_lock);
    bump_peak();
}

/* A block the page map does not take (large, unaligned or sampled): 1, or -1 if out of memory. */
COLD int table_place(int domain, void *ptr, size_t size, int32_t sample)
{
    return table_insert(&tables[domain], (uintptr_t)ptr, size, sample) == 0 ? 1 : -1;
}

HOT void note_alloc(int domain, void *ptr, size_t size)
{
    if (domain == D_RAW) {
        note_alloc_raw(ptr, size);
        return;
    }
    int32_t sample = maybe_sample(domain, size);
    /* Sampled blocks keep their sample index, which only the pointer table stores. */
    int placed = sample < 0 ? pagemap_insert(&pagemaps[domain], (uintptr_t)ptr, size) : 0;
    if (placed == 0) {
        placed = table_place(domain, ptr, size, sample);
    }
    if (placed > 0) {
        STORE(live_gil, LOAD(live_gil) + size);
        blocks_gil++;
    }
    else {
        table_failed = 1;
    }
    bump_peak();
}

COLD int note_free_raw(void *ptr)
{
    size_t size;
    int32_t sample;
    PyThread_acquire_lock(raw_lock, WAIT_LOCK);
    int found = table_remove(&tables[D_RAW], (uintptr_t)ptr, &size, &sample);
    if (found) {
        STORE(live_raw, LOAD(live_raw) - size);
        STORE(blocks_raw, LOAD(blocks_raw) - 1);
        if (sample >= 0 && (size_t)sample < n_samples) {
            samples[sample].alive = 0;
        }
    }
    PyThread_release_lock(raw_lock);
    return found;
}

/* A GIL-domain block that is not in its domain's page map. */
COLD int note_free_elsewhere(int domain, void *ptr)
{
    size_t size;
    int32_t sample = -1;
    int found = table_remove(&tables[domain], (uintptr_t)ptr, &size, &sample);
    if (!found) {
        /* MEM and OBJ are both pymalloc, so C code that frees through one what it
           allocated through the other works, and extensions do it: look there too, or the
           block would stay "alive" here forever and look like a leak (tracemalloc keeps
           one table for all domains for the same reason). */
        int other = domain == D_MEM ? D_OBJ : D_MEM;
        size = pagemap_remove(&pagemaps[other], (uintptr_t)ptr, 1);
        found = size != 0 || table_remove(&tables[other], (uintptr_t)ptr, &size, &sample);
    }
    if (found) {
        STORE(live_gil, LOAD(live_gil) - size);
        blocks_gil--;
        if (sample >= 0 && (size_t)sample < n_samples) {
            samples[sample].alive = 0;
        }
    }
    return found;
}

/* Forget a freed block; 0 where it was never traced (allocated before tracing began). */
HOT int note_free(int domain, void *ptr)
{
    if (domain == D_RAW) {
        return note_free_raw(ptr);
    }
    size_t size = pagemap_remove(&pagemaps[domain], (uintptr_t)ptr, 1);
    if (size == 0) {
        return note_free_elsewhere(domain, ptr);
    }
    STORE(live_gil, LOAD(live_gil) - size);
    blocks_gil--;
    return 1;
}

HOT void count_call(int domain, int is_alloc, size_t size)
{
    if (domain == D_RAW) {
        if (is_alloc) {
            ADD(n_alloc_raw, 1);
            ADD(bytes_raw, size);
        }
        else {
            ADD(n_free_raw, 1);
        }
    }
    else if (is_alloc) {
        n_alloc_gil++;
        bytes_gil += size;
    }
    else {
        n_free_gil++;
    }
}
