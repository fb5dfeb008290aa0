/* The kernel bracket: /proc readers and the fd count (Linux). Included once, by allochook.c,
   which says why the extension is one translation unit. */

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

/* Kept open for the whole windows (see whole_windows.h): statm and status for reading,
   clear_refs for resetting the peak. */
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

/* After a fork every kept /proc fd still describes the parent. */
static void proc_after_fork(void)
{
    if (forked) {
        forked = 0;
        proc_close_all();
    }
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
