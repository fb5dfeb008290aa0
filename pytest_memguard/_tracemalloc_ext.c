/*
 * _tracemalloc_ext: allocation counts, exact heap peaks and sampled sites on PEP 445 hooks.
 *
 * Why not tracemalloc: it captures a traceback for every allocation, 10-12x slower on
 * allocation-heavy code. What a memory test needs on every run is far less: how many allocator
 * calls (deterministic, so a merge can be gated on it), how many bytes are live and their peak
 * (exact, so budgets are exact), and, only for explaining a failure, where memory came from,
 * which a byte-proportional sample answers at almost no cost (as Go's and tcmalloc's heap
 * profilers do).
 *
 * Layout of the state:
 * - The hooks wrap the RAW, MEM and OBJ domains only while a window is open (enable() puts
 *   them in, disable() takes them out). Installed but idle they cost a load, a branch and an
 *   indirect call per allocator call: 4% of the instructions of a whole pytest run of small
 *   tests (callgrind), which is more than the measuring itself. A hook someone else wrapped
 *   (tracemalloc started inside a window) stays in until it is on top again.
 * - A thread-local guard makes nested calls pass straight through: pymalloc calls
 *   PyMem_RawMalloc for blocks over 512 bytes, and the sampler allocates frame objects; neither
 *   may be counted twice or traced.
 * - One open-addressing table per domain maps pointer -> size for blocks allocated while
 *   tracking; blocks allocated before are ignored when freed, as tracemalloc does. MEM and OBJ
 *   are only called with the GIL held, so their tables need no lock; RAW is called from any
 *   thread, so its table, counters and live bytes are guarded by a lock and atomics.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if !defined(__GNUC__) && !defined(__clang__)
#error "_tracemalloc_ext needs GCC or Clang atomics; pytest-memguard falls back to tracemalloc"
#endif

/* The allocator hooks run on every allocation of a measured test: their common path (a small
   block, not sampled, its page already seen) is inlined into them, and the rest is kept out of
   line so that it does not bloat that path. Function calls and their prologues were a third
   of the hooks' instructions. */
#define HOT static inline __attribute__((always_inline))
#define COLD static __attribute__((noinline))

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define ADD(x, v) __atomic_fetch_add(&(x), (v), __ATOMIC_RELAXED)

#define N_DOMAINS 3
#define D_RAW 0
#define D_MEM 1
#define D_OBJ 2
#define MAX_FRAMES 8
#define MAX_SAMPLES 65536

/* 16 bytes a slot: at up to 75% load that is ~21 bytes per live block, which matters because
   this memory is ours, not the user's (it is subtracted from the kernel peak, see own_bytes). */
typedef struct {
    uintptr_t key;
    uint32_t size;   /* HUGE_SIZE: the real size is in the huge[] side list */
    int32_t sample;
} entry_t;
#define HUGE_SIZE UINT32_MAX
#define MAX_HUGE 64

typedef struct {
    entry_t *slots;
    size_t mask;
    size_t used;
    unsigned shift;
} table_t;

typedef struct {
    size_t size;
    double weight;
    int domain;
    int alive;
    int nframes;
    uint32_t file[MAX_FRAMES]; /* offsets into the name pool (below) */
    uint32_t func[MAX_FRAMES];
    int line[MAX_FRAMES];
} sample_t;

static PyMemAllocatorEx orig[N_DOMAINS];

/* Whose allocations are the test's. The thread that opened the outermost window is the test's
   own: its calls are counted and its blocks tracked. Threads that existed when the window opened
   (xdist's execnet I/O thread, a server the test suite runs in the background) are left out:
   their allocations are not the test's and arrive at random moments. Threads the test starts
   hold the test's memory, so their blocks are tracked, but how many calls they make depends on
   how the scheduler interleaves them (a cache cleared under concurrent readers refills once or
   three times), so they are not counted: a count is a property of the test only on its own
   thread. Frees from any thread untrack blocks, so live bytes stay exact. */
#define MAX_EXCLUDED 64
static unsigned long excluded[MAX_EXCLUDED];
static int n_excluded = 0;
static unsigned long window_thread = 0; /* 0: no window, every thread counts */

enum { COUNTED, TRACKED, IGNORED };

static inline int other_thread_role(void)
{
    unsigned long owner = LOAD(window_thread);
    int n = LOAD(n_excluded);
    if (owner == 0 && n == 0) {
        return COUNTED;
    }
    unsigned long me = PyThread_get_thread_ident();
    if (me == owner) {
        return COUNTED;
    }
    for (int i = 0; i < n; i++) {
        if (excluded[i] == me) {
            return IGNORED;
        }
    }
    return owner == 0 ? COUNTED : TRACKED;
}
static int installed = 0;
static int enabled = 0;         /* read from any thread */
static int table_failed = 0;    /* a table could not grow: live/peak are lower bounds */
/* initial-exec: a direct thread-pointer access, not a call into the dynamic linker per
   allocation (the general model a shared object gets by default cost ~10% of the hook). */
#if defined(__GNUC__) && defined(__linux__)
#define FAST_TLS __attribute__((tls_model("initial-exec")))
#else
#define FAST_TLS
#endif
static __thread int in_hook FAST_TLS = 0;
/* Set by pause(): this thread's allocations are not the test's for now (pytest reporting a
   subtest from inside the test's call, whose cost depends on the plugins installed: the
   terminal's or xdist's). Frees still untrack blocks, so live bytes stay exact. */
static __thread int paused FAST_TLS = 0;

/* COUNTED, TRACKED or IGNORED (above) for the calling thread. */
static inline int thread_role(void)
{
    return paused ? IGNORED : other_thread_role();
}

/* Monotonic counters; Python takes differences. */
static size_t n_alloc_gil, n_free_gil, bytes_gil;
static size_t n_alloc_raw, n_free_raw, bytes_raw;
/* Tracked (allocated-while-enabled) bytes and blocks still alive; reset by enable(). */
static size_t live_gil, live_raw;
static Py_ssize_t blocks_gil, blocks_raw;
/* Reallocations of blocks the tables do not know (allocated before tracing began), and the
   sizes of their new blocks: a container made before a leak check and reallocated in it
   shows as one more live block of its whole new size, while its old block was never counted.
   The leak check takes these out. */
static Py_ssize_t old_reallocs_gil, old_reallocs_raw;
static size_t old_realloc_bytes_gil, old_realloc_bytes_raw;
static size_t peak;

static table_t tables[N_DOMAINS];
static struct {
    uintptr_t key;
    size_t size;
} huge[MAX_HUGE];
static int n_huge = 0;
/* Bytes of our own bookkeeping (tables, samples) now and at most since enable(): the kernel's
   high-water mark counts them, and a user's budget must not. */
static size_t own_bytes = 0, own_peak = 0;

