/* The PEP 445 hook functions. Included once, by allochook.c, which says why the extension is one
   translation unit. */

/* ---------------------------------------------------------------- hooks */

/* The rest of an allocating hook once the real allocator returned ``ptr``: count the call,
   trace the block, leave the hook. */
HOT void *traced(int domain, int role, void *ptr, size_t size)
{
    if (role == COUNTED) {
        count_call(domain, 1, size);
    }
    else {
        ADD(concurrent_events, 1);
    }
    if (ptr != NULL) {
        note_alloc(domain, ptr, size);
    }
    in_hook = 0;
    return ptr;
}

/* A block allocated past the hook's accounting; remembered when the hook itself made it (see
   made_in_hook). */
static inline void *made_untraced(int domain, void *ptr, size_t size)
{
    if (in_hook && ptr != NULL && domain != D_RAW && LOAD(enabled) &&
        table_insert(&made_in_hook, (uintptr_t)ptr, size < HUGE_SIZE ? size : 0, -1) < 0) {
        table_failed = 1;
    }
    return ptr;
}

/* The hooks take their domain as a constant (one instance of each per domain, made by
   DOMAIN_HOOKS below) rather than from ``ctx``: every table, counter and branch on the domain
   is then resolved when compiling: a fifth fewer instructions in the hooks on dateutil's tzdata
   slice (benchmarks/hook_slice.py under cachegrind: 206 to 160 million). */
HOT void *hook_malloc(int domain, size_t size)
{
    PyMemAllocatorEx *o = &orig[domain];
    int role;
    if (!LOAD(enabled) || in_hook || (role = thread_role()) == IGNORED) {
        return made_untraced(domain, o->malloc(o->ctx, size), size);
    }
    in_hook = 1;
    return traced(domain, role, o->malloc(o->ctx, size), size);
}

HOT void *hook_calloc(int domain, size_t nelem, size_t elsize)
{
    PyMemAllocatorEx *o = &orig[domain];
    int role;
    if (!LOAD(enabled) || in_hook || (role = thread_role()) == IGNORED) {
        return made_untraced(domain, o->calloc(o->ctx, nelem, elsize), nelem * elsize);
    }
    in_hook = 1;
    size_t size = (elsize && nelem > SIZE_MAX / elsize) ? SIZE_MAX : nelem * elsize;
    return traced(domain, role, o->calloc(o->ctx, nelem, elsize), size);
}

HOT void *hook_realloc(int domain, void *old, size_t size)
{
    PyMemAllocatorEx *o = &orig[domain];
    if (!LOAD(enabled) || in_hook) {
        return o->realloc(o->ctx, old, size);
    }
    in_hook = 1;
    int role = thread_role();
    void *ptr = o->realloc(o->ctx, old, size);
    if (role == COUNTED) {
        count_call(domain, 1, size);
    }
    else if (role == TRACKED) {
        ADD(concurrent_events, 1);
    }
    if (ptr != NULL) {
        /* The old block is gone (or reused in place): forget it, then trace the new one. */
        int untraced = old != NULL && !note_free(domain, old);
        if (role != IGNORED) {
            note_alloc(domain, ptr, size);
            if (untraced && domain == D_RAW) {
                ADD(old_reallocs_raw, 1);
                ADD(old_realloc_bytes_raw, size);
                ADD(old_frees_raw, 1);
            }
            else if (untraced) {
                old_reallocs_gil++;
                old_realloc_bytes_gil += size;
                old_frees_gil++;
            }
        }
    }
    in_hook = 0;
    return ptr;
}

static inline int forget_made_in_hook(void *ptr)
{
    size_t size;
    int32_t sample;
    return made_in_hook.used != 0 && table_remove(&made_in_hook, (uintptr_t)ptr, &size, &sample);
}

