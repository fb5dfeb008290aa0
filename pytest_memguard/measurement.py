"""One measurement window over process and Python-heap memory, and its result.

The window is the only place that knows both halves: the kernel's view (peak RSS, anonymous
memory, fds) from ``process.ProcessProbe`` and the allocator's view (calls, live and peak bytes)
from a ``heap`` backend. ``peak`` is the larger of the two peaks: the kernel sees native and
thread allocations the allocator hooks never do (numpy buffers, mmap), the hooks see exact bytes
where the kernel rounds to pages and misses spikes under 1 MiB.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .census import Site, TypeGrowth
from .firstuse import FileReads, modules_loaded, newest_pattern
from .garbage import Collector
from .heap import EXT_API, ExtBackend, HeapBackend
from .platforms import FORCE_PORTABLE_ENV, IS_LINUX, PORTABLE_FORCED
from .units import format_count, format_size

if TYPE_CHECKING:
    # Imported where used: a native window (Linux, extension built) needs none of it, so most
    # runs never load the module.
    from .children import ChildUsage, ChildWatch
    from .process import ProcessProbe
    from .retainers import Kind, Retainers, Survivors

METRICS = ("peak", "heap_peak", "retained", "private", "rss", "allocations", "fds")
COUNT_METRICS = frozenset({"allocations", "fds"})


def free_threaded() -> bool:
    """Whether this interpreter was built without the GIL (3.13t and later): its objects are
    laid out differently, and the allocator hook, which relies on the GIL, refuses to load
    there (its module init says so too, for the kernel calls that import it directly)."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def interpreter_scope() -> str:
    """Which interpreter figures are comparable across: heap bytes and allocation counts are
    identical across runs and builds of one minor version and differ between versions, and
    between a free-threaded build (``t``, as in ``python3.14t``) and the default one."""
    build = "t" if free_threaded() else ""
    return f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}{build}"


def format_metric(metric: str, value: int | None, signed: bool = False) -> str:
    if metric in COUNT_METRICS:
        return format_count(value, signed)
    return format_size(value, signed)


@dataclass
class Measurement:
    """What one window measured. A metric nobody could measure is ``None``, never a guess."""

    peak: int | None = None
    heap_peak: int | None = None
    retained: int | None = None
    private: int | None = None
    rss: int | None = None
    allocations: int | None = None
    fds: int | None = None
    frees: int | None = None
    allocated_bytes: int | None = None
    kernel_peak: int | None = None
    retained_blocks: int | None = None
    # Modules first imported in the window: the test paid a first-use cost that whichever
    # test comes first pays (see the plugin's warm re-measure for baselines).
    imports: int = 0
    # The window compiled a regular expression ``re`` had not cached: a first use that imports
    # nothing (a pygments lexer compiles its hundreds of rules the first time it is used).
    compiled: bool = False
    # Files the window read first in the process (see firstuse): data a library loads once.
    files_read: int = 0
    # The window ran work beside the test's own thread: the suite's other threads allocated
    # (ones it started, a pool's), or it started a process. Its own thread's count then
    # depends on the scheduler (how often it polled a pipe or woke on a future), and its peak
    # on how the threads interleaved.
    concurrent: bool = False
    sites: list[Site] = field(default_factory=list)
    # The sites count only blocks still alive at the end (asked for, or all the backend sees).
    sites_alive: bool = False
    types: list[TypeGrowth] = field(default_factory=list)
    # Why the objects of those types are still alive: reference paths from roots.
    retainers: Retainers | None = None
    # The processes the window started, where it watched them (``Meter(children=True)``).
    children: list[ChildUsage] = field(default_factory=list)

    def children_share(self, metric: str) -> int:
        """What the watched children add to ``metric``: their highest private memory for
        ``peak`` (an upper bound: each child at its own highest sample), the private memory of
        those still alive at the end for ``private``."""
        if metric == "peak":
            return sum(child.peak for child in self.children)
        return sum(child.private or 0 for child in self.children)

    def fill(self, values: tuple[int | None, ...]) -> None:
        """From ``Meter.read()`` (the extension's window_read() tuple)."""
        (
            self.peak,
            self.heap_peak,
            self.retained,
            self.private,
            self.rss,
            self.allocations,
            self.fds,
            self.frees,
            self.allocated_bytes,
            self.kernel_peak,
            self.retained_blocks,
        ) = values

    def metrics(self) -> dict[str, int | None]:
        return dict(zip(METRICS, self.values()))

    def values(self) -> tuple[int | None, ...]:
        """The metrics' values, in the order of ``METRICS``."""
        return (
            self.peak,
            self.heap_peak,
            self.retained,
            self.private,
            self.rss,
            self.allocations,
            self.fds,
        )

    def pretty(self) -> str:
        return "\n".join(
            f"{name:<12}{format_metric(name, value, name in ('private', 'rss', 'fds')):>14}"
            for name, value in self.metrics().items()
        )


