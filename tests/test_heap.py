"""The allocator hook (and its tracemalloc fallback) through the public API."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import weakref
from typing import Any

import pytest

import pytest_memguard as pm
from pytest_memguard.census import Frame, aggregate_sites
from pytest_memguard.fallback import TracemallocBackend
from pytest_memguard.heap import ExtBackend
from pytest_memguard.measurement import get_engine, load_backend

MiB = 2**20
HOOK = isinstance(get_engine().heap, ExtBackend)
needs_hook = pytest.mark.skipif(not HOOK, reason="allocator hook extension not built")


def fill(slots: list[object], n: int) -> None:
    for i in range(n):
        slots[i] = bytearray(1000)


@needs_hook
def test_empty_block_counts_zero() -> None:
    for _ in range(3):
        with pm.count_allocations() as c:
            pass
    assert (c.allocations, c.bytes, c.heap_peak) == (0, 0, 0)


@needs_hook
def test_exact_counts_for_a_known_sequence() -> None:
    slots: list[object] = [None] * 40
    fill(slots, 40)  # warm up
    results = {}
    for n in (10, 20, 40):
        slots = [None] * 40
        with pm.count_allocations() as c:
            fill(slots, n)
        results[n] = c
    # Each bytearray(1000) is exactly two allocator calls: the object and its buffer.
    assert results[20].allocations - results[10].allocations == 20  # type: ignore[operator]
    assert results[40].allocations - results[20].allocations == 40  # type: ignore[operator]
    assert results[40].bytes - results[20].bytes >= 20 * 1000  # type: ignore[operator]


@needs_hook
def test_heap_peak_within_one_percent() -> None:
    with pm.count_allocations() as c:
        buffer = bytearray(25 * MiB)
        del buffer
    assert c.heap_peak is not None
    assert abs(c.heap_peak - 25 * MiB) <= 0.01 * 25 * MiB


@needs_hook
def test_frees_of_blocks_older_than_the_window_are_counted_not_the_samplers_frames() -> None:
    """The ninth figure of ``since``: blocks allocated before the window and freed in it. The
    frame objects a sample's stack walk makes are allocated inside the hook, untraced; their
    frees are not old blocks (they were, every few runs of a leak check that sampled)."""
    import gc

    import pytest_memguard._allochook as ext

    def deep(n: int) -> list[bytes]:
        return deep(n - 1) if n else [bytes(64 + i) for i in range(50)]

    old = [object() for _ in range(100)]
    gc.collect()
    token = ext.open_window(1, 8)  # every allocation sampled, 8 frames walked each time
    try:
        made = deep(20)
        del made
        sampled = ext.since(token[0])[8]
        del old[:]
        freed = ext.since(token[0])[8]
    finally:
        ext.close_window(token[0], token[1])
    assert 0 <= sampled <= 2  # 21 frames were made and freed; at most an interpreter one-off
    assert 100 <= freed - sampled <= 102


@needs_hook
def test_small_blocks_in_page_records_match_the_pointer_table() -> None:
    """Small blocks live in per-page records, large and sampled ones in the pointer table.
    Sampling every allocation sends every block to the pointer table: live bytes, live blocks
    and the peak must come out the same either way, and all of it must go when freed."""
    import gc

    import pytest_memguard._allochook as ext

    def work() -> list[object]:
        kept: list[object] = []
        for i in range(20_000):  # small blocks over hundreds of pages, and some large ones
            item = {"i": i, "s": str(i) * (i % 7), "b": bytes(i % 600)}
            if i % 3:
                kept.append(item)
            if i % 5000 == 0:
                kept.append(bytearray(100_000 + i))
        return kept

    def tracked(interval: int) -> tuple[int, int, int, int]:
        gc.collect()
        ext.enable(interval, 1)
        kept = work()
        live, blocks, peak = ext.counters()[3:6]
        del kept
        after = ext.counters()[3]
        ext.disable()
        return live, blocks, peak, after

    work()  # warm-up
    gc.disable()  # a collection in between would free different objects in the two runs
    # Where the peak is sampled, the sampler's thread would allocate in one run and not the
    # other.
    with get_engine().sampling_suspended():
        try:
            paged = tracked(0)
            table = tracked(1)
        finally:
            gc.enable()
    assert paged[1] > 20_000
    assert paged[:3] == table[:3]
    # Freed, nothing lost in the page records (a lost page would be kilobytes). What stays
    # after the free may differ by an object of the interpreter's own: 48 bytes on 3.14 and
    # 3.15, made in one of the two runs only.
    assert abs(paged[3] - table[3]) <= 256
    assert table[3] < paged[0] // 100


@needs_hook
def test_blocks_of_an_earlier_window_are_forgotten() -> None:
    """A window starts knowing no block: freeing, inside it, what an earlier window allocated
    must not lower its live bytes (which would wrap below zero), while its own blocks still
    count. (The page records are emptied by a new epoch, not a wipe.)"""
    import gc

    import pytest_memguard._allochook as ext

    gc.disable()
    try:
        ext.enable(0, 1)
        earlier = [str(i) * 3 for i in range(5_000)]  # small blocks, in page records
        assert ext.counters()[3] > 5_000 * 40
        ext.disable()
        ext.enable(0, 1)
        del earlier
        after_free = ext.counters()[3]
        mine = [str(i) * 3 for i in range(5_000)]  # likely in the very same pages
        live = ext.counters()[3]
        del mine
        end = ext.counters()[3]
        ext.disable()
    finally:
        gc.enable()
    assert after_free == 0
    assert 5_000 * 40 < live < 5_000 * 100
    assert end < live // 100


@needs_hook
def test_sites_name_the_line_of_a_large_allocation() -> None:
    with pm.measure(explain=True) as m:
        kept = bytearray(8 * MiB)  # the site
    line = sys._getframe().f_lineno - 1
    assert m.sites, "a large allocation is always sampled"
    top = m.sites[0]
    assert top.frame.filename == __file__
    assert top.frame.lineno == line
    assert top.bytes >= 8 * MiB
    assert top.alive_bytes >= 8 * MiB
    assert kept


@needs_hook
def test_samples_name_their_code_without_keeping_it_alive() -> None:
    """A sample that held its frames' code would keep a module's code alive: growth to a leak
    check of a test that imports or generates code."""
    source = "def générée():\n    return bytearray(8 * 2**20)\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "<généré>", "exec"), namespace)
    code = weakref.ref(namespace["générée"].__code__)
    with pm.measure(explain=True) as m:
        namespace["générée"]()
        namespace.clear()
        gc.collect()
        code_alive_in_window = code() is not None
    assert not code_alive_in_window
    frames = [frame for site in m.sites for frame in (site.frame, *site.stack)]
    assert Frame("<généré>", 2, "générée") in frames


@needs_hook
def test_threads_the_test_starts_hold_its_memory_but_only_its_own_thread_counts_calls() -> None:
    """How many calls a started thread makes depends on the scheduler; what it holds does not."""
    kept: list[bytearray] = []

    def work(calls: int) -> None:
        for _ in range(calls):
            bytearray(100_000)
        kept.append(bytearray(300_000))

    def window(calls: int) -> pm.AllocationCount:
        with pm.count_allocations() as c:
            threads = [threading.Thread(target=work, args=(calls,)) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        return c

    window(0)  # first use: threading's own lazy set-up
    idle, busy = window(0), window(200)
    assert idle.allocations is not None
    assert busy.allocations is not None
    # 800 calls on the started threads, none on the test's: the counts agree within noise.
    assert abs(busy.allocations - idle.allocations) <= 20
    assert 0 < busy.allocations < 400
    for c in (idle, busy):
        assert c.heap_peak is not None
        assert 4 * 300_000 <= c.heap_peak < 4 * 300_000 + 600_000


@needs_hook
def test_a_thread_left_out_is_known_by_its_state_not_by_an_ident_a_later_thread_reuses() -> None:
    """The run's threads are left out of windows; a thread started after one of them ended is
    the measured code's, even where it reuses the ended thread's ident (glibc reuses stacks)."""
    heap = get_engine().heap
    kept: list[bytearray] = []

    def keep(go: threading.Event, done: threading.Event) -> None:
        go.wait()
        kept.append(bytearray(300_000))
        done.set()

    def handed(thread: threading.Thread, go: threading.Event, done: threading.Event) -> int:
        with pm.count_allocations() as c:
            go.set()
            done.wait()
        thread.join()
        assert c.heap_peak is not None
        return c.heap_peak

    def started() -> tuple[threading.Thread, threading.Event, threading.Event]:
        go, done = threading.Event(), threading.Event()
        thread = threading.Thread(target=keep, args=(go, done))
        thread.start()
        return thread, go, done

    runs = started()
    assert heap.leave_out_threads() >= 1
    assert handed(*runs) < 50_000
    later = started()
    assert 300_000 <= handed(*later) < 350_000
    assert len(kept) == 2


PROGRAM = textwrap.dedent(
    """
    import gc, json
    import pytest_memguard as pm

    def work():
        d = {}
        for i in range(2000):
            d[str(i)] = [i] * (i % 7)
        return json.dumps(sorted(d))

    work()
    gc.collect()
    with pm.count_allocations() as c:
        work()
    print(json.dumps([c.allocations, c.frees, c.bytes, c.heap_peak]))
    """
)


@needs_hook
def test_counts_are_identical_across_processes_and_hash_seeds() -> None:
    results = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True
        )
        results.add(out.stdout.strip())
    # Allocations, bytes and the heap peak are exact. Frees may differ by one or two: a block
    # allocated before the window can be freed inside it depending on the hash seed.
    rows = [json.loads(r) for r in results]
    assert len({(r[0], r[2], r[3]) for r in rows}) == 1, rows
    assert max(r[1] for r in rows) - min(r[1] for r in rows) <= 2, rows
    assert rows[0][0] > 2000


def test_forced_fallback_uses_tracemalloc_and_says_so() -> None:
    program = textwrap.dedent(
        """
        import pytest_memguard as pm
        from pytest_memguard.measurement import get_engine
        print(get_engine().describe())
        with pm.count_allocations() as c:
            b = bytearray(4 * 2**20)
        print(c.allocations, c.heap_peak)
        with pm.measure(explain=True) as m:
            kept = [bytearray(1000) for _ in range(2000)]  # the site
        print(m.retained, m.sites[0].frame.lineno, m.types[0].name)
        """
    )
    site_line = 1 + program.splitlines().index(
        next(line for line in program.splitlines() if "# the site" in line)
    )
    env = dict(os.environ, MEMGUARD_FORCE_TRACEMALLOC="1")
    out = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    describe, counts, explained = out.stdout.strip().splitlines()
    assert "tracemalloc" in describe
    assert "MEMGUARD_FORCE_TRACEMALLOC" in describe
    allocations, heap_peak = counts.split()
    assert allocations == "None"  # tracemalloc cannot count calls: say so, never guess
    assert int(heap_peak) >= 4 * 2**20
    retained, lineno, kind = explained.split()
    assert int(retained) >= 2000 * 1000
    assert int(lineno) == site_line
    assert kind == "bytearray"


def test_fallback_sites_name_the_line_that_allocated() -> None:
    """tracemalloc sorts a traceback's frames oldest first; a site is the newest."""
    backend = TracemallocBackend()
    token = backend.begin()
    try:
        kept = [bytearray(1000) for _ in range(500)]
        line = sys._getframe().f_lineno - 1
        sites = backend.sites(token, 3, alive_only=True)
    finally:
        backend.end(token)
    assert len(kept) == 500
    top = sites[0]
    assert (top.frame.filename, top.frame.lineno) == (__file__, line)
    assert 500 * 1000 <= top.alive_bytes <= 600 * 1000
    assert top.stack[0] == top.frame  # then its callers, newest first
    assert len(top.stack) >= 2


