/* Resident-size samplers, each a C thread. Included once, by allochook.c, which says why the
   extension is one translation unit. */

/* ---------------------------------------------------------------- resident samplers

   Where the kernel keeps no peak that a window can reset (macOS; Linux where clear_refs cannot
   be written), a window's peak is the highest resident size read every millisecond. It is read
   from a C thread that never touches the interpreter. A Python thread waits for the GIL, so it
   missed what a test allocated and freed within one call into C; and what it allocated itself
   moved the collector's counts, so the test's own thread collected at other moments and its
   count moved by a call or two (a test in a spawned child, alone and after another).

   Each sampler is its own object (a capsule) with its own thread and high mark, so that one
   user's reset or stop never touches another's. */

#if defined(__linux__) || defined(__APPLE__)
#define HAVE_RESIDENT_SAMPLER 1
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#ifdef __APPLE__
#include <mach/mach.h>
#endif

typedef struct {
    pthread_t thread;
    pid_t pid;                /* the process whose thread runs; 0: none (a forked child has none) */
    int stop;
    size_t high;
    unsigned long generation; /* bumped by a reset: a reading taken before it must not land after */
    int statm;                /* Linux: /proc/self/statm of ``statm_pid``, opened before any window */
    pid_t statm_pid;
} rss_sampler_t;

#define SAMPLER_CAPSULE "pytest_memguard._allochook.sampler"

/* The resident size now, in bytes (what psutil reports as rss); 0 if it cannot be read. */
static size_t resident_now(rss_sampler_t *s)
{
#ifdef __APPLE__
    (void)s;
    mach_task_basic_info_data_t info;
    mach_msg_type_number_t count = MACH_TASK_BASIC_INFO_COUNT;
    if (task_info(mach_task_self(), MACH_TASK_BASIC_INFO, (task_info_t)&info, &count) !=
        KERN_SUCCESS) {
        return 0;
    }
    return (size_t)info.resident_size;
#else
    char buf[128];
    ssize_t n = pread(s->statm, buf, sizeof(buf) - 1, 0);
    if (n <= 0) {
        return 0;
    }
    buf[n] = 0;
    unsigned long long size = 0, resident = 0;
    const char *p = parse_ull(buf, &size);
    if (p == NULL || parse_ull(p, &resident) == NULL) {
        return 0;
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
#endif
}

/* /proc/self is resolved when opened: a forked child opens its own (a close and an open, so
   a window's descriptor count does not move). 0, or -1 where it cannot be opened. */
static int sampler_own_statm(rss_sampler_t *s)
{
#ifdef __linux__
    pid_t pid = getpid();
    if (s->statm >= 0 && s->statm_pid == pid) {
        return 0;
    }
    if (s->statm >= 0) {
        close(s->statm);
    }
    s->statm = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    s->statm_pid = pid;
    return s->statm >= 0 ? 0 : -1;
#else
    (void)s;
    return 0;
#endif
}

static void *sampler_loop(void *arg)
{
    rss_sampler_t *s = (rss_sampler_t *)arg;
    struct timespec interval = {0, 1000000};
    while (!__atomic_load_n(&s->stop, __ATOMIC_SEQ_CST)) {
        unsigned long generation = __atomic_load_n(&s->generation, __ATOMIC_SEQ_CST);
        size_t now = resident_now(s);
        size_t high = __atomic_load_n(&s->high, __ATOMIC_SEQ_CST);
        while (now > high && __atomic_load_n(&s->generation, __ATOMIC_SEQ_CST) == generation &&
               !__atomic_compare_exchange_n(&s->high, &high, now, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST)) {
        }
        nanosleep(&interval, NULL);
    }
    return NULL;
}

static void sampler_halt(rss_sampler_t *s)
{
    if (s->pid == getpid()) {
        __atomic_store_n(&s->stop, 1, __ATOMIC_SEQ_CST);
        pthread_join(s->thread, NULL);
    }
    s->pid = 0;
}

static void sampler_destroy(PyObject *capsule)
{
    rss_sampler_t *s = (rss_sampler_t *)PyCapsule_GetPointer(capsule, SAMPLER_CAPSULE);
    if (s == NULL) {
        PyErr_Clear();
        return;
    }
    sampler_halt(s);
    if (s->statm >= 0) {
        close(s->statm);
    }
    free(s);
}

static rss_sampler_t *sampler_of(PyObject *capsule)
{
    return (rss_sampler_t *)PyCapsule_GetPointer(capsule, SAMPLER_CAPSULE);
}

static PyObject *ext_sampler_new(PyObject *self, PyObject *unused)
{
    rss_sampler_t *s = (rss_sampler_t *)calloc(1, sizeof(rss_sampler_t));
    if (s == NULL) {
        return PyErr_NoMemory();
    }
    s->statm = -1;
    if (sampler_own_statm(s) < 0 || resident_now(s) == 0) {
        if (s->statm >= 0) {
            close(s->statm);
        }
        free(s);
        Py_RETURN_NONE;
    }
    PyObject *capsule = PyCapsule_New(s, SAMPLER_CAPSULE, sampler_destroy);
    if (capsule == NULL) {
        if (s->statm >= 0) {
            close(s->statm);
        }
        free(s);
    }
    return capsule;
}

static PyObject *ext_sampler_start(PyObject *self, PyObject *capsule)
{
    rss_sampler_t *s = sampler_of(capsule);
    if (s == NULL) {
        return NULL;
    }
    pid_t pid = getpid();
    if (s->pid == pid) {
        Py_RETURN_NONE;
    }
    if (sampler_own_statm(s) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    __atomic_store_n(&s->stop, 0, __ATOMIC_SEQ_CST);
    int err = pthread_create(&s->thread, NULL, sampler_loop, s);
    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    s->pid = pid;
    Py_RETURN_NONE;
}

static PyObject *ext_sampler_stop(PyObject *self, PyObject *capsule)
{
    rss_sampler_t *s = sampler_of(capsule);
    if (s == NULL) {
        return NULL;
    }
    sampler_halt(s);
    Py_RETURN_NONE;
}

static PyObject *ext_sampler_reset(PyObject *self, PyObject *capsule)
{
    rss_sampler_t *s = sampler_of(capsule);
    if (s == NULL) {
        return NULL;
    }
    if (sampler_own_statm(s) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    __atomic_add_fetch(&s->generation, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&s->high, resident_now(s), __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *ext_sampler_high(PyObject *self, PyObject *capsule)
{
    rss_sampler_t *s = sampler_of(capsule);
    if (s == NULL) {
        return NULL;
    }
    return PyLong_FromSize_t(__atomic_load_n(&s->high, __ATOMIC_SEQ_CST));
}
#endif
