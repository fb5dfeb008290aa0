"""The heap backend where the allocator hook cannot be had: the standard library's tracemalloc.

Slower than the hook (10x on allocation-heavy code) and without call counts, so the plugin
switches it on only for tests that ask for heap figures. Loaded only where it is the backend.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .census import PACKAGE_DIR, Frame, Site, TypeGrowth, aggregate_sites, census_objects, per_call
from .heap import DEFAULT_FRAMES, HeapReading


@dataclass
class _TmToken:
    start: int
    high: int


def _tracemalloc() -> Any:
    """The tracemalloc module, imported by the fallback only (it imports pickle: ~3 ms at
    startup for every run that never needs it)."""
    import tracemalloc

    return tracemalloc


# Every way CPython starts a process raises one of these audit events (PEP 578), and a thread
# one of the last two from 3.12 (earlier, threads go unseen here; the hook sees them allocate).
# The process events are the extension's ``process_events`` (csrc/hooks.h): keep them alike.
_STARTS = frozenset(
    {
        "subprocess.Popen",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.system",
        "os.startfile",
        "_thread.start_new_thread",
        "_thread.start_joinable_thread",
    }
)
_started = [0]  # a list: the audit hook, which cannot be removed, must not hold the backend
_open_watchers: list[Callable[..., object]] = []  # watch_opens(): at most one


def _note_event(event: str, args: tuple[object, ...]) -> None:
    if event in _STARTS:
        _started[0] += 1
    elif event == "open" and _open_watchers and len(args) == 3:
        with contextlib.suppress(Exception):  # the watcher must never fail the program's open()
            _open_watchers[0](*args)


sys.addaudithook(_note_event)


def _stack(traceback: Any) -> tuple[Frame, ...]:
    """A tracemalloc traceback as the hook gives stacks: the allocating frame first
    (tracemalloc sorts its frames oldest first)."""
    return tuple(Frame(f.filename, f.lineno) for f in reversed(traceback))


def _ours(traceback: Any) -> bool:
    """Allocated by the plugin's own code, directly or through code it called that was made at
    run time (a named tuple's ``__new__`` is ``<string>``). tracemalloc cannot pause, so the
    fallback's sites carried such rows (``<string>:16 <- pytest_memguard/measurement.py``)."""
    for frame in reversed(traceback):  # the allocating frame first
        filename: str = frame.filename
        if not filename.startswith("<"):
            return filename.startswith(PACKAGE_DIR + os.sep)
    return False


def _traced(obj: object) -> bool:
    """Made while tracing, and not by the plugin (see ``_ours``): a census or a reference chain
    would otherwise name the plugin's own records of the window."""
    traceback = _tracemalloc().get_object_traceback(obj)
    return traceback is not None and not _ours(traceback)


class TracemallocBackend:
    """The fallback: the standard library's tracemalloc, with no call counts."""

    name = "tracemalloc (fallback: allocator hook unavailable)"
    counts_calls = False
    net_bytes = False
    sees_freed = False

    def __init__(self, frames: int = DEFAULT_FRAMES, reason: str = "") -> None:
        self.frames = frames
        self.reason = reason
        self._open: list[_TmToken] = []
        self._owns = False

    def begin(self, sites: bool = True) -> _TmToken:
        # tracemalloc traces every block: a window that reads no sites costs the same.
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

    def pause(self, flag: bool) -> bool:
        return False  # tracemalloc traces every thread, always

    def leave_out_threads(self) -> int:
        return 0

    def watch_opens(self, watcher: Callable[..., object]) -> None:
        _open_watchers[:] = [watcher]

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
            if _ours(stat.traceback):
                continue
            stack = _stack(stat.traceback)
            rows.append((max(1, stat.size // max(1, stat.count)), float(stat.size), True, stack))
        return aggregate_sites(rows, limit, alive_only, by_count)

    def call_sites(self, call: Callable[[], object], limit: int, by_count: bool) -> list[Site]:
        return []  # tracemalloc keeps no record of freed blocks: nothing honest to show

    def growth_sites(
        self,
        token: _TmToken,
        call: Callable[[], object],
        between: Callable[[], None],
        calls: int,
        limit: int,
    ) -> list[Site]:
        ignore = [_tracemalloc().Filter(False, _tracemalloc().__file__)]
        before = _tracemalloc().take_snapshot().filter_traces(ignore)
        for _ in range(calls):
            call()
            between()
        after = _tracemalloc().take_snapshot().filter_traces(ignore)
        rows = []
        for stat in after.compare_to(before, "traceback"):
            if stat.size_diff <= 0 or _ours(stat.traceback):
                continue
            stack = _stack(stat.traceback)
            size = max(1, stat.size_diff // max(1, stat.count_diff))
            rows.append((size, float(stat.size_diff), True, stack))
        return per_call(aggregate_sites(rows, limit * 4, alive_only=True), calls, limit)

    def concurrency(self) -> int:
        return _started[0]

    def own_bytes(self) -> int:
        return 0  # tracemalloc's own memory is subtracted where the native heap is read

    def is_new(self, obj: object) -> bool:
        return _tracemalloc().is_tracing() and _traced(obj)

    def census(self, token: _TmToken, limit: int) -> list[TypeGrowth]:
        if not _tracemalloc().is_tracing():
            return []

        def block_size(obj: object) -> int:
            return 0 if _traced(obj) else -1

        return census_objects(block_size, limit)