FORCE_FALLBACK_ENV = "MEMGUARD_FORCE_TRACEMALLOC"


def load_backend() -> HeapBackend:
    """The hook when it can be had, else tracemalloc; ``reason`` says why in the fallback."""
    if os.environ.get(FORCE_FALLBACK_ENV):
        return _fallback(f"{FORCE_FALLBACK_ENV} is set")
    if free_threaded():
        # The hook keeps its tables unlocked because the GIL serialises every Python
        # allocation; without it, tracemalloc (thread-safe there) is the honest measure.
        return _fallback("free-threaded build: the allocator hook needs the GIL")
    try:
        import pytest_memguard._allochook as _allochook
    except ImportError as exc:
        return _fallback(f"extension unavailable: {exc}")
    missing = [name for name in EXT_API if not hasattr(_allochook, name)]
    if missing:  # a stale build left next to newer sources
        return _fallback(
            f"extension out of date (no {', '.join(missing)}); reinstall to rebuild it"
        )
    return ExtBackend(_allochook)


def _fallback(reason: str) -> HeapBackend:
    from .fallback import TracemallocBackend  # only where it is the backend

    return TracemallocBackend(reason=reason)


class Engine:
    """The process-wide measuring apparatus: a kernel probe, a heap backend, the collector.

    Allocator hooks and the kernel peak are per process, so everything that measures (the
    plugin's per-test windows, a user's ``measure()``) must share one engine for nesting to work.

    Where the extension can do the whole window (Linux, hook built), ``native`` is the extension
    and a window is one C call at each end; elsewhere the window is composed from the Python
    ``ProcessProbe`` and the heap backend. Both give the same figures.
    """

    def __init__(self, heap: HeapBackend | None = None, native: bool = True) -> None:
        self.heap = heap if heap is not None else load_backend()
        self.collector = Collector()
        self.native: Any = _native_windows(self.heap) if native else None
        # The extension's sampling settings, for its window() (set when native).
        self.window_args: tuple[int, int] = (0, 1)
        if isinstance(self.heap, ExtBackend):
            self.window_args = (self.heap.sample_interval, self.heap.frames)
        self._probe: ProcessProbe | None = None
        if self.native is None:
            self._probe = self.probe
        self.file_reads: FileReads | None = None  # see watch_file_reads

    def watch_file_reads(self) -> None:
        """Count the files read for the first time (``Measurement.files_read``) from now on.
        For good: an audit hook cannot be removed, so only the plugin asks, once."""
        if self.file_reads is None:
            self.file_reads = FileReads()
            self.file_reads.watch(self.heap.watch_opens)

    @property
    def probe(self) -> ProcessProbe:
        """The Python probe of composed windows (opened on first use: native windows never
        need it, and opening it resets the kernel peak)."""
        if self._probe is None:
            from .process import ProcessProbe

            self._probe = ProcessProbe()
        return self._probe

    def sampling_suspended(self) -> AbstractContextManager[None]:
        """The peak sampler's thread stopped for a while, where one runs (see there)."""
        if self._probe is None:
            return nullcontext()
        return self._probe.sampling_suspended()

    @property
    def exact_peak(self) -> bool:
        """Whether ``peak`` comes from the kernel's high-water mark rather than sampling."""
        return self.native is not None or self.probe.exact_peak

    def resident_and_anon(self) -> tuple[int, int]:
        """Resident and anonymous bytes now, resetting nothing (what a soak samples)."""
        if self.native is not None:
            resident, anon = self.native.resident_and_anon()
            return int(resident), int(anon)
        return self.probe.resident_and_anon()

    def describe(self) -> str:
        heap = self.heap
        reason = getattr(heap, "reason", "")
        method = (
            "kernel high-water mark (clear_refs)"
            if self.native is not None
            else self.probe.peak_method
        )
        if IS_LINUX:
            private = "anonymous memory after gc and malloc_trim"
        else:
            forced = f" - {FORCE_PORTABLE_ENV} is set" if PORTABLE_FORCED else ""
            private = f"resident minus shared memory (psutil) after gc{forced}"
        return (
            f"peak = max({method}, Python-heap peak); "
            f"heap = {heap.name}{' - ' + reason if reason else ''}; "
            f"private = {private}"
        )