static void own_add(size_t n)
{
    size_t now = ADD(own_bytes, n) + n;
    size_t cur = LOAD(own_peak);
    while (now > cur &&
           !__atomic_compare_exchange_n(&own_peak, &cur, now, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

static void own_sub(size_t n)
{
    __atomic_fetch_sub(&own_bytes, n, __ATOMIC_RELAXED);
}
static PyThread_type_lock raw_lock = NULL;

/* Sampling: a Poisson process over allocated bytes, reseeded on enable() so that the same
   code samples at the same points (and so allocates the same frame objects) on every run. */
static size_t sample_interval = 0;   /* 0 = off */
static int max_frames = 4;
static int64_t countdown = 0; /* bytes until the next sample */
static uint64_t rng_state = 0;
static sample_t *samples = NULL;
static size_t n_samples = 0, cap_samples = 0, dropped_samples = 0;

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

/* ---------------------------------------------------------------- sampling */

static inline uint64_t rng_next(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double next_countdown(void)
{
    /* Exponential with mean sample_interval: -ln(U) * mean, U in (0, 1]. */
    double u = ((double)(rng_next() >> 11) + 1.0) / 9007199254740993.0;
    return -log(u) * (double)sample_interval;
}

static PyThreadState *current_tstate(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyThreadState_GetUnchecked();
#else
    return _PyThreadState_UncheckedGet();
#endif
}

/* Names of sampled frames, copied into one pool of C strings that lives as long as the
   samples. Holding the code objects instead would keep them alive: a sample taken while a
   module is imported would hold the module's code, with every function's code in its
   constants, and a leak check of a test that imports or generates code read that as growth
   (dateutil's import tests, +100-200 blocks a run that were only our samples). Equal names
   share one copy; samples keep offsets into the pool, which moves when it grows. One buffer,
   not a malloc per name: the leak check subtracts our bytes from the C heap's, and per-chunk
   overhead it cannot see would read as native growth. Offset 0 is "?". */
typedef struct {
    uint64_t hash;
    uint32_t offset; /* 0: free slot */
} name_slot_t;

static name_slot_t *names = NULL;
static size_t names_cap = 0, names_used = 0;
static char *pool = NULL;
static size_t pool_len = 0, pool_cap = 0;

static const char *pool_text(uint32_t offset)
{
    return pool != NULL ? pool + offset : "?";
}

/* Empty the pool, keeping its memory for the next window: freeing and growing it again on
   every run of a leak check would move the C heap by chunk overheads we do not count, which
   the check reads as native growth. */
static void names_clear(void)
{
    if (names != NULL) {
        memset(names, 0, names_cap * sizeof(name_slot_t));
    }
    names_used = 0;
    pool_len = pool != NULL ? 2 : 0; /* "?" stays at offset 0 */
}

static int names_grow(void)
{
    size_t cap = names_cap ? names_cap * 2 : 256;
    name_slot_t *grown = (name_slot_t *)calloc(cap, sizeof(name_slot_t));
    if (grown == NULL) {
        return -1;
    }
    own_add(cap * sizeof(name_slot_t));
    for (size_t i = 0; i < names_cap; i++) {
        if (names[i].offset != 0) {
            size_t j = names[i].hash & (cap - 1);
            while (grown[j].offset != 0) {
                j = (j + 1) & (cap - 1);
            }
            grown[j] = names[i];
        }
    }
    free(names);
    own_sub(names_cap * sizeof(name_slot_t));
    names = grown;
    names_cap = cap;
    return 0;
}

/* Room for ``need`` more bytes in the pool (which starts with "?"); -1 when out of memory. */
static int pool_reserve(size_t need)
{
    if (pool_len + need <= pool_cap) {
        return 0;
    }
    size_t cap = pool_cap ? pool_cap : 4096;
    while (cap < pool_len + need + 2) {
        cap *= 2;
    }
    if (cap > UINT32_MAX) {
        return -1;
    }
    char *grown = (char *)realloc(pool, cap);
    if (grown == NULL) {
        return -1;
    }
    own_add(cap - pool_cap);
    if (pool == NULL) {
        memcpy(grown, "?", 2);
        pool_len = 2;
    }
    pool = grown;
    pool_cap = cap;
    return 0;
}

/* The pool offset of a str's text; 0 ("?") when it cannot be encoded or there is no memory. */
static uint32_t pooled_name(PyObject *str)
{
    Py_ssize_t len = 0;
    const char *text = str != NULL && PyUnicode_Check(str) ? PyUnicode_AsUTF8AndSize(str, &len) : NULL;
    /* The str's own hash: computed once and cached in the object, so a name seen before costs
       a table probe and a compare, not a pass over its bytes (the leak check's explanation
       samples every allocation). */
    Py_hash_t py_hash = text != NULL ? PyObject_Hash(str) : -1;
    if (text == NULL || py_hash == -1) {
        PyErr_Clear(); /* a lone surrogate in a file name */
        return 0;
    }
    if (pool_reserve((size_t)len + 1) < 0 ||
        ((names_used + 1) * 2 > names_cap && names_grow() < 0)) {
        return 0;
    }
    uint64_t h = (uint64_t)py_hash * 0x9E3779B97F4A7C15ULL;
    size_t i = h & (names_cap - 1);
    for (; names[i].offset != 0; i = (i + 1) & (names_cap - 1)) {
        const char *known = pool + names[i].offset;
        if (names[i].hash == h && memcmp(known, text, (size_t)len) == 0 && known[len] == 0) {
            return names[i].offset;
        }
    }
    uint32_t offset = (uint32_t)pool_len;
    memcpy(pool + offset, text, (size_t)len);
    pool[offset + len] = 0;
    pool_len += (size_t)len + 1;
    names[i].hash = h;
    names[i].offset = offset;
    names_used++;
    return offset;
}

/* Record the Python stack for an allocation. Called with the GIL held and in_hook set, so the
   frame objects that 3.11+ may create here pass through the hooks untraced. On 3.10 and 3.11
   creating a GC object can start a collection on the spot, which must not run inside an
   arbitrary allocator call: the collector is paused around the walk. */
static int32_t take_sample(int domain, size_t size, double weight)
{
    if (n_samples >= cap_samples) {
        if (cap_samples >= MAX_SAMPLES) {
            dropped_samples++;
            return -1;
        }
        size_t cap = cap_samples ? cap_samples * 2 : 256;
        /* A RAW free on another thread may be marking a sample dead under raw_lock. */
        PyThread_acquire_lock(raw_lock, WAIT_LOCK);
        sample_t *grown = (sample_t *)realloc(samples, cap * sizeof(sample_t));
        if (grown != NULL) {
            own_add((cap - cap_samples) * sizeof(sample_t));
            samples = grown;
            cap_samples = cap;
        }
        PyThread_release_lock(raw_lock);
        if (grown == NULL) {
            dropped_samples++;
            return -1;
        }
    }
    sample_t *s = &samples[n_samples];
    s->size = size;
    s->weight = weight;
    s->domain = domain;
    s->alive = 1;
    s->nframes = 0;

    PyThreadState *ts = current_tstate();
    if (ts != NULL) {
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *exc = PyErr_GetRaisedException();
#else
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
#endif
        int gc_was_enabled = PyGC_Disable();
        PyFrameObject *frame = PyThreadState_GetFrame(ts);
        while (frame != NULL && s->nframes < max_frames) {
            PyCodeObject *code = PyFrame_GetCode(frame);
            s->file[s->nframes] = pooled_name(code->co_filename);
            s->func[s->nframes] = pooled_name(code->co_name);
            Py_DECREF(code);
            s->line[s->nframes] = PyFrame_GetLineNumber(frame);
            s->nframes++;
            PyFrameObject *back = PyFrame_GetBack(frame);
            Py_DECREF(frame);
            frame = back;
        }
        Py_XDECREF(frame);
        if (gc_was_enabled) {
            PyGC_Enable();
        }
#if PY_VERSION_HEX >= 0x030C0000
        PyErr_SetRaisedException(exc);
#else
        PyErr_Restore(et, ev, tb);
#endif
    }
    return (int32_t)n_samples++;
}

COLD int32_t sample_now(int domain, size_t size)
{
    if (size >= sample_interval) {
        return take_sample(domain, size, (double)size);
    }
    countdown = (int64_t)next_countdown();
    double p = 1.0 - exp(-(double)size / (double)sample_interval);
    return take_sample(domain, size, p > 0 ? (double)size / p : (double)sample_interval);
}

/* Decide whether this allocation is sampled; needs the GIL (countdown and samples). A block
   of the interval or more is always sampled; a smaller one when the countdown of bytes runs
   out. */
HOT int32_t maybe_sample(int domain, size_t size)
{
    if (sample_interval == 0) {
        return -1;
    }
    if (size < sample_interval) {
        countdown -= (int64_t)size;
        if (countdown > 0) {
            return -1;
        }
    }
    return sample_now(domain, size);
}

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

/* ---------------------------------------------------------------- hooks */

#define DOMAIN(ctx) ((int)(intptr_t)(ctx))

static void *hook_malloc(void *ctx, size_t size)
{
    PyMemAllocatorEx *o = &orig[DOMAIN(ctx)];
    int role;
    if (!LOAD(enabled) || in_hook || (role = thread_role()) == IGNORED) {
        return o->malloc(o->ctx, size);
    }
    in_hook = 1;
    void *ptr = o->malloc(o->ctx, size);
    if (role == COUNTED) {
        count_call(DOMAIN(ctx), 1, size);
    }
    if (ptr != NULL) {
        note_alloc(DOMAIN(ctx), ptr, size);
    }
    in_hook = 0;
    return ptr;
}

static void *hook_calloc(void *ctx, size_t nelem, size_t elsize)
{
    PyMemAllocatorEx *o = &orig[DOMAIN(ctx)];
    int role;
    if (!LOAD(enabled) || in_hook || (role = thread_role()) == IGNORED) {
        return o->calloc(o->ctx, nelem, elsize);
    }
    in_hook = 1;
    void *ptr = o->calloc(o->ctx, nelem, elsize);
    size_t size = (elsize && nelem > SIZE_MAX / elsize) ? SIZE_MAX : nelem * elsize;
    if (role == COUNTED) {
        count_call(DOMAIN(ctx), 1, size);
    }
    if (ptr != NULL) {
        note_alloc(DOMAIN(ctx), ptr, size);
    }
    in_hook = 0;
    return ptr;
}

static void *hook_realloc(void *ctx, void *old, size_t size)
{
    PyMemAllocatorEx *o = &orig[DOMAIN(ctx)];
    if (!LOAD(enabled) || in_hook) {
        return o->realloc(o->ctx, old, size);
    }
    in_hook = 1;
    int role = thread_role();
    void *ptr = o->realloc(o->ctx, old, size);
    if (role == COUNTED) {
        count_call(DOMAIN(ctx), 1, size);
    }
    if (ptr != NULL) {
        /* The old block is gone (or reused in place): forget it, then trace the new one. */
        int untraced = old != NULL && !note_free(DOMAIN(ctx), old);
        if (role != IGNORED) {
            note_alloc(DOMAIN(ctx), ptr, size);
            if (untraced && DOMAIN(ctx) == D_RAW) {
                ADD(old_reallocs_raw, 1);
                ADD(old_realloc_bytes_raw, size);
            }
            else if (untraced) {
                old_reallocs_gil++;
                old_realloc_bytes_gil += size;
            }
        }
    }
    in_hook = 0;
    return ptr;
}

static void hook_free(void *ctx, void *ptr)
{
    PyMemAllocatorEx *o = &orig[DOMAIN(ctx)];
    if (!LOAD(enabled) || in_hook) {
        o->free(o->ctx, ptr);
        return;
    }
    in_hook = 1;
    if (thread_role() == COUNTED) {
        count_call(DOMAIN(ctx), 0, 0);
    }
    if (ptr != NULL) {
        note_free(DOMAIN(ctx), ptr);
    }
    o->free(o->ctx, ptr);
    in_hook = 0;
}

static const PyMemAllocatorDomain domains[N_DOMAINS] = {
    PYMEM_DOMAIN_RAW, PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ};

static int hooks_current(void)
{
    for (int d = 0; d < N_DOMAINS; d++) {
        PyMemAllocatorEx now;
        PyMem_GetAllocator(domains[d], &now);
        if (now.malloc != hook_malloc || now.ctx != (void *)(intptr_t)d) {
            return 0;
        }
    }
    return 1;
}


/* ---------------------------------------------------------------- the kernel bracket

   The per-test probe makes four system calls (reset the peak, read statm, getrusage, count
   fds); from Python each one builds and parses objects, ~35 us a test in all, which on a suite
   of millisecond tests is most of what the plugin costs. Here they cost the system calls. */

#ifdef __linux__
static const char *parse_ull(const char *p, unsigned long long *out)
{
    while (*p == ' ') {
        p++;
    }
    if (*p < '0' || *p > '9') {
        return NULL;
    }
    unsigned long long v = 0;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (unsigned long long)(*p++ - '0');
    }
    *out = v;
    return p;
}

static int read_statm(int statm_fd, unsigned long long *resident, unsigned long long *shared)
{
    /* "size resident shared text lib data dt", in pages. Parsed by hand: sscanf cost more
       than the read (~1.5k instructions a call, three calls a window). */
    char buf[128];
    ssize_t n = pread(statm_fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    buf[n] = 0;
    unsigned long long size = 0;
    const char *p = parse_ull(buf, &size);
    p = p ? parse_ull(p, resident) : NULL;
    p = p ? parse_ull(p, shared) : NULL;
    if (p == NULL) {
        PyErr_SetString(PyExc_OSError, "unexpected /proc/self/statm format");
        return -1;
    }
    return 0;
}

static PyObject *ext_kernel(PyObject *self, PyObject *args)
{
    /* kernel(statm_fd, clear_refs_fd) -> (resident pages, shared pages, ru_maxrss in KiB).
       With clear_refs_fd >= 0 the high-water mark is reset to the current RSS first, but only
       when it stands above it: when it does not, a reset would change nothing, and the write
       is the dearest call of the bracket (8 us of 11 inside a pytest run, measured). */
    int statm_fd, clear_fd;
    if (!PyArg_ParseTuple(args, "ii", &statm_fd, &clear_fd)) {
        return NULL;
    }
    unsigned long long resident = 0, shared = 0;
    struct rusage usage;
    if (read_statm(statm_fd, &resident, &shared) < 0) {
        return NULL;
    }
    if (getrusage(RUSAGE_SELF, &usage) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    long page = sysconf(_SC_PAGESIZE);
    if (clear_fd >= 0 && (unsigned long long)usage.ru_maxrss * 1024ULL > resident * (unsigned long long)page) {
        if (write(clear_fd, "5", 1) != 1) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (read_statm(statm_fd, &resident, &shared) < 0) {
            return NULL;
        }
        if (getrusage(RUSAGE_SELF, &usage) != 0) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    return Py_BuildValue("(KKl)", resident, shared, (long)usage.ru_maxrss);
}

struct memguard_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Kept open: opening /proc/self/fd costs as much as listing it. /proc/self is resolved when
   opened, so a forked child must open its own: the atfork handler says when. */
static int fd_dir = -1;
static int forked = 0;

static void note_fork(void)
{
    forked = 1;
}

static void proc_close_all(void);

/* After a fork every kept /proc fd still describes the parent. */
static void proc_after_fork(void)
{
    if (forked) {
        forked = 0;
        proc_close_all();
    }
}

/* Open file descriptors, not counting the one kept open to count them; -1 with an error set.
   Since Linux 6.2 the size of /proc/PID/fd is the number of open fds, one fstat; older kernels
   report 0 there and the directory is listed instead. */
static long count_fds(void)
{
    proc_after_fork();
    if (fd_dir < 0) {
        fd_dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd_dir < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    struct stat st;
    if (fstat(fd_dir, &st) == 0 && st.st_size > 0) {
        return (long)st.st_size - 1;
    }
    if (lseek(fd_dir, 0, SEEK_SET) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    char buf[16384];
    long count = 0;
    for (;;) {
        long got = syscall(SYS_getdents64, fd_dir, buf, sizeof(buf));
        if (got < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        for (long off = 0; off < got;) {
            struct memguard_dirent64 *d = (struct memguard_dirent64 *)(buf + off);
            if (d->d_name[0] != '.') {
                count++;
            }
            off += d->d_reclen;
        }
        /* The kernel fills the buffer while entries fit: one that came back with room for
           several more records was the whole directory, and the call that would return 0
           (each is several microseconds in a VM) is saved. */
        if (got == 0 || (size_t)got + 4 * sizeof(struct memguard_dirent64) + 1024 < sizeof(buf)) {
            break;
        }
    }
    return count - 1;
}

static PyObject *ext_count_fds(PyObject *self, PyObject *unused)
{
    long n = count_fds();
    return n < 0 ? NULL : PyLong_FromLong(n);
}
#endif

/* ---------------------------------------------------------------- Python API */

static void clear_samples(void)
{
    names_clear();
    n_samples = 0;
    dropped_samples = 0;
}

static void hooks_in(void)
{
    if (installed) {
        return;
    }
    for (int d = 0; d < N_DOMAINS; d++) {
        PyMem_GetAllocator(domains[d], &orig[d]);
    }
    for (int d = 0; d < N_DOMAINS; d++) {
        PyMemAllocatorEx hook = {(void *)(intptr_t)d, hook_malloc, hook_calloc, hook_realloc,
                                 hook_free};
        PyMem_SetAllocator(domains[d], &hook);
    }
    installed = 1;
}

static void hooks_out(void)
{
    /* Only when ours are still the current allocators: restoring orig[] over someone who
       wrapped us would cut them off. Blocks allocated through the hooks are freed later
       through the same underlying allocator, so taking them out loses nothing but the
       bookkeeping that enable() resets anyway. */
    if (installed && hooks_current()) {
        for (int d = 0; d < N_DOMAINS; d++) {
            PyMem_SetAllocator(domains[d], &orig[d]);
        }
        installed = 0;
    }
}

static PyObject *ext_install(PyObject *self, PyObject *unused)
{
    /* Kept for callers that want the hooks in before the first window; enable() does it. */
    hooks_in();
    Py_RETURN_NONE;
}

static PyObject *ext_is_installed(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(installed && hooks_current());
}

static int start_tracking(Py_ssize_t interval, int frames)
{
    if (interval < 0 || frames < 1 || frames > MAX_FRAMES) {
        PyErr_Format(PyExc_ValueError, "interval must be >= 0 and frames in 1..%d", MAX_FRAMES);
        return -1;
    }
    STORE(enabled, 0);
    clear_samples();
    PyThread_acquire_lock(raw_lock, WAIT_LOCK);
    table_clear(&tables[D_RAW]);
    STORE(live_raw, 0);
    STORE(blocks_raw, 0);
    PyThread_release_lock(raw_lock);
    table_clear(&tables[D_MEM]);
    table_clear(&tables[D_OBJ]);
    pagemap_clear(&pagemaps[D_MEM], 0);
    pagemap_clear(&pagemaps[D_OBJ], 0);
    STORE(live_gil, 0);
    blocks_gil = 0;
    STORE(peak, 0);
    STORE(own_peak, LOAD(own_bytes));
    n_huge = 0;
    table_failed = 0;
    sample_interval = (size_t)interval;
    max_frames = frames;
    rng_state = 0x9E3779B97F4A7C15ULL;
    countdown = interval ? (int64_t)next_countdown() : 0;
    hooks_in();
    STORE(enabled, 1);
    return 0;
}

static PyObject *ext_enable(PyObject *self, PyObject *args)
{
    Py_ssize_t interval = 0;
    int frames = 4;
    if (!PyArg_ParseTuple(args, "|ni", &interval, &frames)) {
        return NULL;
    }
    if (start_tracking(interval, frames) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static void release_big_table(table_t *t)
{
    if (t->slots != NULL && t->mask + 1 > ((size_t)1 << 14)) {
        free(t->slots);
        own_sub((t->mask + 1) * sizeof(entry_t));
        t->slots = NULL;
        t->used = 0;
    }
}

static PyObject *ext_disable(PyObject *self, PyObject *unused)
{
    /* Stop, and give back what a big test made the tables grow to (small tables are wiped by
       the next enable(): wiping twice per test evicted the test runner's own data from the
       CPU caches and cost more than the window itself). Samples stay readable. */
    STORE(enabled, 0);
    hooks_out();
    PyThread_acquire_lock(raw_lock, WAIT_LOCK);
    release_big_table(&tables[D_RAW]);
    PyThread_release_lock(raw_lock);
    release_big_table(&tables[D_MEM]);
    release_big_table(&tables[D_OBJ]);
    pagemap_clear(&pagemaps[D_MEM], 1);
    pagemap_clear(&pagemaps[D_OBJ], 1);
    Py_RETURN_NONE;
}


static PyObject *ext_own_bytes(PyObject *self, PyObject *unused)
{
    /* (bookkeeping bytes now, their peak since enable()) */
    return Py_BuildValue("(nn)", (Py_ssize_t)LOAD(own_bytes), (Py_ssize_t)LOAD(own_peak));
}

static PyObject *ext_counters(PyObject *self, PyObject *unused)
{
    size_t live = LOAD(live_gil) + LOAD(live_raw);
    Py_ssize_t blocks = blocks_gil + LOAD(blocks_raw);
    return Py_BuildValue("(nnnnnn)", (Py_ssize_t)(n_alloc_gil + LOAD(n_alloc_raw)),
                         (Py_ssize_t)(n_free_gil + LOAD(n_free_raw)),
                         (Py_ssize_t)(bytes_gil + LOAD(bytes_raw)), (Py_ssize_t)live, blocks,
                         (Py_ssize_t)LOAD(peak));
}

/* Marks: counter snapshots kept in C, so that opening a window allocates nothing between the
   snapshot and the measured code (a tuple made there would be counted as the user's). */
#define MAX_MARKS 64
typedef struct {
    int used;
    size_t allocs, frees, bytes, live;
    Py_ssize_t blocks, old_reallocs;
    size_t old_realloc_bytes;
} mark_t;
static mark_t marks[MAX_MARKS];

static PyObject *ext_mark(PyObject *self, PyObject *unused)
{
    for (int i = 0; i < MAX_MARKS; i++) {
        if (!marks[i].used) {
            marks[i].used = 1;
            marks[i].blocks = blocks_gil + LOAD(blocks_raw);
            marks[i].old_reallocs = old_reallocs_gil + LOAD(old_reallocs_raw);
            marks[i].old_realloc_bytes = old_realloc_bytes_gil + LOAD(old_realloc_bytes_raw);
            marks[i].live = LOAD(live_gil) + LOAD(live_raw);
            marks[i].bytes = bytes_gil + LOAD(bytes_raw);
            marks[i].frees = n_free_gil + LOAD(n_free_raw);
            marks[i].allocs = n_alloc_gil + LOAD(n_alloc_raw);
            return PyLong_FromLong(i); /* small ints are cached: no allocation */
        }
    }
    PyErr_SetString(PyExc_RuntimeError, "more than 64 nested measurement windows");
    return NULL;
}

static PyObject *ext_since(PyObject *self, PyObject *arg)
{
    /* (allocations, frees, bytes, live change, live-block change, peak above the mark's live,
       reallocations of blocks allocated before tracing, the new sizes of those),
       all read before the result tuple is allocated. */
    size_t allocs = n_alloc_gil + LOAD(n_alloc_raw);
    size_t frees = n_free_gil + LOAD(n_free_raw);
    size_t bytes = bytes_gil + LOAD(bytes_raw);
    size_t live = LOAD(live_gil) + LOAD(live_raw);
    Py_ssize_t blocks = blocks_gil + LOAD(blocks_raw);
    Py_ssize_t old_reallocs = old_reallocs_gil + LOAD(old_reallocs_raw);
    size_t old_realloc_bytes = old_realloc_bytes_gil + LOAD(old_realloc_bytes_raw);
    size_t pk = LOAD(peak);
    long i = PyLong_AsLong(arg);
    if (i < 0 || i >= MAX_MARKS || !marks[i].used) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "not an open mark");
        }
        return NULL;
    }
    mark_t *m = &marks[i];
    return Py_BuildValue("(nnnnnnnn)", (Py_ssize_t)(allocs - m->allocs),
                         (Py_ssize_t)(frees - m->frees), (Py_ssize_t)(bytes - m->bytes),
                         (Py_ssize_t)live - (Py_ssize_t)m->live, blocks - m->blocks,
                         pk > m->live ? (Py_ssize_t)(pk - m->live) : (Py_ssize_t)0,
                         old_reallocs - m->old_reallocs,
                         (Py_ssize_t)(old_realloc_bytes - m->old_realloc_bytes));
}

/* ---------------------------------------------------------------- windows

   What a measured window does at its ends, in one call each: on a suite of millisecond tests
   the Python-level version (list the other threads, enable, swap the peak, read the sample
   count and our own bytes, take a mark; the reverse at the end) was a third of the plugin's
   cost per test, most of it spent on objects made only to be thrown away. */

static int window_depth = 0;

static int exclude_other_threads(void)
{
    PyThreadState *me = current_tstate();
    if (me == NULL) {
        return 0;
    }
    unsigned long my_ident = PyThread_get_thread_ident();
    STORE(window_thread, my_ident);
    int n = 0;
    PyThreadState *t = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(me));
    for (; t != NULL && n < MAX_EXCLUDED; t = PyThreadState_Next(t)) {
        if (t != me && t->thread_id != my_ident) {
            excluded[n++] = t->thread_id;
        }
    }
    __atomic_store_n(&n_excluded, n, __ATOMIC_RELEASE);
    return n;
}


/* Open a heap window, all but its mark: the outermost one excludes the threads alive now and
   starts tracking; every window gets its own peak, starting from the live bytes. The caller
   makes whatever objects it returns, then takes the mark (heap_mark) last, so that nothing of
   ours is allocated between the mark and the measured code. */
static int heap_begin(Py_ssize_t interval, int frames, size_t *saved, size_t *first, size_t *own)
{
    if (window_depth == 0) {
        exclude_other_threads();
        if (start_tracking(interval, frames) < 0) {
            STORE(n_excluded, 0);
            STORE(window_thread, 0);
            return -1;
        }
    }
    window_depth++;
    *saved = LOAD(peak);
    STORE(peak, LOAD(live_gil) + LOAD(live_raw));
    bump_peak();
    *first = n_samples;
    *own = LOAD(own_bytes);
    return 0;
}

/* The outer window's peak includes this one's; the outermost stops tracking. */
static void heap_close(int mark, size_t saved)
{
    if (mark >= 0 && mark < MAX_MARKS) {
        marks[mark].used = 0;
    }
    size_t pk = LOAD(peak);
    STORE(peak, saved > pk ? saved : pk);
    if (window_depth > 0 && --window_depth == 0) {
        PyObject *done = ext_disable(NULL, NULL);
        Py_XDECREF(done);
        STORE(n_excluded, 0);
        STORE(window_thread, 0);
    }
}

/* The mark that ends heap_begin(); on failure (error set) the window is closed again. */
static int heap_mark(size_t saved)
{
    PyObject *m = ext_mark(NULL, NULL);
    if (m == NULL) {
        heap_close(-1, saved);
        return -1;
    }
    int mark = (int)PyLong_AsLong(m); /* a small int: cached, nothing was allocated */
    Py_DECREF(m);
    return mark;
}

static PyObject *ext_open_window(PyObject *self, PyObject *args)
{
    /* open_window(sample_interval, frames) -> (mark, saved peak, first sample, own bytes).
       The tuple is built before the mark: the caller keeps it until close_window(), so
       neither its allocation nor its free falls inside the window. */
    Py_ssize_t interval = 0;
    int frames = 4;
    if (!PyArg_ParseTuple(args, "|ni", &interval, &frames)) {
        return NULL;
    }
    size_t saved, first, own;
    if (heap_begin(interval, frames, &saved, &first, &own) < 0) {
        return NULL;
    }
    PyObject *result = Py_BuildValue("(innn)", 0, (Py_ssize_t)saved, (Py_ssize_t)first,
                                     (Py_ssize_t)own);
    if (result == NULL) {
        heap_close(-1, saved);
        return NULL;
    }
    int mark = heap_mark(saved);
    if (mark < 0) {
        Py_DECREF(result);
        return NULL;
    }
    Py_DECREF(PyTuple_GET_ITEM(result, 0));
    PyTuple_SET_ITEM(result, 0, PyLong_FromLong(mark));
    return result;
}

static PyObject *ext_close_window(PyObject *self, PyObject *args)
{
    /* close_window(mark, saved peak) */
    int i;
    Py_ssize_t saved;
    if (!PyArg_ParseTuple(args, "in", &i, &saved)) {
        return NULL;
    }
    heap_close(i, (size_t)saved);
    Py_RETURN_NONE;
}

#ifdef __linux__
/* ---------------------------------------------------------------- whole windows

   A measured test needs, at each end, a garbage collection (done by the caller), the fd count,
   the kernel bracket (statm, getrusage, perhaps a peak reset) and the heap window. Done in one
   call at each end, the Python layers between them (a probe, its window records, their
   folding, the arithmetic of the result) cost nothing; on a suite of sub-millisecond tests
   those layers were a larger part of the plugin's cost than the system calls.

   Windows nest (the plugin's window around a user's measure()): resetting the kernel peak for
   an inner window must not lose what the outer ones had seen, so every open window keeps its
   own running maximum, folded in before each reset. Called with the GIL held, so the stack
   needs no lock. */

#define W_HEAP 1
#define W_KERNEL 2
#define W_FDS 4
#define W_PRIVATE 8
#define W_RETAINED 16
/* Trim malloc before the window: freed heap pages that stay resident would hide a native
   spike from the kernel peak (it counts pages made resident, not bytes in use). */
#define W_TRIM 32
#define MAX_WINDOWS 64
/* ru_maxrss also folds in signal->maxrss, which the kernel raises when a thread exits and
   clear_refs never resets: once it stands this far above a window's start, only VmHWM (a
   parse of /proc/self/status) is honest. */
#define STALE_SLACK (512 << 10)

typedef struct {
    int used, flags, precise, mark, read;
    long long start_res, start_anon, high;
    long fds0;
    size_t saved_peak, first_sample, own0;
} window_t;

static window_t wins[MAX_WINDOWS];
static int wins_top = 0; /* one past the highest slot ever used: the scans stop there */
static int proc_statm = -1, proc_status = -1, proc_clear = -1;
static int proc_state = 0; /* 0 not tried, 1 open, -1 unavailable */
static long page_size = 4096;

static void proc_close_all(void)
{
    int *fds[] = {&proc_statm, &proc_status, &proc_clear, &fd_dir};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
    }
    proc_state = 0;
}

static int proc_open(void)
{
    proc_after_fork();
    if (proc_state != 0) {
        return proc_state;
    }
    page_size = sysconf(_SC_PAGESIZE);
    proc_statm = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    proc_status = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    proc_clear = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (proc_statm < 0 || proc_status < 0 || proc_clear < 0 || write(proc_clear, "5", 1) != 1) {
        proc_close_all();
        proc_state = -1;
    }
    else {
        proc_state = 1;
    }
    return proc_state;
}

/* A "Name:   N kB" field of /proc/self/status, in bytes; 0 where it is missing. */
static long long status_bytes(const char *field)
{
    char buf[4096];
    ssize_t n = pread(proc_status, buf, sizeof(buf) - 1, 0);
    if (n <= 0) {
        return 0;
    }
    buf[n] = 0;
    char *at = strstr(buf, field);
    return at == NULL ? 0 : strtoll(at + strlen(field), NULL, 10) * 1024LL;
}

static long long vmhwm(void)
{
    return status_bytes("VmHWM:");
}

/* Resident shared memory (RssShmem): shared anonymous mappings (``mmap.mmap(-1, n)``, what
   multiprocessing's shared memory uses), SysV shared memory and tmpfs. statm counts it as
   "shared", with file pages, but it is memory the process made and holds: private memory
   counts it. */
static long long rss_shmem(void)
{
    return status_bytes("RssShmem:");
}

/* Resident and shared bytes, and ru_maxrss in bytes; -1 with an error set. */
static int kernel_read(long long *res, long long *shared, long long *maxrss)
{
    unsigned long long r = 0, sh = 0;
    struct rusage usage;
    if (read_statm(proc_statm, &r, &sh) < 0) {
        return -1;
    }
    if (getrusage(RUSAGE_SELF, &usage) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    *res = (long long)r * page_size;
    *shared = (long long)sh * page_size;
    *maxrss = (long long)usage.ru_maxrss * 1024LL;
    return 0;
}

/* The kernel's peak since the last reset (ru_maxrss is folded in lazily, so never below the
   resident set now); with ``precise``, VmHWM instead of a stale ru_maxrss. */
static long long kernel_high(int precise, long long res, long long maxrss)
{
    long long high = precise ? vmhwm() : maxrss;
    return high > res ? high : res;
}

static int any_precise(void)
{
    for (int i = 0; i < wins_top; i++) {
        if (wins[i].used && !wins[i].read && (wins[i].flags & W_KERNEL) && wins[i].precise) {
            return 1;
        }
    }
    return 0;
}

static void fold_high(long long high)
{
    for (int i = 0; i < wins_top; i++) {
        if (wins[i].used && !wins[i].read && (wins[i].flags & W_KERNEL) && wins[i].high < high) {
            wins[i].high = high;
        }
    }
}

static void trim(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

static PyObject *ext_window(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* window(flags, sample_interval, frames) -> handle (a small int). flags: 1 heap, 2 kernel,
       4 fds, 8 private (trim malloc first; the caller has collected garbage), 16 retained,
       32 trim malloc first (for an exact kernel peak).
       Called once per test: the arguments are read without building a tuple. */
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "window(flags, sample_interval=0, frames=4)");
        return NULL;
    }
    long flags = PyLong_AsLong(args[0]);
    Py_ssize_t interval = nargs > 1 ? PyLong_AsSsize_t(args[1]) : 0;
    long frames = nargs > 2 ? PyLong_AsLong(args[2]) : 4;
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (flags < 0 || flags > 63 || frames < 1 || frames > MAX_FRAMES) {
        PyErr_Format(PyExc_ValueError, "flags in 0..31 and frames in 1..%d", MAX_FRAMES);
        return NULL;
    }
    if ((flags & (W_KERNEL | W_PRIVATE)) && proc_open() < 0) {
        PyErr_SetString(PyExc_OSError, "/proc/self/statm, status or clear_refs unavailable");
        return NULL;
    }
    int i = 0;
    while (i < MAX_WINDOWS && wins[i].used) {
        i++;
    }
    if (i == MAX_WINDOWS) {
        PyErr_SetString(PyExc_RuntimeError, "more than 64 nested measurement windows");
        return NULL;
    }
    if (i >= wins_top) {
        wins_top = i + 1;
    }
    window_t *w = &wins[i];
    memset(w, 0, sizeof(*w));
    w->flags = flags;
    w->mark = -1;
    if (flags & (W_PRIVATE | W_TRIM)) {
        trim();
    }
    if (flags & W_FDS) {
        w->fds0 = count_fds();
        if (w->fds0 < 0) {
            return NULL;
        }
    }
    if (flags & (W_KERNEL | W_PRIVATE)) {
        long long res, shared, maxrss;
        if (kernel_read(&res, &shared, &maxrss) < 0) {
            return NULL;
        }
        if (flags & W_KERNEL) {
            fold_high(kernel_high(any_precise(), res, maxrss)); /* nothing open: no-op */
            /* Reset only when the peak stands above the resident set: otherwise the reset
               changes nothing, and the write is the dearest call of the bracket. */
            if (maxrss > res) {
                if (write(proc_clear, "5", 1) != 1) {
                    return PyErr_SetFromErrno(PyExc_OSError);
                }
                if (kernel_read(&res, &shared, &maxrss) < 0) {
                    return NULL;
                }
            }
            w->precise = maxrss > res + STALE_SLACK;
            w->high = res;
        }
        w->start_res = res;
        w->start_anon = res - shared + ((flags & W_PRIVATE) ? rss_shmem() : 0);
    }
    w->used = 1;
    if (flags & W_HEAP) {
        if (heap_begin(interval, (int)frames, &w->saved_peak, &w->first_sample, &w->own0) < 0) {
            w->used = 0;
            return NULL;
        }
        w->mark = heap_mark(w->saved_peak);
        if (w->mark < 0) {
            w->used = 0;
            return NULL;
        }
    }
    return PyLong_FromLong(i); /* small: cached, nothing allocated after the mark */
}

static window_t *window_arg(PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i < 0 || i >= MAX_WINDOWS || !wins[i].used) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "not an open window");
        }
        return NULL;
    }
    return &wins[i];
}

static PyObject *size_or_none(int have, long long v)
{
    if (!have) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLongLong(v);
}

static PyObject *ext_window_read(PyObject *self, PyObject *arg)
{
    /* window_read(handle) -> (peak, heap_peak, retained, private, rss, allocations, fds, frees,
       bytes, kernel_peak, retained_blocks), None where the window did not measure it. Reads
       the heap first (nothing allocated before), then the kernel. The heap window stays open
       (sites and the object census need it) until window_close(). */
    window_t *w = window_arg(arg);
    if (w == NULL) {
        return NULL;
    }
    if (w->read) {
        PyErr_SetString(PyExc_ValueError, "window already read");
        return NULL;
    }
    int heap = w->flags & W_HEAP, kern = w->flags & W_KERNEL;
    size_t allocs = 0, frees = 0, bytes = 0, pk = 0;
    long long live = 0, blocks = 0, own_peak = 0;
    if (heap) {
        mark_t *m = &marks[w->mark];
        allocs = n_alloc_gil + LOAD(n_alloc_raw) - m->allocs;
        frees = n_free_gil + LOAD(n_free_raw) - m->frees;
        bytes = bytes_gil + LOAD(bytes_raw) - m->bytes;
        live = (long long)(LOAD(live_gil) + LOAD(live_raw)) - (long long)m->live;
        blocks = (long long)(blocks_gil + LOAD(blocks_raw)) - (long long)m->blocks;
        size_t now_peak = LOAD(peak);
        pk = now_peak > m->live ? now_peak - m->live : 0;
        size_t op = LOAD(own_peak);
        own_peak = op > w->own0 ? (long long)(op - w->own0) : 0;
    }
    long long kernel_peak = 0, rss = 0, private = 0;
    long fds = 0;
    if (kern) {
        long long res, shared, maxrss;
        int precise = w->precise || any_precise();
        if (kernel_read(&res, &shared, &maxrss) < 0) {
            return NULL;
        }
        long long high = kernel_high(precise, res, maxrss);
        fold_high(high); /* this window's and every outer one's */
        kernel_peak = w->high - w->start_res;
        if (kernel_peak < 0) {
            kernel_peak = 0;
        }
        /* Our own tables grew with the test's blocks: their peak is not the test's. */
        kernel_peak = kernel_peak > own_peak ? kernel_peak - own_peak : 0;
        rss = res - w->start_res;
    }
    w->read = 1;
    if (w->flags & W_PRIVATE) {
        PyGC_Collect();
        trim();
        long long res, shared, maxrss;
        if (kernel_read(&res, &shared, &maxrss) < 0) {
            return NULL;
        }
        private = (res - shared + rss_shmem()) - w->start_anon;
    }
    if (w->flags & W_FDS) {
        long now = count_fds();
        if (now < 0) {
            return NULL;
        }
        fds = now - w->fds0;
    }
    long long peak_v = kern ? kernel_peak : 0;
    if (heap && (long long)pk > peak_v) {
        peak_v = (long long)pk;
    }
    int retained = heap && (w->flags & W_RETAINED);
    /* Made item by item: Py_BuildValue's format parsing was a fifth of this call. */
    PyObject *items[11] = {
        size_or_none(heap || kern, peak_v),
        size_or_none(heap, (long long)pk),
        size_or_none(retained, live > 0 ? live : 0),
        size_or_none(w->flags & W_PRIVATE, private),
        size_or_none(kern, rss),
        size_or_none(heap, (long long)allocs),
        size_or_none(w->flags & W_FDS, fds),
        size_or_none(heap, (long long)frees),
        size_or_none(heap, (long long)bytes),
        size_or_none(kern, kernel_peak),
        size_or_none(retained, blocks),
    };
    PyObject *result = PyTuple_New(11);
    for (int i = 0; i < 11; i++) {
        if (items[i] == NULL || result == NULL) {
            for (int j = i; j < 11; j++) {
                Py_XDECREF(items[j]);
            }
            Py_XDECREF(result);
            return NULL;
        }
        PyTuple_SET_ITEM(result, i, items[i]);
    }
    return result;
}

static PyObject *ext_window_close(PyObject *self, PyObject *arg)
{
    /* window_close(handle): end the heap window (tracking stops with the outermost). */
    window_t *w = window_arg(arg);
    if (w == NULL) {
        return NULL;
    }
    if (w->flags & W_HEAP) {
        heap_close(w->mark, w->saved_peak);
    }
    w->used = 0;
    Py_RETURN_NONE;
}

static PyObject *ext_window_first_sample(PyObject *self, PyObject *arg)
{
    window_t *w = window_arg(arg);
    return w == NULL ? NULL : PyLong_FromSize_t(w->first_sample);
}

static PyObject *ext_resident_and_anon(PyObject *self, PyObject *unused)
{
    /* (resident bytes, anonymous bytes) now, from the kept-open statm: nothing is reset. */
    if (proc_open() < 0) {
        PyErr_SetString(PyExc_OSError, "/proc/self/statm unavailable");
        return NULL;
    }
    unsigned long long res = 0, shared = 0;
    if (read_statm(proc_statm, &res, &shared) < 0) {
        return NULL;
    }
    return Py_BuildValue("(LL)", (long long)(res * page_size), (long long)((res - shared) * page_size));
}

static PyObject *ext_peak_method(PyObject *self, PyObject *unused)
{
    /* "clear_refs" when the whole-window calls can measure the kernel peak here, else None. */
    if (proc_open() < 0) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromString("clear_refs");
}
#endif

static PyObject *ext_samples(PyObject *self, PyObject *args)
{
    Py_ssize_t first = 0;
    if (!PyArg_ParseTuple(args, "|n", &first)) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    /* Building the list allocates; sampling those allocations could grow (move) the array
       under our feet, so sampling pauses while we read. */
    size_t saved_interval = sample_interval;
    sample_interval = 0;
    size_t n = n_samples;
    for (size_t i = first < 0 ? 0 : (size_t)first; i < n; i++) {
        sample_t *s = &samples[i];
        PyObject *frames = PyTuple_New(s->nframes);
        if (frames == NULL) {
            goto error;
        }
        for (int f = 0; f < s->nframes; f++) {
            const char *file = pool_text(s->file[f]), *func = pool_text(s->func[f]);
            PyObject *filename = PyUnicode_DecodeUTF8(file, (Py_ssize_t)strlen(file), "replace");
            PyObject *name = PyUnicode_DecodeUTF8(func, (Py_ssize_t)strlen(func), "replace");
            if (filename == NULL || name == NULL) {
                Py_XDECREF(filename);
                Py_XDECREF(name);
                Py_DECREF(frames);
                goto error;
            }
            PyObject *item = Py_BuildValue("(NiN)", filename, s->line[f], name);
            if (item == NULL) {
                Py_DECREF(frames);
                goto error;
            }
            PyTuple_SET_ITEM(frames, f, item);
        }
        PyObject *row = Py_BuildValue("(ndiiN)", (Py_ssize_t)s->size, s->weight, s->domain,
                                      s->alive, frames);
        if (row == NULL || PyList_Append(out, row) < 0) {
            Py_XDECREF(row);
            goto error;
        }
        Py_DECREF(row);
    }
    sample_interval = saved_interval;
    return out;
error:
    sample_interval = saved_interval;
    Py_DECREF(out);
    return NULL;
}

static PyObject *ext_set_sampling(PyObject *self, PyObject *arg)
{
    /* Change the sampling interval inside an open window (1 = every allocation: how a leak is
       explained after it was found). Returns the old interval. */
    Py_ssize_t interval = PyLong_AsSsize_t(arg);
    if (interval == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (interval < 0) {
        PyErr_SetString(PyExc_ValueError, "interval must be >= 0");
        return NULL;
    }
    size_t old = sample_interval;
    sample_interval = (size_t)interval;
    countdown = interval ? (int64_t)next_countdown() : 0;
    return PyLong_FromSize_t(old);
}

static PyObject *ext_sample_count(PyObject *self, PyObject *unused)
{
    return PyLong_FromSize_t(n_samples);
}

/* Where an object's memory block starts: GC objects carry a header (and on 3.11+ a pre-header
   for managed dicts and weakrefs) in front of the PyObject. */
static uintptr_t block_start(PyObject *op)
{
    uintptr_t p = (uintptr_t)op;
    if (PyObject_IS_GC(op)) {
        p -= 2 * sizeof(uintptr_t);
#if PY_VERSION_HEX >= 0x030C0000
        if (Py_TYPE(op)->tp_flags & (Py_TPFLAGS_MANAGED_DICT | Py_TPFLAGS_MANAGED_WEAKREF)) {
            p -= 2 * sizeof(PyObject *);
        }
#elif PY_VERSION_HEX >= 0x030B0000
        if (Py_TYPE(op)->tp_flags & Py_TPFLAGS_MANAGED_DICT) {
            p -= 2 * sizeof(PyObject *);
        }
#endif
    }
    return p;
}

static PyObject *ext_block_size(PyObject *self, PyObject *op)
{
    /* Size of the object's block if it was allocated while tracking and is alive, else -1. */
    uintptr_t start = block_start(op);
    for (int d = D_OBJ; d >= D_MEM; d--) {
        size_t size = pagemap_remove(&pagemaps[d], start, 0);
        if (size != 0) {
            return PyLong_FromSize_t(size);
        }
        entry_t *e = table_find(&tables[d], start);
        if (e != NULL) {
            return PyLong_FromSize_t(entry_size(e));
        }
    }
    return PyLong_FromLong(-1);
}

static PyObject *ext_pause(PyObject *self, PyObject *arg)
{
    /* pause(flag) -> the previous flag: whether this thread's allocations are left out. */
    int flag = PyObject_IsTrue(arg);
    if (flag < 0) {
        return NULL;
    }
    int before = paused;
    paused = flag;
    return PyBool_FromLong(before);
}

static PyMethodDef methods[] = {
    {"install", ext_install, METH_NOARGS, "Put the hooks in now (enable() does it anyway)."},
    {"pause", ext_pause, METH_O, "pause(flag) -> previous: leave this thread's allocations out."},
    {"is_installed", ext_is_installed, METH_NOARGS, "True if our hooks are the current ones."},
    {"enable", ext_enable, METH_VARARGS,
     "enable(sample_interval=0, frames=4): clear the tables and start tracking."},
    {"disable", ext_disable, METH_NOARGS, "Stop counting and tracking."},
    {"counters", ext_counters, METH_NOARGS,
     "(allocations, frees, bytes, live_bytes, live_blocks, peak_bytes)."},
    {"since", ext_since, METH_O,
     "(allocations, frees, bytes, live change, block change, peak above the mark, "
     "reallocations of blocks allocated before tracing, their new bytes) since a mark."},
    {"samples", ext_samples, METH_VARARGS,
     "samples(first=0): [(size, weight, domain, alive, ((filename, line, name), ...)), ...]"},
    {"sample_count", ext_sample_count, METH_NOARGS, "Samples taken since enable()."},
    {"set_sampling", ext_set_sampling, METH_O,
     "Set the sampling interval in bytes (1: every allocation); return the old one."},
    {"block_size", ext_block_size, METH_O,
     "Size of the object's block if allocated while tracking and alive, else -1."},
    {"open_window", ext_open_window, METH_VARARGS,
     "open_window(interval, frames) -> (mark, saved peak, first sample, own bytes)."},
    {"close_window", ext_close_window, METH_VARARGS, "close_window(mark, saved peak)."},
    {"own_bytes", ext_own_bytes, METH_NOARGS,
     "(bytes of our own tables and samples now, their peak since enable())."},
#ifdef __linux__
    {"kernel", ext_kernel, METH_VARARGS,
     "kernel(statm_fd, clear_refs_fd): (resident pages, shared pages, ru_maxrss KiB); resets "
     "the peak to the current RSS first when clear_refs_fd >= 0 and the peak is above it."},
    {"count_fds", ext_count_fds, METH_NOARGS, "Open file descriptors (Linux)."},
    {"window", (PyCFunction)(void (*)(void))ext_window, METH_FASTCALL,
     "window(flags, sample_interval=0, frames=4) -> handle; flags 1 heap, 2 kernel, 4 fds, "
     "8 private, 16 retained."},
    {"window_read", ext_window_read, METH_O,
     "(peak, heap_peak, retained, private, rss, allocations, fds, frees, bytes, kernel_peak, "
     "retained_blocks); None where not measured (retained: unless asked for)."},
    {"window_close", ext_window_close, METH_O, "End a window (its heap tracking)."},
    {"window_first_sample", ext_window_first_sample, METH_O, "Index of its first sample."},
    {"resident_and_anon", ext_resident_and_anon, METH_NOARGS,
     "(resident bytes, anonymous bytes) now."},
    {"peak_method", ext_peak_method, METH_NOARGS,
     "'clear_refs' if windows can measure the kernel peak here, else None."},
#endif
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tracemalloc_ext",
                                    "Allocation counts, heap peaks and sampled sites.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__tracemalloc_ext(void)
{
#ifdef Py_GIL_DISABLED
    PyErr_SetString(PyExc_ImportError,
                    "pytest-memguard's allocator hook does not support free-threaded builds yet; "
                    "using the tracemalloc fallback");
    return NULL;
#else
#ifdef __linux__
    static int atfork_registered = 0;
    if (!atfork_registered) {
        atfork_registered = pthread_atfork(NULL, NULL, note_fork) == 0;
    }
#endif
    if (raw_lock == NULL) {
        raw_lock = PyThread_allocate_lock();
        if (raw_lock == NULL) {
            return PyErr_NoMemory();
        }
    }
    return PyModule_Create(&module);
#endif
}
