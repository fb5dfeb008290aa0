/* Switching tracking on and off; counters and marks. Included once, by allochook.c, which says
   why the extension is one translation unit. */

/* ---------------------------------------------------------------- tracking, counters, marks */

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
        ours[d] = hook_of[d];
        PyMem_SetAllocator(domains[d], &ours[d]);
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
    table_clear(&made_in_hook);
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
    Py_ssize_t blocks, old_reallocs, old_frees;
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
            marks[i].old_frees = old_frees_gil + LOAD(old_frees_raw);
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
       reallocations of blocks allocated before tracing, the new sizes of those, frees of such
       blocks including those reallocations),
       all read before the result tuple is allocated. */
    size_t allocs = n_alloc_gil + LOAD(n_alloc_raw);
    size_t frees = n_free_gil + LOAD(n_free_raw);
    size_t bytes = bytes_gil + LOAD(bytes_raw);
    size_t live = LOAD(live_gil) + LOAD(live_raw);
    Py_ssize_t blocks = blocks_gil + LOAD(blocks_raw);
    Py_ssize_t old_reallocs = old_reallocs_gil + LOAD(old_reallocs_raw);
    size_t old_realloc_bytes = old_realloc_bytes_gil + LOAD(old_realloc_bytes_raw);
    Py_ssize_t old_frees = old_frees_gil + LOAD(old_frees_raw);
    size_t pk = LOAD(peak);
    long i = PyLong_AsLong(arg);
    if (i < 0 || i >= MAX_MARKS || !marks[i].used) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "not an open mark");
        }
        return NULL;
    }
    mark_t *m = &marks[i];
    return Py_BuildValue("(nnnnnnnnn)", (Py_ssize_t)(allocs - m->allocs),
                         (Py_ssize_t)(frees - m->frees), (Py_ssize_t)(bytes - m->bytes),
                         (Py_ssize_t)live - (Py_ssize_t)m->live, blocks - m->blocks,
                         pk > m->live ? (Py_ssize_t)(pk - m->live) : (Py_ssize_t)0,
                         old_reallocs - m->old_reallocs,
                         (Py_ssize_t)(old_realloc_bytes - m->old_realloc_bytes),
                         old_frees - m->old_frees);
}
