/* The shared state: types, macros, counters, whose thread counts, our own bytes. Included once,
   by allochook.c, which says why the extension is one translation unit. */

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
#error "_allochook needs GCC or Clang atomics; pytest-memguard falls back to tracemalloc"
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
static const PyMemAllocatorDomain domains[N_DOMAINS] = {PYMEM_DOMAIN_RAW, PYMEM_DOMAIN_MEM,
                                                      PYMEM_DOMAIN_OBJ};
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
/* Our hooks as installed over orig[] (hooks_in copies hooks.h's hook_of here); until then all
   NULL, which no installed allocator's malloc is, so nothing is ours. A copy rather than
   hook_of itself because the sampler, included before hooks.h, asks hook_outermost. */
static PyMemAllocatorEx ours[N_DOMAINS];

/* Whether our hook is the outermost allocator of ``domain``: someone may have wrapped it since
   (tracemalloc started inside a window), and then it must neither be taken out (which would cut
   them off) nor walk the stack (see take_sample). */
static int hook_outermost(int domain)
{
    PyMemAllocatorEx now;
    PyMem_GetAllocator(domains[domain], &now);
    return now.malloc == ours[domain].malloc && now.ctx == ours[domain].ctx;
}

static int hooks_current(void)
{
    for (int d = 0; d < N_DOMAINS; d++) {
        if (!hook_outermost(d)) {
            return 0;
        }
    }
    return 1;
}

/* Whose allocations are the test's. The thread that opened the outermost window is the test's
   own: its calls are counted and its blocks tracked. Threads alive when the session's tests
   began to run (xdist's execnet I/O thread, other plugins' threads) are left out: they are the
   run's, not the suite's, and allocate at random moments. Every other thread is doing the
   suite's work: one the test starts, or a pool or server an earlier test or a fixture started
   and this test hands work to (asgiref runs sync code on an executor thread that outlives the
   test that started it; leaving such threads out missed 20 of 51 injected regressions). Their
   blocks are tracked, as they hold the test's memory, but how many calls they make depends on
   how the scheduler interleaves them (a cache cleared under concurrent readers refills once or
   three times), so they are not counted: a count is a property of the test only on its own
   thread. Frees from any thread untrack blocks, so live bytes stay exact. */
#define MAX_EXCLUDED 64
static unsigned long excluded[MAX_EXCLUDED];
static int n_excluded = 0;
static unsigned long window_thread = 0; /* 0: no window, every thread counts */
/* The run's threads (above), by thread-state id: unlike a thread's ident, never reused by a
   later thread. Ids of threads that ended are dropped when a window opens. */
static uint64_t left_out[MAX_EXCLUDED];
static int n_left_out = 0;

enum { COUNTED, TRACKED, IGNORED };

/* Evidence that a window ran work concurrently with the test's own thread: allocations of
   threads it started, and processes it started (an audit hook, below). What such a test
   allocates on its own thread depends on the scheduler (how often it polls a pipe or waits on
   a future), so its count is no property of the test. Monotonic; Python takes differences. */
static size_t concurrent_events = 0;
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
/* This thread's ident, asked for once: every allocator call in a window needs it, and the calls
   into the interpreter for it were a tenth of the hooks' instructions (callgrind, a loop of
   small allocations). A forked child's thread keeps its ident, as CPython's does. */
static __thread unsigned long my_ident FAST_TLS = 0;

static inline int other_thread_role(void)
{
    unsigned long owner = LOAD(window_thread);
    int n = LOAD(n_excluded);
    if (owner == 0 && n == 0) {
        return COUNTED;
    }
    unsigned long me = my_ident;
    if (me == 0) {
        me = my_ident = PyThread_get_thread_ident();
    }
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
/* Blocks the tables do not know that were freed or moved by a reallocation: the live-block
   count less these is the net change, the figure CPython's -R judges (sys.getallocatedblocks).
   Without it, a bounded cache that replaces entries made before a leak check reads as growth
   until every old entry is gone: a class-level lru_cache of jsonschema's took over 256 runs.
   Their sizes are unknown (the allocator does not say), so the byte figure cannot be made net
   the same way: the leak check says what it does instead. */
static Py_ssize_t old_frees_gil, old_frees_raw;
static size_t peak;

static table_t tables[N_DOMAINS];
/* Python objects made inside the hook (the frame objects a sample's stack walk creates), which
   pass through untraced: their frees are not frees of blocks older than the window (without
   this, each sample taken in a leak check's run read as a few old blocks freed), and they are
   new objects of the window (a frame the walk made is the one a traceback then keeps). The
   sampler runs with the GIL, so only the GIL domains make these. */
static table_t made_in_hook;
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