def test_fallback_sites_leave_out_what_the_plugin_allocated() -> None:
    """tracemalloc cannot pause: blocks the plugin made in a window (here named tuples, whose
    ``__new__`` is generated code, ``<string>``) are left out of the sites, the census and the
    reference chains by their stack."""
    backend = TracemallocBackend()
    token = backend.begin()
    try:
        kept = [bytearray(1000) for _ in range(100)]
        line = sys._getframe().f_lineno - 1
        rows = [(8, 8.0, True, (Frame(f"f{i}.py", i),)) for i in range(2000)]
        ours = aggregate_sites(rows, 2000, alive_only=False)
        sites = backend.sites(token, 50, alive_only=True)
        # Nor are they "new" to a census or a reference chain; the test's own objects are.
        assert not backend.is_new(ours[0])
        assert backend.is_new(kept[0])
    finally:
        backend.end(token)
    assert len(kept) == 100
    assert len(ours) == 2000
    package = os.path.dirname(pm.__file__) + os.sep
    named = [s.stack for s in sites if any(f.filename.startswith(package) for f in s.stack[:2])]
    assert named == []
    [mine] = [s for s in sites if (s.frame.filename, s.frame.lineno) == (__file__, line)]
    assert 100 * 1000 <= mine.alive_bytes <= 120 * 1000