def _native_windows(heap: HeapBackend) -> Any:
    """The extension when it can open whole windows here, else None."""
    if not isinstance(heap, ExtBackend) or not IS_LINUX:
        return None
    module = heap.module
    if not hasattr(module, "window") or module.peak_method() != "clear_refs":
        return None
    return module


@functools.cache
def get_engine() -> Engine:
    return Engine()


# Flags of the extension's window(): what a whole window measures.
_HEAP, _KERNEL, _FDS, _PRIVATE, _RETAINED, _TRIM = 1, 2, 4, 8, 16, 32


def window_flags(
    heap: bool, retained: bool, private: bool, fds: bool = True, trim: bool = False
) -> int:
    """The extension's flags for a window measuring these (retained bytes need the heap)."""
    flags = _KERNEL | (_TRIM if trim else 0)
    if heap:
        flags |= _HEAP
        if retained:
            flags |= _RETAINED
    if fds:
        flags |= _FDS
    if private:
        flags |= _PRIVATE
    return flags


class Meter:
    """One window. ``start``/``stop`` bracket the code; ``explain`` may follow ``stop`` to get
    sites and object types (still accurate, since tracking stays on until ``close``).

    ``read`` is ``stop`` without making a ``Measurement``: the plugin makes a meter per test,
    and most tests only need the figures as properties. ``result`` is the Measurement that
    ``stop`` fills (made there, unless one was passed in to be filled).
    """

    __slots__ = (
        "engine",
        "want_children",
        "_children",
        "use_heap",
        "want_retained",
        "want_private",
        "want_fds",
        "result",
        "_heap_token",
        "_window",
        "_fds0",
        "_handle",
        "_closed",
        "_collecting",
        "_stopped",
        "_modules",
        "_pattern",
        "_reads",
        "_concurrency0",
        "_shmem0",
        "want_trim",
        "want_sites",
    )

    def __init__(
        self,
        engine: Engine,
        heap: bool = True,
        retained: bool = True,
        private: bool = False,
        fds: bool = True,
        result: Measurement | None = None,
        trim: bool = False,
        children: bool = False,
        sites: bool = True,
    ) -> None:
        self.engine = engine
        # Sample where the window allocates, for ``explain``. A window nobody will ask about
        # leaves it out: the sampler's countdown runs on every allocation (about 1% of an
        # allocation-heavy test's instructions, python-dateutil's tzdata tests under cachegrind).
        self.want_sites = sites
        # Watch the processes the window starts (a thread samples their private memory).
        self.want_children = children
        self._children: ChildWatch | None = None
        self.use_heap = heap
        self.want_retained = retained
        self.want_private = private
        self.want_fds = fds
        # Hand free malloc memory back first: pages freed by earlier code but still resident
        # would take a native spike without the kernel peak moving (what a peak budget needs).
        self.want_trim = trim
        self.result = result
        self._heap_token: Any = None
        self._window: Any = None
        self._fds0: int | None = None
        self._handle: int | None = None
        self._closed = True
        self._collecting = False
        self._stopped = False
        self._modules = 0
        self._pattern: object = None
        self._reads = 0
        self._concurrency0 = 0
        self._shmem0 = 0

    def start(self) -> None:
        self._closed = False
        self._stopped = False
        if self.want_children:  # before the window: its thread and lists are not the test's
            from .children import ChildWatch

            self._children = ChildWatch(pause=self.engine.heap.pause)
            self._children.start()
        self._modules = modules_loaded()
        self._pattern = newest_pattern()
        reads = self.engine.file_reads
        self._reads = reads.count if reads is not None else 0
        if self.want_private:
            from .process import release_free_memory

            release_free_memory()
        engine = self.engine
        if self.want_trim and engine.native is None:  # the extension trims in its window
            from .process import trim_malloc

            trim_malloc()
        # After the trims: the first one finds libc with ctypes, which runs ldconfig.
        self._concurrency0 = engine.heap.concurrency()
        if engine.native is not None:
            # No local may outlive the window's start: its free would count in the window.
            engine.collector.begin()
            self._collecting = True
            self._handle = engine.native.window(
                window_flags(
                    self.use_heap,
                    self.want_retained,
                    self.want_private,
                    self.want_fds,
                    self.want_trim,
                ),
                *(engine.window_args if self.want_sites else (0, engine.window_args[1])),
            )
            return
        engine.collector.begin()
        self._collecting = True
        probe = engine.probe  # first: opening it opens files, which must not count
        if self.want_fds:
            from .process import open_fds

            self._fds0 = open_fds()
        self._shmem0 = probe.shared_memory() if self.want_private else 0
        self._window = probe.begin()
        # Innermost and last: nothing of ours may be allocated between the heap snapshot and
        # the measured code, or counts and retained bytes would carry our own bookkeeping.
        if self.use_heap:
            self._heap_token = engine.heap.begin(self.want_sites)

    def stop(self, values: tuple[int | None, ...] | None = None) -> Measurement:
        """The figures as a ``Measurement`` (``values``: what ``read()`` returned, if it was
        called already; reading twice would collect garbage twice). Once stopped, the
        result is kept: a second ``stop`` returns it."""
        if self._stopped and self.result is not None:
            return self.result
        self._stopped = True
        if values is None:
            values = self.read()
        result = self.result
        if result is None:
            result = self.result = Measurement()
        result.fill(values)
        result.imports = max(0, modules_loaded() - self._modules)
        result.compiled = newest_pattern() is not self._pattern
        self._pattern = None
        reads = self.engine.file_reads
        result.files_read = reads.count - self._reads if reads is not None else 0
        result.concurrent = self.engine.heap.concurrency() > self._concurrency0
        if self._children is not None:
            result.children = self._children.stop()
            self._children = None
        return result

    def read(self) -> tuple[int | None, ...]:
        """The window's figures in the order of the extension's ``window_read``: the seven
        ``METRICS`` first, then frees, allocated bytes, kernel peak and retained blocks; None
        where not measured (retained and its blocks: unless asked for)."""
        if self.use_heap and self.want_retained:
            self.engine.collector.collect()
        if self._handle is not None:
            values: tuple[int | None, ...] = self.engine.native.window_read(self._handle)
            return values
        return self._read_composed()

    def _read_composed(self) -> tuple[int | None, ...]:
        from .process import open_fds, release_free_memory

        heap_peak = allocations = frees = allocated = retained = blocks = private = fds = None
        reading = None
        if self.use_heap:
            reading = self.engine.heap.read(self._heap_token)  # first, for the same reason
        kernel_peak, rss, _anon, anon0 = self.engine.probe.end(self._window)
        if reading is not None:
            allocations = reading.allocations
            frees = reading.frees
            allocated = reading.bytes
            heap_peak = reading.heap_peak
            if reading.own_peak:
                kernel_peak = max(0, kernel_peak - reading.own_peak)
            if self.want_retained:
                retained = max(0, reading.live) if reading.live is not None else None
                blocks = reading.live_blocks
        peaks = [p for p in (kernel_peak, heap_peak) if p is not None]
        peak = max(peaks) if peaks else None
        if self.want_private:
            release_free_memory()
            _, anon = self.engine.probe.resident_and_anon()
            private = anon + self.engine.probe.shared_memory() - anon0 - self._shmem0
        if self.want_fds and self._fds0 is not None:
            now = open_fds()
            fds = None if now is None else now - self._fds0
        return (
            peak,
            heap_peak,
            retained,
            private,
            rss,
            allocations,
            fds,
            frees,
            allocated,
            kernel_peak,
            blocks,
        )

    def explain(
        self,
        limit: int = 5,
        alive_only: bool = False,
        types: bool = True,
        by_count: bool = False,
        chains: bool = False,
    ) -> None:
        """Fill ``sites`` (and ``types``, and with ``chains`` the ``retainers`` of those) of the
        result; call between ``stop`` and ``close``."""
        result = self.result
        if result is None:
            raise RuntimeError("explain() needs stop() first")
        if not self.use_heap or (self._heap_token is None and self._handle is None):
            return
        heap = self.engine.heap
        alive_only = alive_only or not heap.sees_freed
        result.sites_alive = alive_only
        if types:  # first: reading the sites allocates objects the census would then count
            result.types = heap.census(self._heap_token, limit)
            if chains and result.types:  # and why those are still alive
                # Imported only now (a passing run never needs it), with this thread's
                # allocations left out: the import is not the window's memory.
                was = heap.pause(True)
                try:
                    from .retainers import find_retainers, new_objects
                finally:
                    heap.pause(was)
                held = new_objects(heap.is_new, result.types)
                result.retainers = find_retainers(held)
        if self._handle is not None:
            assert isinstance(heap, ExtBackend)  # native windows come with the hook
            first = self.engine.native.window_first_sample(self._handle)
            result.sites = heap.sites_since(first, limit, alive_only, by_count)
        else:
            result.sites = heap.sites(self._heap_token, limit, alive_only, by_count)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Meter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self.close()

    def close(self) -> None:
        if self._children is not None:  # a window left without stop(): end the thread
            self._children.stop()
            self._children = None
        if self._collecting:
            self._collecting = False
            self.engine.collector.end()
        if not self._closed:
            self._closed = True
            if self._handle is not None:
                self.engine.native.window_close(self._handle)
                self._handle = None
            elif self.use_heap and self._heap_token is not None:
                self.engine.heap.end(self._heap_token)
                self._heap_token = None


