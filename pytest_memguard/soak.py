"""Long runs in seconds: a soak iterator that watches memory, wrapping counters, a fast clock.

Some leaks only appear after hours: a 16-bit sequence number wraps and a comparison stops
pruning a buffer; a producer allocates slightly faster than its consumer frees. The tools here
compress that time: start counters next to their wrap, make the clock run fast, run many
iterations and judge whether memory levelled off or kept growing.

The decision (measured in FIELD-NOTES): split the sampled curve into four windows and take the
median of each (a sawtooth from garbage collection does not move a median); flag only when each
of the last two windows grew by at least the threshold per iteration and the last still grew at
least half as much as the second (a warm-up ramp or a cache that fills decelerates).
"""

from __future__ import annotations

import array
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .census import Site
from .leaks import theil_sen
from .measurement import Engine
from .retainers import Retainers, find_retainers, new_objects

DEFAULT_SAMPLES = 50
MIN_SAMPLES = 8
BYTE_THRESHOLD = 1.0  # bytes per iteration
HALF = 0.5  # the last quarter must still grow at least half as fast as the second
DEFAULT_MARGIN = 100


def _median(values: list[int] | list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(frozen=True)
class SoakVerdict:
    growing: bool
    per_iteration: float
    window_medians: tuple[float, ...]
    reason: str


def judge_curve(
    positions: list[int], values: list[int], max_growth: int = 0, threshold: float = BYTE_THRESHOLD
) -> SoakVerdict:
    """Did ``values`` (sampled at iteration ``positions``) keep growing through the latter half
    instead of levelling off? ``max_growth`` is slack for the latter half, in bytes.

    Each quarter of the run gets a Theil-Sen slope: the one-off steps of amortised containers
    (a dict doubling its table) and the sawtooth of garbage collection are outliers to it."""
    if len(values) < MIN_SAMPLES:
        return SoakVerdict(False, 0.0, (), f"too few samples ({len(values)}) to judge")
    quarter = len(values) / 4
    bounds = [round(quarter * k) for k in range(5)]
    medians = tuple(_median(values[bounds[k] : bounds[k + 1]]) for k in range(4))
    slopes = []
    for k in range(4):
        xs = positions[bounds[k] : bounds[k + 1]]
        ys = values[bounds[k] : bounds[k + 1]]
        span = (xs[-1] - xs[0]) / max(1, len(xs) - 1) if len(xs) > 1 else 1.0
        slopes.append(theil_sen([float(y) for y in ys]) / max(span, 1e-9))
    latter = medians[3] - medians[1]
    per_iteration = (slopes[2] + slopes[3]) / 2
    centers = [_median([float(p) for p in positions[bounds[k] : bounds[k + 1]]]) for k in range(4)]
    # Both signals must agree: slopes (robust to steps) and window medians (robust to a
    # sawtooth, whose ramps each look like growth to a slope).
    medians_rise = all(
        medians[k] - medians[k - 1] >= threshold * max(1.0, centers[k] - centers[k - 1])
        for k in (2, 3)
    )
    growing = (
        slopes[2] >= threshold
        and slopes[3] >= threshold
        and slopes[3] >= HALF * slopes[1]
        and medians_rise
        and latter > max_growth
    )
    if growing:
        reason = "kept growing through the second half of the run"
    elif slopes[3] > 0 and latter > max_growth:
        reason = "growth is slowing down (levelling off)"
    else:
        reason = "levelled off"
    return SoakVerdict(growing, per_iteration, medians, reason)


@dataclass
class SoakResult:
    iterations: int
    positions: list[int] = field(default_factory=list)
    heap: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    private: list[int] = field(default_factory=list)
    verdict: SoakVerdict | None = None
    sites: list[Site] = field(default_factory=list)
    retainers: Retainers | None = None  # why the objects made in the run are still alive

    def message(self) -> str:
        from .messages import render_soak

        return render_soak(self)


class Soak:
    """Iterate ``range(iterations)`` while sampling memory at ``samples`` evenly spaced points;
    when exhausted, raise ``AssertionError`` if memory kept growing instead of levelling off.

    Sampling happens between chunks of a plain ``range`` chained in C, so the loop itself costs
    what a bare ``for i in range(n)`` costs; a sample is one read of the heap counters (about a
    microsecond) and of statm.
    """

    def __init__(
        self,
        engine: Engine,
        iterations: int,
        samples: int | None = None,
        max_growth: int = 0,
        on_result: Callable[[SoakResult], None] | None = None,
    ) -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"soak iterations must be a whole number >= 1, got {iterations!r}")
        if samples is not None and (
            isinstance(samples, bool) or not isinstance(samples, int) or samples < MIN_SAMPLES
        ):
            raise ValueError(
                f"soak samples must be a whole number >= {MIN_SAMPLES}, got {samples!r}"
            )
        if max_growth < 0:
            raise ValueError(f"soak max_growth must not be negative, got {max_growth!r}")
        self.engine = engine
        self.iterations = iterations
        self.samples = min(samples or DEFAULT_SAMPLES, iterations)
        self.max_growth = max_growth
        self.on_result = on_result
        self.result = SoakResult(iterations)

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(self._chunks())

    def _chunks(self) -> Iterator[range]:
        heap = self.engine.heap
        engine = self.engine
        result = self.result
        n = self.samples
        # C arrays, allocated before the window opens: storing a sample must not allocate, or
        # the soak would see its own bookkeeping grow.
        positions = array.array("q", bytes(8 * n))
        live = array.array("q", bytes(8 * n))
        blocks = array.array("q", bytes(8 * n))
        private = array.array("q", bytes(8 * n))
        bounds = [
            self.iterations if k == n else round(self.iterations * k / n) for k in range(1, n + 1)
        ]
        chunks = [range(lo, hi) for lo, hi in zip([0, *bounds[:-1]], bounds)]
        token = heap.begin()
        try:
            for k in range(n):
                yield chunks[k]
                reading = heap.read(token)
                positions[k] = bounds[k]
                live[k] = reading.live or 0
                blocks[k] = reading.live_blocks or 0
                was = heap.pause(True)
                try:
                    private[k] = engine.resident_and_anon()[1]
                finally:
                    heap.pause(was)
            result.positions = positions.tolist()
            result.heap = live.tolist()
            result.blocks = blocks.tolist()
            result.private = private.tolist()
            verdict = judge_curve(result.positions, result.heap, self.max_growth)
            result.verdict = verdict
            if verdict.growing:
                result.sites = heap.sites(token, 5, alive_only=True)
                grown = heap.census(token, 3)
                result.retainers = find_retainers(new_objects(heap.is_new, grown))
        finally:
            heap.end(token)
        if self.on_result is not None:
            self.on_result(result)
        if result.verdict is not None and result.verdict.growing:
            raise AssertionError(result.message())


