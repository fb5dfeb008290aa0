/*
 * _allochook: allocation counts, exact heap peaks and sampled sites on PEP 445 hooks.
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

/* One translation unit, one file per concern: the hooks' common path runs through the table,
 * the page map, the sampler's countdown and the accounting, and is inlined across them (calls
 * and their prologues were a third of the hooks' instructions), which separate objects would
 * prevent without link-time optimisation. Each header holds static definitions and is
 * included once, here, in this order (CPython's Objects/stringlib does the same). */
#include "common.h"
#include "table.h"
#include "pagemap.h"
#include "sampler.h"
#include "accounting.h"
#include "hooks.h"
#include "proc.h"
#include "resident_sampler.h"
#include "tracking.h"
#include "heap_windows.h"
#include "whole_windows.h"

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

static PyObject *ext_concurrency(PyObject *self, PyObject *unused)
{
    return PyLong_FromSize_t(LOAD(concurrent_events));
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
    /* Size of the object's block if it was allocated while tracking (or by the hook itself:
       made_in_hook) and is alive, else -1. */
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
    entry_t *e = table_find(&made_in_hook, start);
    return e != NULL ? PyLong_FromSize_t(e->size) : PyLong_FromLong(-1);
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

static PyObject *ext_watch_opens(PyObject *self, PyObject *arg)
{
    /* watch_opens(callable): call it with each "open" audit event's (path, mode, flags). */
    if (!PyCallable_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "watch_opens() takes a callable");
        return NULL;
    }
    Py_INCREF(arg);
    Py_XSETREF(open_watcher, arg);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"install", ext_install, METH_NOARGS, "Put the hooks in now (enable() does it anyway)."},
    {"pause", ext_pause, METH_O, "pause(flag) -> previous: leave this thread's allocations out."},
    {"watch_opens", ext_watch_opens, METH_O,
     "watch_opens(callable): called with each open audit event's (path, mode, flags), its "
     "allocations left out of every window."},
    {"is_installed", ext_is_installed, METH_NOARGS, "True if our hooks are the current ones."},
    {"enable", ext_enable, METH_VARARGS,
     "enable(sample_interval=0, frames=4): clear the tables and start tracking."},
    {"disable", ext_disable, METH_NOARGS, "Stop counting and tracking."},
    {"counters", ext_counters, METH_NOARGS,
     "(allocations, frees, bytes, live_bytes, live_blocks, peak_bytes)."},
    {"since", ext_since, METH_O,
     "(allocations, frees, bytes, live change, block change, peak above the mark, "
     "reallocations of blocks allocated before tracing, their new bytes, frees of such blocks) "
     "since a mark."},
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
    {"leave_out_threads", ext_leave_out_threads, METH_NOARGS,
     "Leave every thread alive now but the caller's out of every later window; -> how many."},
    {"concurrency", ext_concurrency, METH_NOARGS,
     "Allocations of other threads than a window's own, and processes started in one, so far."},
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
#ifdef HAVE_RESIDENT_SAMPLER
    {"sampler_new", ext_sampler_new, METH_NOARGS,
     "A sampler of this process's resident size (a C thread once started), or None where it "
     "cannot be read."},
    {"sampler_start", ext_sampler_start, METH_O,
     "Read the resident size every millisecond until sampler_stop()."},
    {"sampler_stop", ext_sampler_stop, METH_O, "Stop the sampler's thread."},
    {"sampler_reset", ext_sampler_reset, METH_O, "Its high mark is the resident size now."},
    {"sampler_high", ext_sampler_high, METH_O, "The highest resident size it read, in bytes."},
#endif
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_allochook",
                                    "Allocation counts, heap peaks and sampled sites.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__allochook(void)
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
    static int audit_hooked = 0;
    if (!audit_hooked) {
        /* Refused only when another hook objects; then processes go unseen, nothing worse. */
        audit_hooked = PySys_AddAuditHook(note_event, NULL) == 0;
        PyErr_Clear();
    }
    if (raw_lock == NULL) {
        raw_lock = PyThread_allocate_lock();
        if (raw_lock == NULL) {
            return PyErr_NoMemory();
        }
    }
    return PyModule_Create(&module);
#endif
}
