/* Heap windows: open and close in one call each. Included once, by allochook.c, which says why
   the extension is one translation unit. */

/* ---------------------------------------------------------------- windows

   What a measured window does at its ends, in one call each: on a suite of millisecond tests
   the Python-level version (list the other threads, enable, swap the peak, read the sample
   count and our own bytes, take a mark; the reverse at the end) was a third of the plugin's
   cost per test, most of it spent on objects made only to be thrown away. */

static int window_depth = 0;

static int is_left_out(uint64_t id)
{
    for (int i = 0; i < n_left_out; i++) {
        if (left_out[i] == id) {
            return 1;
        }
    }
    return 0;
}

/* The calling thread opens the window; the run's threads (left_out) alive now are excluded
   from it, and the ids of those that ended are forgotten. */
static int exclude_other_threads(void)
{
    PyThreadState *me = current_tstate();
    if (me == NULL) {
        return 0;
    }
    unsigned long my_ident = PyThread_get_thread_ident();
    STORE(window_thread, my_ident);
    int n = 0;
    uint64_t alive[MAX_EXCLUDED];
    PyThreadState *t = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(me));
    for (; t != NULL && n < MAX_EXCLUDED; t = PyThreadState_Next(t)) {
        uint64_t id = PyThreadState_GetID(t);
        if (t != me && t->thread_id != my_ident && is_left_out(id)) {
            excluded[n] = t->thread_id;
            alive[n++] = id;
        }
    }
    memcpy(left_out, alive, (size_t)n * sizeof(uint64_t));
    n_left_out = n;
    __atomic_store_n(&n_excluded, n, __ATOMIC_RELEASE);
    return n;
}

static PyObject *ext_leave_out_threads(PyObject *self, PyObject *args)
{
    /* leave_out_threads() -> how many: every thread alive now but the caller's is the run's,
       left out of every window from now on. */
    PyThreadState *me = current_tstate();
    if (me == NULL) {
        return PyLong_FromLong(0);
    }
    PyThreadState *t = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(me));
    for (; t != NULL && n_left_out < MAX_EXCLUDED; t = PyThreadState_Next(t)) {
        uint64_t id = PyThreadState_GetID(t);
        if (t != me && !is_left_out(id)) {
            left_out[n_left_out++] = id;
        }
    }
    return PyLong_FromLong(n_left_out);
}


/* Open a heap window, all but its mark: the outermost one excludes the run's threads and
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
    else if (interval > 0 && sample_interval == 0) {
        /* An inner window that will ask for sites, in one that would not (a user's
           measure() in a test with a baseline): sampling starts now and stays on until the
           outermost window closes. */
        sample_interval = (size_t)interval;
        max_frames = frames;
        countdown = (int64_t)next_countdown();
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