def counter(bits: int, start: str | int = "near_wrap", margin: int | None = None) -> Iterator[int]:
    """Integers modulo ``2**bits``. ``near_wrap`` starts ``margin`` before the wrap (default 100,
    or half the range for tiny counters), so a short run crosses it; an int starts there."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"counter bits must be a whole number >= 1, got {bits!r}")
    modulus = 1 << bits
    if margin is not None and (
        isinstance(margin, bool) or not isinstance(margin, int) or not 1 <= margin <= modulus
    ):
        raise ValueError(f"counter margin must be a whole number in [1, 2**{bits}], got {margin!r}")
    if start == "near_wrap":
        first = modulus - (margin if margin is not None else min(DEFAULT_MARGIN, modulus // 2 or 1))
    elif isinstance(start, int) and not isinstance(start, bool):
        if not 0 <= start < modulus:
            raise ValueError(f"counter start must be in [0, 2**{bits}), got {start!r}")
        first = start
    else:
        raise ValueError(f"counter start must be 'near_wrap' or an int, got {start!r}")
    return ((first + i) % modulus for i in itertools.count())


_CLOCKS = ("time", "monotonic", "perf_counter")


@contextmanager
def fast_clock(step: float = 60.0) -> Iterator[None]:
    """Make ``time.time``, ``time.monotonic``, ``time.perf_counter`` (and ``_ns`` forms) advance
    ``step`` seconds on every read, so a TTL or a timeout of days passes in a second.

    Each clock starts from its real value and only moves forward; reads from several threads are
    serialised so no two get the same value. Only lookups through the ``time`` module see it
    (``from time import time`` done earlier keeps the real function).
    """
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
        raise ValueError(f"fast_clock step must be a number of seconds > 0, got {step!r}")
    lock = threading.Lock()
    step_ns = int(step * 1_000_000_000)
    saved: dict[str, Callable[[], Any]] = {}
    now_ns: dict[str, int] = {}
    for name in _CLOCKS:
        saved[name] = getattr(time, name)
        saved[f"{name}_ns"] = getattr(time, f"{name}_ns")
        now_ns[name] = saved[f"{name}_ns"]()

    def make(name: str, as_ns: bool) -> Callable[[], Any]:
        def read() -> Any:
            with lock:
                now_ns[name] += step_ns
                value = now_ns[name]
            return value if as_ns else value / 1e9

        read.__name__ = f"{name}_ns" if as_ns else name
        read.__doc__ = f"fast_clock: time.{read.__name__} advancing {step}s per read"
        return read

    try:
        for name in _CLOCKS:
            setattr(time, name, make(name, False))
            setattr(time, f"{name}_ns", make(name, True))
        yield
    finally:
        for name, function in saved.items():
            setattr(time, name, function)