def test_load_backend_honours_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMGUARD_FORCE_TRACEMALLOC", "1")
    backend = load_backend()
    assert isinstance(backend, TracemallocBackend)
    assert not backend.counts_calls


def test_aggregate_sites_groups_by_top_user_frame() -> None:
    here = Frame("app.py", 10, "f")
    there = Frame("app.py", 20, "g")
    rows = [
        (100, 1000.0, True, (here,)),
        (100, 1000.0, False, (here,)),
        (50, 5000.0, True, (there,)),
    ]
    by_bytes = aggregate_sites(rows, 5, alive_only=False)
    assert [s.frame for s in by_bytes] == [there, here]
    assert by_bytes[1].bytes == 2000
    assert by_bytes[1].count == 20
    assert by_bytes[1].alive_bytes == 1000
    alive = aggregate_sites(rows, 1, alive_only=True)
    assert len(alive) == 1
    assert alive[0].frame == there


def test_a_census_leaves_nothing_behind() -> None:
    """Up to 3.10 the census generator's own frame is in gc.get_objects(): the list of all
    objects and the frame held each other, with the census's id set, until a collection,
    which never came under a frozen collector (each census then counted the last one's)."""
    import gc

    from pytest_memguard.census import all_objects, census_types

    gc.collect()
    census_types()
    census_types()
    leftovers = [o for o in all_objects() if isinstance(o, set) and len(o) > 5000]
    assert leftovers == []


