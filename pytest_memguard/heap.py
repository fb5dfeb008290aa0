"""Python-heap tracing: allocation counts, exact live/peak bytes, sampled sites, type census.

Two backends give the same readings. The allocator hook (``_allochook``, here) counts
allocator calls and tracks live bytes at a few percent of cost; tracemalloc (``fallback``) is
used where the extension could not be built or imported (``measurement.load_backend`` chooses).
Sites and the type census are made in ``census``, when a failure is explained.

Heap windows nest (a user's ``measure()`` inside the plugin's per-test window): each window
keeps its own peak by saving the outer peak when it opens and folding its own in when it closes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .census import Frame, Site, TypeGrowth, aggregate_sites, census_objects, per_call

DEFAULT_SAMPLE_INTERVAL = 512 * 1024
DEFAULT_FRAMES = 4


@dataclass(frozen=True)
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
    # Reallocations of blocks allocated before the window, and their new sizes (None where
    # the backend cannot tell): each counts as a new live block of its whole new size, while
    # the old block was never counted.
    old_reallocs: int | None = None
    old_realloc_bytes: int | None = None
    # Blocks allocated before the window and freed in it, those reallocations included: the
    # live-block change less these is the net change (sizes unknown: see the leak check).
    old_frees: int | None = None


class HeapBackend(Protocol):
    name: str
    counts_calls: bool
    # Whether a window's live bytes can be made net of the blocks older than it that it freed
    # (the hook counts those frees): what a leak check's byte figure needs. tracemalloc sees no
    # such free, so a leak check does not trace with it (see LeakRunner).
    net_bytes: bool
    # Whether sites can include blocks freed before the window ended (a sampled history);
    # tracemalloc's snapshot holds live blocks only.
    sees_freed: bool

    # ``sites``: sample where the window allocates, for ``sites()`` (where the backend samples).
    def begin(self, sites: bool = True) -> Any: ...
    def read(self, token: Any) -> HeapReading: ...
    def end(self, token: Any) -> None: ...
    def sites(
        self, token: Any, limit: int, alive_only: bool, by_count: bool = False
    ) -> list[Site]: ...
    def census(self, token: Any, limit: int) -> list[TypeGrowth]: ...
    def is_new(self, obj: object) -> bool:
        """Allocated while tracking (in the open windows) and still alive."""
        ...

    def own_bytes(self) -> int: ...
    def concurrency(self) -> int:
        """A count that grows while the measured code runs work beside its own thread: the
        suite's other threads allocating (not the run's: see ``leave_out_threads``), processes
        it started. Compared between two readings."""
        ...

    def pause(self, flag: bool) -> bool:
        """Leave this thread's allocations out of every figure while ``flag``; returns the
        previous flag. A backend that cannot (tracemalloc) returns False and counts them."""

    def leave_out_threads(self) -> int:
        """The threads alive now, but the caller's, are the run's (xdist's I/O thread, other
        plugins'), not the measured code's: leave them out of every later window. Returns how
        many are left out; 0 from a backend that cannot (tracemalloc)."""

    def watch_opens(self, watcher: Callable[..., object]) -> None:
        """Call ``watcher`` with each ``open`` audit event's (path, mode, flags), from the
        backend's own audit hook (see firstuse); its allocations are left out of every figure
        where the backend can pause."""

    def growth_sites(
        self,
        token: Any,
        call: Callable[[], object],
        between: Callable[[], None],
        calls: int,
        limit: int,
    ) -> list[Site]: ...

    def call_sites(self, call: Callable[[], object], limit: int, by_count: bool) -> list[Site]:
        """Every allocation ``call`` makes, traced, grouped by site (freed ones included);
        empty where the backend cannot see freed blocks."""
        ...


# What open_window() returns and close_window() takes back: (mark, saved peak, first sample,
# own bytes at the start). Kept whole until the window closes (see open_window in the C file).
_ExtToken = tuple[int, int, int, int]


class ExtBackend:
    """The allocator hook: counts, exact live/peak bytes, byte-proportional sampled sites."""

    name = "allocator hook (_allochook)"
    counts_calls = True
    net_bytes = True
    sees_freed = True

    def __init__(
        self,
        module: Any,
        sample_interval: int = DEFAULT_SAMPLE_INTERVAL,
        frames: int = DEFAULT_FRAMES,
    ) -> None:
        self._ext = module
        self.sample_interval = sample_interval
        self.frames = frames

    def begin(self, sites: bool = True) -> _ExtToken:
        interval = self.sample_interval if sites else 0
        token: _ExtToken = self._ext.open_window(interval, self.frames)
        return token

    def read(self, token: _ExtToken) -> HeapReading:
        (allocations, frees, nbytes, live, blocks, peak, reallocs, realloc_bytes, old_frees) = (
            self._ext.since(token[0])
        )
        own = max(0, self._ext.own_bytes()[1] - token[3])
        return HeapReading(
            allocations, frees, nbytes, peak, live, blocks, own, reallocs, realloc_bytes, old_frees
        )

    def end(self, token: _ExtToken) -> None:
        self._ext.close_window(token[0], token[1])

    def pause(self, flag: bool) -> bool:
        return bool(self._ext.pause(flag))

    def leave_out_threads(self) -> int:
        return int(self._ext.leave_out_threads())

    def watch_opens(self, watcher: Callable[..., object]) -> None:
        self._ext.watch_opens(watcher)

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
        """The extension's samples from index ``first`` on, as aggregate_sites wants them.
        A traced call (``call_sites``) yields up to 65,536 samples from a few hundred stacks:
        each stack's frames are made once (soupsieve's regressed tests spent half their
        explanation making them again)."""
        made: dict[tuple[tuple[str, int, str], ...], tuple[Frame, ...]] = {}
        rows = []
        for size, weight, _domain, alive, stack in self._ext.samples(first):
            frames = made.get(stack)
            if frames is None:
                frames = made[stack] = tuple(Frame(f, line, fn) for f, line, fn in stack)
            rows.append((size, weight, bool(alive), frames))
        return rows

    def census(self, token: _ExtToken, limit: int) -> list[TypeGrowth]:
        return census_objects(self._ext.block_size, limit)

    def is_new(self, obj: object) -> bool:
        return bool(self._ext.block_size(obj) >= 0)

    def own_bytes(self) -> int:
        """Bytes of the hook's own tables and samples (in the C heap, not the user's)."""
        return int(self._ext.own_bytes()[0])

    def concurrency(self) -> int:
        return int(self._ext.concurrency())

    def call_sites(self, call: Callable[[], object], limit: int, by_count: bool) -> list[Site]:
        first = self._ext.sample_count()
        old = self._ext.set_sampling(1)  # every allocation
        try:
            call()
        finally:
            self._ext.set_sampling(old)
        return aggregate_sites(self._rows(first), limit, alive_only=False, by_count=by_count)

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
        return per_call(
            aggregate_sites(self._rows(first), limit * 4, alive_only=True), calls, limit
        )


# What the extension must offer: a build left next to newer sources may lack some of it.
EXT_API = (
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
    "concurrency",
    "open_window",
    "close_window",
    "pause",
    "leave_out_threads",
    "watch_opens",
)
