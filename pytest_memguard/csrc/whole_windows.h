/* Whole windows: heap, kernel peak, fds and private memory in one call (Linux). Included once, by
   allochook.c, which says why the extension is one translation unit. */

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