@needs_hook
def test_hooks_are_in_only_while_a_window_is_open_and_never_cut_off_a_wrapper() -> None:
    """Outside windows the hooks cost nothing because they are not there; a tracer that wrapped
    them inside a window (tracemalloc) keeps working after the window closes."""
    program = textwrap.dedent(
        """
        import tracemalloc
        from pytest_memguard import _allochook as ext
        print(ext.is_installed())
        token = ext.open_window(0, 1)
        print(ext.is_installed())
        ext.close_window(token[0], token[1])
        print(ext.is_installed())
        token = ext.open_window(0, 1)
        tracemalloc.start()
        ext.close_window(token[0], token[1])
        before = tracemalloc.get_traced_memory()[0]
        kept = bytearray(1 << 20)
        print(tracemalloc.get_traced_memory()[0] - before >= 1 << 20)
        tracemalloc.stop()
        token = ext.open_window(0, 1)
        more = [bytearray(1000) for _ in range(10)]
        print(ext.since(token[0])[0] >= 10)
        ext.close_window(token[0], token[1])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "True", "False", "True", "True"]


@needs_hook
def test_sampling_under_a_tracemalloc_started_inside_a_window_does_not_hang() -> None:
    """tracemalloc wraps the hooks and allocates its tables through them while holding the lock
    its hook on every new object takes: a stack sampled there (a frame object made) hung the
    process. The sampled bytes are kept; their stacks are left empty until it stops."""
    program = textwrap.dedent(
        """
        import threading, tracemalloc
        from pytest_memguard import _allochook as ext

        def work():
            return [str(i) for i in range(1000)]

        token = ext.open_window(512, 8)
        tracemalloc.start(25)
        work()
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        wrapped = ext.samples()
        tracemalloc.stop()
        work()
        ext.close_window(token[0], token[1])
        ours = ext.samples(len(wrapped))
        print(len(wrapped) > 50, any(stack for *_, stack in wrapped))
        print(len(ours) > 5, all(stack for *_, stack in ours))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["True", "False", "True", "True"]
