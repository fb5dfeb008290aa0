"""The processes a test starts (subprocess, multiprocessing, fork; their children too), watched
while it runs: what ``mem_budget(..., children=True)`` adds to the test's own figures.

Each child is read for its private memory (``smaps_rollup`` on Linux, psutil elsewhere), not its
resident memory: a forked child maps its parent's pages and a subprocess its shared libraries,
which resident memory counts and which are not the child's. The kernel keeps no high-water
mark of private memory, so a child's peak is its highest sample.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import NamedTuple

from .platforms import IS_LINUX
from .process import proc_usage, psutil_usage


class ChildUsage(NamedTuple):
    """One process a test started: its private memory at its highest sample, and at the end
    of the test (None where it had exited by then)."""

    pid: int
    name: str
    peak: int
    private: int | None


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs: from ``/proc/<pid>/task/*/children`` on
    Linux (cheap), else psutil (which reads every process's parent)."""
    if IS_LINUX and os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        found: list[int] = []
        todo = [pid]
        while todo:
            parent = todo.pop()
            try:
                tasks = os.listdir(f"/proc/{parent}/task")
            except OSError:
                continue
            for task in tasks:
                try:
                    with open(f"/proc/{parent}/task/{task}/children", "rb") as handle:
                        kids = [int(k) for k in handle.read().split()]
                except (OSError, ValueError):
                    continue
                found.extend(kids)
                todo.extend(kids)
        return found
    import psutil

    try:
        return [kid.pid for kid in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _private(pid: int) -> int | None:
    """The private memory of a process now (None once it has exited, or where unreadable)."""
    try:
        return (proc_usage(f"/proc/{pid}") if IS_LINUX else psutil_usage(pid)).private
    except Exception:  # exited (FileNotFoundError, psutil.NoSuchProcess) or not ours to read
        return None


def _name(pid: int) -> str:
    try:
        if IS_LINUX:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                words = handle.read().split(b"\0")
            text = " ".join(w.decode(errors="replace") for w in words if w)
        else:
            import psutil

            text = " ".join(psutil.Process(pid).cmdline())
    except Exception:
        return "?"
    return text if len(text) <= 80 else text[:77] + "..."


class ChildWatch:
    """The processes this process starts while the watch runs: a thread samples each one's
    private memory every ``interval`` seconds, and ``stop()`` lists them. A spike shorter than
    the interval, or a child that starts and exits between two samples, is missed. ``pause``
    (the heap's) keeps the thread's own allocations out of the test's figures."""

    INTERVAL = 0.005

    def __init__(
        self, interval: float = INTERVAL, pause: Callable[[bool], object] | None = None
    ) -> None:
        self.interval = interval
        self._pause = pause
        self._before = set(descendants(os.getpid()))
        self._peaks: dict[int, int] = {}
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        for pid in descendants(os.getpid()):
            if pid in self._before:
                continue
            value = _private(pid)
            if value is None:
                continue
            # Read every time: a child sampled between fork and exec still has our command
            # (a zombie has none: the last one read stays).
            name = _name(pid)
            if name and name != "?":
                self._names[pid] = name
            if value > self._peaks.get(pid, -1):
                self._peaks[pid] = value

    def _run(self) -> None:
        if self._pause is not None:
            self._pause(True)
        self._ready.set()
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="memguard-children", daemon=True)
        self._thread.start()
        # Until the thread has paused itself, what it allocates would land in the test's
        # window, which opens next.
        self._ready.wait()

    def stop(self) -> list[ChildUsage]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        alive = set(descendants(os.getpid()))
        return [
            ChildUsage(
                pid, self._names.get(pid, "?"), peak, _private(pid) if pid in alive else None
            )
            for pid, peak in sorted(self._peaks.items())
        ]
