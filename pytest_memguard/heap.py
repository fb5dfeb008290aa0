"""Python-heap tracing: allocation counts, exact live/peak bytes, sampled sites, type census.

Two backends give the same readings. The allocator hook (``_tracemalloc_ext``) counts allocator
calls and tracks live bytes at a few percent of cost; tracemalloc is the fallback where the
extension could not be built or imported, slower (10x on allocation-heavy code) and without
call counts, so the plugin only switches it on for tests that ask for heap figures.

Heap windows nest (a user's ``measure()`` inside the plugin's per-test window): each window
keeps its own peak by saving the outer peak when it opens and folding its own in when it closes.
"""

from __future__ import annotations

import gc
import os
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Protocol

from .valueclass import valueclass

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_NAME = __name__.rpartition(".")[0]
DEFAULT_SAMPLE_INTERVAL = 512 * 1024
DEFAULT_FRAMES = 4
FORCE_FALLBACK_ENV = "MEMGUARD_FORCE_TRACEMALLOC"


@valueclass(frozen=True)
class Frame:
    filename: str
    lineno: int
    function: str = ""

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"


@valueclass(frozen=True)
class Site:
    """Where memory was allocated: estimated bytes and count, and how much is still alive."""

    frame: Frame
    bytes: int
    count: int
    alive_bytes: int
    stack: tuple[Frame, ...] = ()


@valueclass(frozen=True)
class TypeGrowth:
    """Objects of one type allocated in the window and still alive at its end."""

    name: str
    count: int
    bytes: int


@valueclass(frozen=True)
class HeapReading:
    allocations: int | None
    frees: int | None
    bytes: int | None
    heap_peak: int | None
    live: int | None
    live_blocks: int | None
    # Peak growth of the tracer's own bookkeeping: resident memory the kernel peak counts but
    # that belongs to us, not to the code under test.
    own_peak: int = 0


class HeapBackend(Protocol):
    name: str
    counts_calls: bool
    cheap: bool

    def begin(self) -> Any: ...
    def read(self, token: Any) -> HeapReading: ...
    def end(self, token: Any) -> None: ...
    def sites(
        self, token: Any, limit: int, alive_only: bool, by_count: bool = False
    ) -> list[Site]: ...
    def census(self, token: Any, limit: int) -> list[TypeGrowth]: ...
    def own_bytes(self) -> int: ...
    def growth_sites(
        self,
        token: Any,
        call: Callable[[], object],
        between: Callable[[], None],
        calls: int,
        limit: int,
    ) -> list[Site]: ...


def _user_frames(frames: tuple[Frame, ...]) -> tuple[Frame, ...]:
    """Drop our own frames from the top of a stack: a site inside memguard explains nothing.
    A stack that is ours all the way down was memguard's own bookkeeping: empty."""
    index = 0
    while index < len(frames) and frames[index].filename.startswith(_PACKAGE_DIR):
        index += 1
    return frames[index:]


