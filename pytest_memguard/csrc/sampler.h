/* Byte-proportional sampling of allocation sites and the pool of their names. Included once, by
   allochook.c, which says why the extension is one translation unit. */

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
   arbitrary allocator call: the collector is paused around the walk.
   The stack is left empty when another allocator wraps ours: it may be calling us with its own
   lock held, and a new object passes back through it. tracemalloc does both: it allocates its
   tables through the RAW allocator it found (ours) under the lock that its hook on every new
   object takes, so the frame object made here waited on that lock for ever. */
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
    if (ts != NULL && hook_outermost(domain)) {
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