@contextmanager
def measure(
    *, retained: bool = True, private: bool = False, explain: bool = False
) -> Iterator[Measurement]:
    """Measure the block; the yielded ``Measurement`` is filled when the block exits.

    ``private=True`` collects garbage and trims malloc before both readings (milliseconds on a
    big heap) so that memory the allocator merely keeps cached does not count.
    ``explain=True`` also fills ``sites`` (where the block allocated), ``types`` (objects it
    made that are still alive) and ``retainers`` (why they are alive: reference paths from
    roots), as a failure message shows them.
    """
    result = Measurement()
    meter = Meter(get_engine(), retained=retained, private=private, result=result)
    meter.start()
    try:
        yield result
    finally:
        try:
            meter.stop()
            if explain:
                meter.explain(chains=True)
        finally:
            meter.close()


def survivors(*kinds: Kind, engine: Engine | None = None) -> AbstractContextManager[Survivors]:
    """Watch a block: the yielded ``Survivors`` lists, once the block exits, the objects of
    ``kinds`` (classes or ``"module.Class"`` names) it made that are still alive after it
    (garbage collected first), and ``explain()`` says who holds them. The watch's own work is
    left out of any measurement around the block."""
    heap = (engine or get_engine()).heap
    was = heap.pause(True)  # an import inside a measured block is not the block's memory
    try:
        from .retainers import survivors as watch
    finally:
        heap.pause(was)
    return watch(*kinds, pause=heap.pause)


@dataclass
class AllocationCount:
    """Result of ``count_allocations()``: allocator calls and bytes in the block."""

    allocations: int | None = None
    frees: int | None = None
    bytes: int | None = None
    heap_peak: int | None = None


class count_allocations:  # noqa: N801 - used like a function: ``with count_allocations() as c``
    """Count allocator calls, frees, requested bytes and the heap peak of a block.

    Counts are deterministic for one Python version after a warm-up run and a ``gc.collect()``
    (which this does on entry); they are ``None`` on the tracemalloc fallback, which cannot
    count calls.
    """

    def __init__(self, collect: bool = True) -> None:
        self._collect = collect
        self._engine = get_engine()
        self._token: Any = None
        self.result = AllocationCount()

    def __enter__(self) -> AllocationCount:
        if self._collect:
            self._engine.collector.begin()
        self._token = self._engine.heap.begin()
        return self.result

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        reading = self._engine.heap.read(self._token)
        self._engine.heap.end(self._token)
        if self._collect:
            self._engine.collector.end()
        self.result.allocations = reading.allocations
        self.result.frees = reading.frees
        self.result.bytes = reading.bytes
        self.result.heap_peak = reading.heap_peak
