"""Another process's memory: a server under test, a subprocess, a forked worker.

Servers written in C, C++ or OCaml are often tested from Python: the test drives the server over
a socket and the memory that matters is the server's. ``watch(target)`` reads it: ``usage()``
(virtual, physical, private, proportional, swapped, peak), ``peak()`` over a block of the test,
and ``soak()``, an iterator the test's own loop drives, sampling the other process's private
memory and judged by the same plateau-or-growth rule as a soak of this process.

On Linux everything is read from ``/proc/<pid>``: ``status`` (cheap) and ``smaps_rollup``
(private and proportional; it costs the kernel about 10 µs per MB resident). The peak over a
block resets the kernel's high-water mark by writing ``5`` to ``/proc/<pid>/clear_refs``, which
the kernel allows for a process of the same user; where it does not, the peak is sampled from
a thread every millisecond and says so. Elsewhere psutil gives what the platform can.
"""

from __future__ import annotations

import array
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .children import descendants
from .platforms import IS_LINUX
from .process import MemoryUsage, PeakSampler, kib_fields, proc_usage, psutil_usage
from .soak import DEFAULT_SAMPLES, SoakVerdict, judge_curve
from .units import format_size, parse_size

_FIELDS = ("virtual", "physical", "private", "proportional", "swapped", "peak")


class ProcessGone(Exception):
    """The watched process exited; the message names it."""


def _pid_of(target: object) -> int:
    """The pid of an int, a ``subprocess.Popen``, a ``multiprocessing.Process`` or a
    ``psutil.Process``."""
    if isinstance(target, bool):
        raise TypeError(f"watch(): expected a pid or a process, got {target!r}")
    if isinstance(target, int):
        if target <= 0:
            raise ValueError(f"watch(): a pid is a positive number, got {target}")
        return target
    pid = getattr(target, "pid", None)
    if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
        return pid
    raise TypeError(
        f"watch(): expected a pid, a subprocess.Popen, a multiprocessing.Process or a "
        f"psutil.Process (started), got {target!r}"
    )


def _sum(readings: list[MemoryUsage]) -> MemoryUsage:
    """Figures added up over processes; a figure any of them lacks is ``None``."""
    totals: dict[str, int | None] = {}
    for name in _FIELDS:
        values = [getattr(r, name) for r in readings]
        totals[name] = None if any(v is None for v in values) else sum(values)
    return MemoryUsage(**totals)


@dataclass
class PeakReading:
    """The highest physical memory of the watched process(es) over a block, once it exits."""

    peak: int | None = None
    start: int | None = None  # physical memory when the block began
    method: str = ""  # "clear_refs" (the kernel's exact mark) or how it was sampled

    def pretty(self) -> str:
        return (
            f"peak {format_size(self.peak)} (physical; {format_size(self.start)} at the start), "
            f"{self.method}"
        )


@dataclass
class ProcessSoakResult:
    pid: int
    iterations: int
    positions: list[int] = field(default_factory=list)
    private: list[int] = field(default_factory=list)
    verdict: SoakVerdict | None = None

    def message(self) -> str:
        from .messages import soak_verdict, sparkline

        return "\n".join(
            [
                *soak_verdict(self.verdict, self.iterations, f"memory of process {self.pid}"),
                f"  private  {sparkline(self.private)}  (process {self.pid}, USS)",
            ]
        )


