/* The PEP 445 hook functions. Included once, by allochook.c, which says why the extension is one
   translation unit. */

/* ---------------------------------------------------------------- hooks */

#define DOMAIN(ctx) ((int)(intptr_t)(ctx))

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

static void *hook_malloc(void *ctx, size_t size)
{
    PyMemAllocatorEx *o = &orig[DOMAIN(ctx)];
    int role;
    if (!LOAD(enabled) || in_hook || (role = thread_role()) == IGNORED) {
        return made_untraced(DOMAIN(ctx), o->malloc(o->ctx, size), size);
    }
    in_hook = 1;
    return traced(DOMAIN(ctx), role, o->malloc(o->ctx, size), size);
}

static void *hook_calloc(void *ctx, size_t nelem, size_t elsize)
{
    PyMemAllocatorEx *o = &orig[DOMAIN(ctx)];
    int role;
    if (!LOAD(enabled) || in_hook || (role = thread_role()) == IGNORED) {
        return made_untraced(DOMAIN(ctx), o->calloc(o->ctx, nelem, elsize), nelem * elsize);
    }
    in_hook = 1;
    size_t size = (elsize && nelem > SIZE_MAX / elsize) ? SIZE_MAX : nelem * elsize;
    return traced(DOMAIN(ctx), role, o->calloc(o->ctx, nelem, elsize), size);
}

static void *hook_realloc(void *ctx, void *old, size_t size)
{
    PyMemAllocatorEx *o = &orig[DOMAIN(ctx)];
    if (!LOAD(enabled) || in_hook) {
        return o->realloc(o->ctx, old, size);
    }
    in_hook = 1;
    int role = thread_role();
    void *ptr = o->realloc(o->ctx, old, size);
    if (role == COUNTED) {
        count_call(DOMAIN(ctx), 1, size);
    }
    else if (role == TRACKED) {
        ADD(concurrent_events, 1);
    }
    if (ptr != NULL) {
        /* The old block is gone (or reused in place): forget it, then trace the new one. */
        int untraced = old != NULL && !note_free(DOMAIN(ctx), old);
        if (role != IGNORED) {
            note_alloc(DOMAIN(ctx), ptr, size);
            if (untraced && DOMAIN(ctx) == D_RAW) {
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

static void hook_free(void *ctx, void *ptr)
{
    PyMemAllocatorEx *o = &orig[DOMAIN(ctx)];
    if (!LOAD(enabled) || in_hook) {
        o->free(o->ctx, ptr);
        return;
    }
    in_hook = 1;
    int role = thread_role();
    if (role == COUNTED) {
        count_call(DOMAIN(ctx), 0, 0);
    }
    if (ptr != NULL && !note_free(DOMAIN(ctx), ptr) && role != IGNORED) {
        if (DOMAIN(ctx) == D_RAW) {
            ADD(old_frees_raw, 1);
        }
        else if (!forget_made_in_hook(ptr)) {
            old_frees_gil++;
        }
    }
    o->free(o->ctx, ptr);
    in_hook = 0;
}

/* ---------------------------------------------------------------- processes started

   Every way CPython starts a process raises one of these audit events (PEP 578) in the thread
   that starts it. An audit hook cannot be removed, so it stays as cheap as a hook can be while
   no window is open: one load. The tracemalloc fallback watches the same events (_STARTS in
   fallback.py): keep them alike. */

static const char *const process_events[] = {"subprocess.Popen", "os.fork",  "os.forkpty",
                                             "os.posix_spawn",   "os.spawn", "os.system",
                                             "os.startfile",     NULL};

static int note_process_start(const char *event, PyObject *args, void *data)
{
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
