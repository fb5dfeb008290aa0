/* The resident-size sampler thread. Included once, by allochook.c, which says why the extension
   is one translation unit. */

/* ---------------------------------------------------------------- resident sampler

   Where the kernel keeps no peak that a window can reset (macOS; Linux where clear_refs cannot
   be written), a window's peak is the highest resident size read every millisecond. It is read
   from a C thread that never touches the interpreter. A Python thread waits for the GIL, so it
   missed what a test allocated and freed within one stretch of C code; and what it allocated
   itself moved the collector's counts, so the test's own thread collected at other moments and
   its count moved by a call or two (a test in a spawned child, alone and after another). */

#if defined(__linux__) || defined(__APPLE__)
#define HAVE_RESIDENT_SAMPLER 1
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#ifdef __APPLE__
#include <mach/mach.h>
#endif

static pthread_t sampler_thread;
static pid_t sampler_pid = 0;   /* the process whose thread it is; 0: none (a forked child has none) */
static int sampler_stop = 0;
static size_t sampler_high = 0;
/* Bumped by a reset: a reading taken before it must not land after it. */
static unsigned long sampler_generation = 0;
#ifdef __linux__
static int sampler_statm = -1;
static pid_t sampler_statm_pid = 0;
#endif

/* The resident size now, in bytes (what psutil reports as rss); 0 if it cannot be read. */
static size_t resident_now(void)
{
#ifdef __APPLE__
    mach_task_basic_info_data_t info;
    mach_msg_type_number_t count = MACH_TASK_BASIC_INFO_COUNT;
    if (task_info(mach_task_self(), MACH_TASK_BASIC_INFO, (task_info_t)&info, &count) !=
        KERN_SUCCESS) {
        return 0;
    }
    return (size_t)info.resident_size;
#else
    char buf[128];
    ssize_t n = pread(sampler_statm, buf, sizeof(buf) - 1, 0);
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

static void *sampler_loop(void *unused)
{
    (void)unused;
    struct timespec interval = {0, 1000000};
    while (!__atomic_load_n(&sampler_stop, __ATOMIC_SEQ_CST)) {
        unsigned long generation = __atomic_load_n(&sampler_generation, __ATOMIC_SEQ_CST);
        size_t now = resident_now();
        size_t high = __atomic_load_n(&sampler_high, __ATOMIC_SEQ_CST);
        while (now > high && __atomic_load_n(&sampler_generation, __ATOMIC_SEQ_CST) == generation &&
               !__atomic_compare_exchange_n(&sampler_high, &high, now, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST)) {
        }
        nanosleep(&interval, NULL);
    }
    return NULL;
}

/* Opened before any window, and kept: a descriptor opened inside one would count as the
   test's. /proc/self is resolved when opened, so a forked child opens its own. */
static int sampler_prepare(void)
{
#ifdef __linux__
    pid_t pid = getpid();
    if (sampler_statm >= 0 && sampler_statm_pid == pid) {
        return 0;
    }
    if (sampler_statm >= 0) {
        close(sampler_statm);
    }
    sampler_statm = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    sampler_statm_pid = pid;
    return sampler_statm >= 0 ? 0 : -1;
#else
    return 0;
#endif
}

static PyObject *ext_sampler_prepare(PyObject *self, PyObject *unused)
{
    if (sampler_prepare() < 0 || resident_now() == 0) {
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyObject *ext_sampler_start(PyObject *self, PyObject *unused)
{
    pid_t pid = getpid();
    if (sampler_pid == pid) {
        Py_RETURN_NONE;
    }
    if (sampler_prepare() < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    __atomic_store_n(&sampler_stop, 0, __ATOMIC_SEQ_CST);
    int err = pthread_create(&sampler_thread, NULL, sampler_loop, NULL);
    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    sampler_pid = pid;
    Py_RETURN_NONE;
}

static PyObject *ext_sampler_stop(PyObject *self, PyObject *unused)
{
    if (sampler_pid == getpid()) {
        __atomic_store_n(&sampler_stop, 1, __ATOMIC_SEQ_CST);
        pthread_join(sampler_thread, NULL);
    }
    sampler_pid = 0;
    Py_RETURN_NONE;
}

static PyObject *ext_sampler_reset(PyObject *self, PyObject *unused)
{
    if (sampler_prepare() < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    __atomic_add_fetch(&sampler_generation, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&sampler_high, resident_now(), __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *ext_sampler_high(PyObject *self, PyObject *unused)
{
    return PyLong_FromSize_t(__atomic_load_n(&sampler_high, __ATOMIC_SEQ_CST));
}
#endif