HOT void hook_free(int domain, void *ptr)
{
    PyMemAllocatorEx *o = &orig[domain];
    if (!LOAD(enabled) || in_hook) {
        o->free(o->ctx, ptr);
        return;
    }
    in_hook = 1;
    int role = thread_role();
    if (role == COUNTED) {
        count_call(domain, 0, 0);
    }
    if (ptr != NULL && !note_free(domain, ptr) && role != IGNORED) {
        if (domain == D_RAW) {
            ADD(old_frees_raw, 1);
        }
        else if (!forget_made_in_hook(ptr)) {
            old_frees_gil++;
        }
    }
    o->free(o->ctx, ptr);
    in_hook = 0;
}

#define DOMAIN_HOOKS(name, domain)                                                          \
    static void *hook_malloc_##name(void *ctx, size_t size)                                 \
    {                                                                                       \
        return hook_malloc(domain, size);                                                   \
    }                                                                                       \
    static void *hook_calloc_##name(void *ctx, size_t nelem, size_t elsize)                 \
    {                                                                                       \
        return hook_calloc(domain, nelem, elsize);                                          \
    }                                                                                       \
    static void *hook_realloc_##name(void *ctx, void *old, size_t size)                     \
    {                                                                                       \
        return hook_realloc(domain, old, size);                                             \
    }                                                                                       \
    static void hook_free_##name(void *ctx, void *ptr)                                      \
    {                                                                                       \
        hook_free(domain, ptr);                                                             \
    }
DOMAIN_HOOKS(raw, D_RAW)
DOMAIN_HOOKS(mem, D_MEM)
DOMAIN_HOOKS(obj, D_OBJ)

/* Our allocators as hooks_in installs them, by domain (ctx: the domain, for nothing but
   telling them apart in a debugger). */
static const PyMemAllocatorEx hook_of[N_DOMAINS] = {
    {(void *)(intptr_t)D_RAW, hook_malloc_raw, hook_calloc_raw, hook_realloc_raw, hook_free_raw},
    {(void *)(intptr_t)D_MEM, hook_malloc_mem, hook_calloc_mem, hook_realloc_mem, hook_free_mem},
    {(void *)(intptr_t)D_OBJ, hook_malloc_obj, hook_calloc_obj, hook_realloc_obj, hook_free_obj},
};

/* ---------------------------------------------------------------- audit events

   Every way CPython starts a process raises one of these audit events (PEP 578) in the thread
   that starts it. An audit hook cannot be removed, so it stays as cheap as a hook can be while
   no window is open and nobody watches opens: two loads. The tracemalloc fallback watches the
   same events (_STARTS in fallback.py): keep them alike. */

static const char *const process_events[] = {"subprocess.Popen", "os.fork",  "os.forkpty",
                                             "os.posix_spawn",   "os.spawn", "os.system",
                                             "os.startfile",     NULL};

/* watch_opens(): called with each "open" event's arguments (path, mode, flags), its own
   allocations left out of every window. A Python audit hook would be called for every event
   instead, and some are frequent: 1.1 million `builtins.id` in a leak check of toolz, 10% of
   its time. */
static PyObject *open_watcher = NULL;

static void watch_open(PyObject *args)
{
    int before = paused;
    paused = 1;
    PyObject *result = PyObject_Call(open_watcher, args, NULL);
    paused = before;
    if (result == NULL) {
        PyErr_Clear(); /* the watcher's trouble must never fail the program's open() */
    }
    Py_XDECREF(result);
}

static int note_event(const char *event, PyObject *args, void *data)
{
    if (event[0] == 'o' && open_watcher != NULL && strcmp(event, "open") == 0) {
        watch_open(args);
        return 0;
    }
    if (!LOAD(enabled) || (event[0] != 's' && event[0] != 'o')) {
        return 0;
    }
    for (const char *const *name = process_events; *name != NULL; name++) {
        if (strcmp(event, *name) == 0) {
            ADD(concurrent_events, 1);
            break;
        }
    }
    return 0;
}