class WatchedProcess:
    """Another process (and with ``children``, the processes it started), read on demand."""

    def __init__(self, target: object, children: bool = False) -> None:
        self.pid = _pid_of(target)
        self.children = children
        if not self._alive(self.pid):
            raise ProcessGone(f"watch(): no process with pid {self.pid}")

    @staticmethod
    def _alive(pid: int) -> bool:
        if IS_LINUX:
            return os.path.exists(f"/proc/{pid}")
        import psutil

        return bool(psutil.pid_exists(pid))

    def pids(self) -> list[int]:
        """The watched process, then (with ``children``) its descendants alive now."""
        if not self.children:
            return [self.pid]
        if not self._alive(self.pid):
            raise ProcessGone(f"process {self.pid} has exited")
        return [self.pid, *descendants(self.pid)]

    def _read(self, pid: int) -> MemoryUsage:
        try:
            return proc_usage(f"/proc/{pid}") if IS_LINUX else psutil_usage(pid)
        except (FileNotFoundError, ProcessLookupError):
            raise ProcessGone(f"process {pid} has exited") from None
        except Exception as exc:
            if type(exc).__name__ == "NoSuchProcess":
                raise ProcessGone(f"process {pid} has exited") from None
            raise

    def usage(self) -> MemoryUsage:
        """Every figure of the process (summed over the group with ``children``: the group's
        peak is then the sum of each one's high-water mark, an upper bound)."""
        readings = []
        for pid in self.pids():
            try:
                readings.append(self._read(pid))
            except ProcessGone:
                if pid == self.pid:
                    raise
                # a child that exited between the listing and its reading holds nothing
        return _sum(readings)

    def physical(self) -> int:
        """Resident bytes of the watched process(es) now: the cheap reading (``status`` or
        psutil's RSS, no ``smaps_rollup``) that a peak sampler can take every millisecond. A
        process that exited meanwhile counts as 0."""
        total = 0
        for pid in self.pids():
            try:
                if IS_LINUX:
                    total += kib_fields(f"/proc/{pid}/status", ("VmRSS",)).get("VmRSS", 0)
                else:
                    import psutil

                    total += int(psutil.Process(pid).memory_info().rss)
            except (OSError, ProcessGone):
                continue
            except Exception as exc:  # psutil.NoSuchProcess
                if type(exc).__name__ != "NoSuchProcess":
                    raise
        return total

    def _reset_peak(self) -> bool:
        """Reset the kernel's high-water mark of every watched process; False where the
        kernel does not let us (another user's process, not Linux)."""
        if not IS_LINUX:
            return False
        try:
            for pid in self.pids():
                with open(f"/proc/{pid}/clear_refs", "w") as handle:
                    handle.write("5")
        except OSError:
            return False
        return True

    @contextmanager
    def peak(self, limit: int | str | None = None) -> Iterator[PeakReading]:
        """The highest physical memory over the block (``.peak`` once it exits). With
        ``limit`` (bytes or ``"50MB"``), exceeding it fails the test (``AssertionError``)."""
        budget = None if limit is None else parse_size(limit, "watch().peak limit")
        reading = PeakReading(start=self.physical())
        exact = self._reset_peak()
        sampler = None if exact else PeakSampler(self.physical)
        if sampler is not None:
            sampler.reset()
            sampler.acquire()
        try:
            yield reading
        finally:
            if sampler is not None:
                sampler.release()
                reading.peak = max(sampler.high(), self.physical())
                reading.method = "sampled every 1 ms (no clear_refs)"
            else:
                reading.peak = self.usage().peak
                reading.method = "clear_refs"
        if budget is not None and reading.peak is not None and reading.peak > budget:
            raise AssertionError(
                f"process {self.pid}: peak {format_size(reading.peak)} exceeds "
                f"{format_size(budget)} by {format_size(reading.peak - budget)} "
                f"({reading.method})"
            )

    def soak(
        self, iterations: int, samples: int | None = None, max_growth: int | str = 0
    ) -> Iterator[int]:
        """``range(iterations)`` for the test's loop; samples the process's private memory
        as it goes and, when exhausted, fails (``AssertionError``) if it kept growing through
        the second half instead of levelling off. The test's loop drives the other process
        (a request per iteration); the sample is taken at the start of the next one."""
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"soak iterations must be a whole number >= 1, got {iterations!r}")
        slack = parse_size(max_growth, "watch().soak max_growth") if max_growth else 0
        count = min(samples or DEFAULT_SAMPLES, iterations)
        result = ProcessSoakResult(self.pid, iterations)
        points = {round(iterations * k / count) for k in range(1, count + 1)}
        positions = array.array("q")
        private = array.array("q")
        for i in range(iterations):
            yield i
            if i + 1 in points:
                value = self.usage().private
                if value is None:
                    raise AssertionError(
                        f"process {self.pid}: its private memory cannot be read here "
                        "(another user's process, or a platform without it)"
                    )
                positions.append(i + 1)
                private.append(value)
        result.positions = positions.tolist()
        result.private = private.tolist()
        result.verdict = judge_curve(result.positions, result.private, slack)
        if result.verdict.growing:
            raise AssertionError(result.message())


def watch(target: object, *, children: bool = False) -> WatchedProcess:
    """Watch another process: a pid, a ``subprocess.Popen``, a ``multiprocessing.Process`` or
    a ``psutil.Process``; ``children=True`` adds the processes it started (each reading sums
    them)."""
    return WatchedProcess(target, children)