def aggregate_sites(
    rows: Sequence[tuple[int, float, bool, tuple[Frame, ...]]],
    limit: int,
    alive_only: bool,
    by_count: bool = False,
) -> list[Site]:
    """Group samples (size, weight, alive, stack) by their top user frame, biggest first
    (most allocations first when ``by_count``: what an allocation budget is about)."""
    totals: dict[Frame, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    stacks: dict[Frame, tuple[Frame, ...]] = {}
    for size, weight, alive, stack in rows:
        if alive_only and not alive:
            continue
        if not stack:
            frames: tuple[Frame, ...] = (Frame("<no Python frame>", 0),)
        else:
            frames = _user_frames(stack)
            if not frames:
                continue
        top = frames[0]
        entry = totals[top]
        entry[0] += weight
        entry[1] += weight / size if size else 0.0
        entry[2] += weight if alive else 0.0
        stacks.setdefault(top, frames)
    column = 1 if by_count else (2 if alive_only else 0)
    order = sorted(totals.items(), key=lambda kv: (-kv[1][column], str(kv[0])))
    return [
        Site(top, int(v[0]), max(1, round(v[1])), int(v[2]), stacks[top])
        for top, v in order[:limit]
    ]


def all_objects() -> list[object]:
    """``gc.get_objects()`` including frozen objects, which it silently leaves out (the leak
    loop and per-test collection run under ``gc.freeze()``)."""
    if gc.get_freeze_count():
        gc.unfreeze()
        try:
            return gc.get_objects()
        finally:
            gc.freeze()
    return gc.get_objects()


def _live_objects(skip: set[int]) -> Iterator[object]:
    """Every live object once: the GC-tracked ones and, as their referents, the untracked atomic
    ones (ints, strings, bytes). Frozen objects included; ids in ``skip`` (the caller's
    bookkeeping) and memguard's own types left out. Only to explain a failure: it costs
    milliseconds on a big heap."""
    seen: set[int] = set()
    objects = all_objects()
    skip = skip | {id(seen), id(objects), id(skip)}
    try:
        for obj in objects:
            if id(obj) in skip:
                continue
            for candidate in (obj, *gc.get_referents(obj)):
                ident = id(candidate)
                if ident in seen or ident in skip:
                    continue
                if candidate is not obj and gc.is_tracked(candidate):
                    continue
                seen.add(ident)
                if not type(candidate).__module__.startswith(_PACKAGE_NAME):
                    yield candidate
    finally:
        # Up to 3.10 this generator's own frame is a GC object and so in ``objects``: frame and
        # list hold each other, and under a frozen collector nothing breaks the cycle. Each
        # census then kept the previous one's sets alive and counted them: 4.6 GB on 3.9.
        objects.clear()
        seen.clear()


def _type_name(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}".replace("builtins.", "")


def _sizeof(obj: object) -> int:
    try:
        return sys.getsizeof(obj)
    except TypeError:  # objects whose __sizeof__ is broken
        return 0


def census_objects(block_size: Callable[[object], int], limit: int) -> list[TypeGrowth]:
    """Types of objects allocated in the window and still alive, by bytes."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for obj in _live_objects({id(counts)}):
        size = block_size(obj)
        if size >= 0:
            entry = counts[_type_name(obj)]
            entry[0] += 1
            # The object's own block may be a header whose buffer is a second block.
            entry[1] += max(size, _sizeof(obj))
    order = sorted(counts.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return [TypeGrowth(name, c, b) for name, (c, b) in order[:limit]]


def _reachable_ids(roots: Sequence[object], depth: int = 4) -> set[int]:
    """Ids of ``roots`` and what they hold, a few levels deep: bookkeeping to leave out."""
    found: set[int] = set()
    level = list(roots)
    for _ in range(depth):
        following = []
        for obj in level:
            if id(obj) not in found:
                found.add(id(obj))
                following.extend(gc.get_referents(obj))
        level = following
    return found


def census_types(exclude: Sequence[object] = ()) -> dict[str, tuple[int, int]]:
    """Live objects by type name: (count, bytes). Compared before and after a few calls, it
    names the types that grew. ``exclude`` (and what it holds) is bookkeeping to skip."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    skip = _reachable_ids(exclude) | {id(totals)}
    for obj in _live_objects(skip):
        entry = totals[_type_name(obj)]
        entry[0] += 1
        entry[1] += _sizeof(obj)
    return {name: (c, b) for name, (c, b) in totals.items()}


def _per_call(sites: list[Site], per: int, limit: int) -> list[Site]:
    """Sites of growth, per call: at least a block per call, or a block that keeps growing
    (a list's array); what is merely alive once (a cache refilled) is not growth."""
    per = max(1, per)
    return [
        Site(s.frame, s.bytes // per, max(1, round(s.count / per)), s.alive_bytes // per, s.stack)
        for s in sites
        if s.count >= per or s.alive_bytes >= 64 * per
    ][:limit]


# What open_window() returns and close_window() takes back: (mark, saved peak, first sample,
# own bytes at the start). Kept whole until the window closes (see open_window in the C file).
_ExtToken = tuple[int, int, int, int]


class ExtBackend:
    """The allocator hook: counts, exact live/peak bytes, byte-proportional sampled sites."""

    name = "allocator hook (_tracemalloc_ext)"
    counts_calls = True
    cheap = True

    def __init__(
        self,
        module: Any,
        sample_interval: int = DEFAULT_SAMPLE_INTERVAL,
        frames: int = DEFAULT_FRAMES,
    ) -> None:
        self._ext = module
        self.sample_interval = sample_interval
        self.frames = frames

    def begin(self) -> _ExtToken:
        token: _ExtToken = self._ext.open_window(self.sample_interval, self.frames)
        return token

    def read(self, token: _ExtToken) -> HeapReading:
        allocations, frees, nbytes, live, blocks, peak = self._ext.since(token[0])
        own = max(0, self._ext.own_bytes()[1] - token[3])
        return HeapReading(allocations, frees, nbytes, peak, live, blocks, own)

    def end(self, token: _ExtToken) -> None:
        self._ext.close_window(token[0], token[1])

    @property
    def module(self) -> Any:
        return self._ext

    def sites(
        self, token: _ExtToken, limit: int, alive_only: bool, by_count: bool = False
    ) -> list[Site]:
        return self.sites_since(token[2], limit, alive_only, by_count)

    def sites_since(
        self, first: int, limit: int, alive_only: bool, by_count: bool = False
    ) -> list[Site]:
        """Sites of the samples from index ``first`` on (a whole window's first sample)."""
        return aggregate_sites(self._rows(first), limit, alive_only, by_count)

    def _rows(self, first: int) -> list[tuple[int, float, bool, tuple[Frame, ...]]]:
        """The extension's samples from index ``first`` on, as aggregate_sites wants them."""
        return [
            (size, weight, bool(alive), tuple(Frame(f, line, fn) for f, line, fn in stack))
            for size, weight, _domain, alive, stack in self._ext.samples(first)
        ]

    def census(self, token: _ExtToken, limit: int) -> list[TypeGrowth]:
        return census_objects(self._ext.block_size, limit)

    def own_bytes(self) -> int:
        """Bytes of the hook's own tables and samples (in the C heap, not the user's)."""
        return int(self._ext.own_bytes()[0])

    def growth_sites(
        self,
        token: _ExtToken,
        call: Callable[[], object],
        between: Callable[[], None],
        calls: int,
        limit: int,
    ) -> list[Site]:
        """Trace every allocation ``call`` makes (not what ``between`` does) for ``calls``
        calls; the sites of what is still alive after, per call."""
        first = self._ext.sample_count()
        old = self._ext.set_sampling(0)
        try:
            for _ in range(calls):
                self._ext.set_sampling(1)
                call()
                self._ext.set_sampling(0)
                between()
        finally:
            self._ext.set_sampling(old)
        return _per_call(
            aggregate_sites(self._rows(first), limit * 4, alive_only=True), calls, limit
        )


@valueclass
class _TmToken:
    start: int
    high: int


def _tracemalloc() -> Any:
    """The tracemalloc module, imported by the fallback only (it imports pickle: ~3 ms at
    startup for every run that never needs it)."""
    import tracemalloc

    return tracemalloc


class TracemallocBackend:
    """The fallback: the standard library's tracemalloc, with no call counts."""

    name = "tracemalloc (fallback: allocator hook unavailable)"
    counts_calls = False
    cheap = False

    def __init__(self, frames: int = DEFAULT_FRAMES, reason: str = "") -> None:
        self.frames = frames
        self.reason = reason
        self._open: list[_TmToken] = []
        self._owns = False

    def begin(self) -> _TmToken:
        if not _tracemalloc().is_tracing():
            _tracemalloc().start(self.frames)
            self._owns = True
        current, peak = _tracemalloc().get_traced_memory()
        for window in self._open:
            window.high = max(window.high, peak)
        _tracemalloc().reset_peak()
        token = _TmToken(current, current)
        self._open.append(token)
        return token

    def read(self, token: _TmToken) -> HeapReading:
        current, peak = _tracemalloc().get_traced_memory()
        high = max(token.high, peak)
        return HeapReading(
            None, None, None, max(0, high - token.start), current - token.start, None
        )

    def end(self, token: _TmToken) -> None:
        _, peak = _tracemalloc().get_traced_memory()
        if token in self._open:
            self._open.remove(token)
        for window in self._open:
            window.high = max(window.high, peak)
        if not self._open and self._owns:
            _tracemalloc().stop()
            self._owns = False

    def sites(
        self, token: _TmToken, limit: int, alive_only: bool, by_count: bool = False
    ) -> list[Site]:
        if not _tracemalloc().is_tracing():
            return []
        snapshot = (
            _tracemalloc()
            .take_snapshot()
            .filter_traces(
                [
                    _tracemalloc().Filter(False, _tracemalloc().__file__),
                    _tracemalloc().Filter(False, __file__),
                ]
            )
        )
        rows = []
        for stat in snapshot.statistics("traceback"):
            stack = tuple(Frame(f.filename, f.lineno) for f in stat.traceback)
            rows.append((max(1, stat.size // max(1, stat.count)), float(stat.size), True, stack))
        return aggregate_sites(rows, limit, alive_only, by_count)

    def growth_sites(
        self,
        token: _TmToken,
        call: Callable[[], object],
        between: Callable[[], None],
        calls: int,
        limit: int,
    ) -> list[Site]:
        ignore = [
            _tracemalloc().Filter(False, _tracemalloc().__file__),
            _tracemalloc().Filter(False, f"{_PACKAGE_DIR}{os.sep}*"),
        ]
        before = _tracemalloc().take_snapshot().filter_traces(ignore)
        for _ in range(calls):
            call()
            between()
        after = _tracemalloc().take_snapshot().filter_traces(ignore)
        rows = []
        for stat in after.compare_to(before, "traceback"):
            if stat.size_diff <= 0:
                continue
            stack = tuple(Frame(f.filename, f.lineno) for f in stat.traceback)
            size = max(1, stat.size_diff // max(1, stat.count_diff))
            rows.append((size, float(stat.size_diff), True, stack))
        return _per_call(aggregate_sites(rows, limit * 4, alive_only=True), calls, limit)

    def own_bytes(self) -> int:
        return 0  # tracemalloc's own memory is subtracted where the native heap is read

    def census(self, token: _TmToken, limit: int) -> list[TypeGrowth]:
        if not _tracemalloc().is_tracing():
            return []

        def block_size(obj: object) -> int:
            return -1 if _tracemalloc().get_object_traceback(obj) is None else 0

        return census_objects(block_size, limit)


def load_backend() -> HeapBackend:
    """The hook when it can be had, else tracemalloc; ``reason`` says why in the fallback."""
    if os.environ.get(FORCE_FALLBACK_ENV):
        return TracemallocBackend(reason=f"{FORCE_FALLBACK_ENV} is set")
    try:
        from . import _tracemalloc_ext
    except ImportError as exc:
        return TracemallocBackend(reason=f"extension unavailable: {exc}")
    missing = [name for name in _EXT_API if not hasattr(_tracemalloc_ext, name)]
    if missing:  # a stale build left next to newer sources
        return TracemallocBackend(
            reason=f"extension out of date (no {', '.join(missing)}); reinstall to rebuild it"
        )
    return ExtBackend(_tracemalloc_ext)


_EXT_API = (
    "install",
    "enable",
    "disable",
    "counters",
    "since",
    "samples",
    "sample_count",
    "set_sampling",
    "block_size",
    "own_bytes",
    "open_window",
    "close_window",
)
