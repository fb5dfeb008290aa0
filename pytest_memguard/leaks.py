"""Leak checks: run code many times, read memory after each call, judge the trend.

A leak shows over repetitions, not in one run. What decides is the series of readings taken
after each call *with the interpreter's own caches cleared and garbage collected* (what
CPython's refleak hunter restores between runs): without that cleanup, clean code drifts by a
block or two per call and every rule has false positives; with it, clean code reads exactly 0.

Rules (measured on a corpus of 30 functions, see docs/leaks.md):

- blocks: growth on *every* judged call (CPython's rule), or a robust trend: Theil-Sen slope of
  at least 0.2 blocks per call, R^2 >= 0.9 and the second half still growing at least half as
  fast as the first (a cache that fills and stops is not a leak);
- bytes and native heap: the same trend rule with a per-call threshold (bytes catch a list that
  grows a slot per call, which adds no block);
- file descriptors: any change across the judged calls.

A suspect is not failed at once: the run escalates (x2, x4, x8 calls) and judges the last
``iterations`` calls each time, so a bounded cache that is still filling passes once it is full,
while a real leak stays suspect at every stage.
"""

from __future__ import annotations

import _tracemalloc  # the C module: no pickle import, same answers
import abc as abc_module
import array
import copyreg
import functools
import gc
import importlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, cast

from .census import Site, TypeGrowth, census_types
from .measurement import Engine
from .process import open_fds
from .retainers import (
    Retainers,
    container_length,
    container_lengths,
    find_retainers,
    growth_retainers,
    new_objects,
)

STAGES = (1, 2, 4, 8)
# The screen that runs first when the number of calls was left at its default: it passes a test
# as soon as QUIET calls in a row moved no reading, and gives up after SCREEN calls. QUIET is
# what the rules below can judge: a trend needs a slope of 0.2 blocks a call, one block in 5
# calls, so growth they would catch moves at least one reading in any 5 calls in a row. Growth
# that stops (a cache filled, a first-use cost paid late) and then stays still for QUIET calls
# is not a leak.
QUIET = 5
SCREEN = 20
# The time a screened check of one test may take: TIME_RUNS more runs of the test (timed by its
# first repeated run), or a floor where that is longer: SCREEN_FLOOR seconds for the screen, and
# SUSPECT_FLOOR for a test whose readings moved in it, which may need the whole escalation (a
# leak in a test of 1 ms is reported after ~250 runs, ~0.25 s) to be told from a cache that
# fills. Measured on cachetools, whose cost is a few slow tests that copy and pickle caches
# and move for ~60 runs: a floor of 1 s made the check 6.8x a plain run, 0.5 s 4.7x.
TIME_RUNS = 4.0
SCREEN_FLOOR = 0.05
SUSPECT_FLOOR = 0.5
# How far past its budget a stage may run before it stops: a stage is afforded at the mean time
# of a run so far, so a steady test ends it a little past the budget now and then, while a test
# whose runs keep slowing down must not run on.
OVERRUN = 2.0
# The share of a check's wall time that counts against its budget where it is more than its CPU
# time: a test that waits is timed, and a machine loaded four times over still gets a CPU-bound
# test's whole budget.
WALL_SHARE = 0.25
# The clocks as they are at import: a test may patch time's (freezegun, the soak's fast clock)
# and leave them patched past its teardown.
_cpu_clock, _wall_clock = time.process_time, time.perf_counter
# A suspect that grew on (almost) every run of a stage may take this many times its budget:
# the corpus's C-level leak, on 3.14 under -n 2, ran out of 0.5 s of CPU before its verdict.
STRONG_SUSPECT = 4.0
EVERY_CALL = frozenset({"grew on every call", "grew on almost every call"})
BLOCK_SLOPE = 0.2
BYTE_SLOPE = 1.0
NATIVE_SLOPE = 16.0
MIN_R2 = 0.9
HALF_RATIO = 0.5
RISING_SHARE = 0.9
LOOSE_R2 = 0.8
LOOSE_HALF_RATIO = 0.25


@dataclass(frozen=True)
class LeakSettings:
    iterations: int = 30
    # After the test's own run (a warm run already, with its first-use costs paid): two more,
    # the first of them the check's own first pass through its loop (which frees a few blocks
    # of its own: one unjudged run is not enough to leave them out of the judged series).
    warmup: int = 2
    tolerance: int = 0  # bytes per call that may grow before a byte trend counts
    stages: tuple[int, ...] = STAGES
    # The most calls after warm-up that the screen runs (see QUIET); None runs ``iterations``
    # in full (what a user who chose the number of calls gets), with no time budget.
    screen: int | None = SCREEN
    time_runs: float = TIME_RUNS
    screen_floor: float = SCREEN_FLOOR
    suspect_floor: float = SUSPECT_FLOOR


class LeakSettingsError(ValueError):
    pass


# More repetitions than anyone waits for: the series arrays are preallocated per call.
MAX_REPETITIONS = 100_000


def parse_leak_marker(
    args: tuple[object, ...], kwargs: dict[str, object], where: str, defaults: LeakSettings
) -> LeakSettings:
    """``mem_leak_check(iterations=None, warmup=None, *, tolerance=None)`` on test ``where``."""
    from .units import SizeError, parse_size

    unknown = sorted(set(kwargs) - {"iterations", "warmup", "tolerance"})
    if unknown:
        raise LeakSettingsError(
            f"invalid mem_leak_check on {where}: unknown keyword {', '.join(unknown)}; "
            "expected iterations, warmup, tolerance"
        )
    if len(args) > 2:
        raise LeakSettingsError(
            f"invalid mem_leak_check on {where}: takes at most iterations and warmup "
            f"positionally, got {len(args)} arguments"
        )
    values: dict[str, object] = dict(zip(("iterations", "warmup"), args))
    for key in ("iterations", "warmup"):
        if key in values and key in kwargs:
            raise LeakSettingsError(f"invalid mem_leak_check on {where}: {key} given twice")
    values.update(kwargs)
    result: dict[str, Any] = {}
    for key, minimum in (("iterations", 1), ("warmup", 0)):
        value = values.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not minimum <= value <= MAX_REPETITIONS
        ):
            raise LeakSettingsError(
                f"invalid mem_leak_check {key} on {where}: {value!r}; expected a whole number "
                f"from {minimum} to {MAX_REPETITIONS:,}"
            )
        result[key] = value
    if values.get("tolerance") is not None:
        try:
            result["tolerance"] = parse_size(
                values["tolerance"], f"mem_leak_check tolerance on {where}"
            )
        except SizeError as exc:
            raise LeakSettingsError(str(exc)) from None
    return LeakSettings(
        iterations=result.get("iterations", defaults.iterations),
        warmup=result.get("warmup", defaults.warmup),
        tolerance=result.get("tolerance", defaults.tolerance),
        stages=defaults.stages,
        screen=None if "iterations" in result else defaults.screen,
    )


# ---------------------------------------------------------------------------- decision rules


def theil_sen(values: Sequence[float]) -> float:
    """Median of pairwise slopes: one outlier (a gc, a cache refill) cannot tilt it."""
    slopes = sorted(
        (values[j] - values[i]) / (j - i)
        for i in range(len(values))
        for j in range(i + 1, len(values))
    )
    if not slopes:
        return 0.0
    mid = len(slopes) // 2
    return slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2


def r_squared(values: Sequence[float], slope: float) -> float:
    """How much of the variation the line explains (0 when there is no variation at all)."""
    n = len(values)
    if n < 3:
        return 0.0
    residuals = sorted(v - slope * i for i, v in enumerate(values))
    intercept = residuals[n // 2]
    mean = sum(values) / n
    total = sum((v - mean) ** 2 for v in values)
    if total == 0:
        return 0.0
    error = sum((v - (intercept + slope * i)) ** 2 for i, v in enumerate(values))
    return max(0.0, 1.0 - error / total)


@dataclass(frozen=True)
class Trend:
    slope: float
    r2: float
    first_half: float
    second_half: float
    last_quarter: float

    def growing(self, threshold: float) -> bool:
        """The field-notes rule for a window of calls."""
        return (
            self.slope >= threshold
            and self.r2 >= MIN_R2
            and self.second_half > 0
            and self.second_half >= HALF_RATIO * self.first_half
        )

    def still_growing(self, threshold: float) -> bool:
        """For a whole run of byte readings: amortised growth comes in steps whose first one is
        large (a block from before the run is counted whole when it is first reallocated), so
        the fit is looser; what separates a leak from a cache that filled is that the growth
        goes on to the end."""
        return (
            self.slope >= threshold
            and self.r2 >= LOOSE_R2
            and self.last_quarter > 0
            and self.second_half >= LOOSE_HALF_RATIO * self.first_half
        )


def staircase(values: Sequence[float], threshold: float) -> bool:
    """Amortised growth: never shrinks, grows in at least three steps, still stepping in the
    second half of the run (a cache that filled stepped only early), by ``threshold`` per call
    on average. A list that grows one slot per call looks exactly like this."""
    deltas = [b - a for a, b in zip(values, values[1:])]
    if not deltas or any(d < 0 for d in deltas):
        return False
    steps = [i for i, d in enumerate(deltas) if d > 0]
    return (
        len(steps) >= 3
        and steps[-1] >= len(deltas) // 2
        and (values[-1] - values[0]) / len(deltas) >= threshold
    )


def trend(values: Sequence[float]) -> Trend:
    slope = theil_sen(values)
    mid = len(values) // 2
    quarter = len(values) * 3 // 4
    return Trend(
        slope,
        r_squared(values, slope),
        float(values[mid] - values[0]),
        float(values[-1] - values[mid]),
        float(values[-1] - values[quarter]),
    )


@dataclass(frozen=True)
class MetricFinding:
    metric: str
    per_call: float
    reason: str


def judge(
    series: Mapping[str, Sequence[int]],
    tolerance: int = 0,
    full: Mapping[str, Sequence[int]] | None = None,
) -> list[MetricFinding]:
    """Findings on one judged window: ``series[metric]`` holds a reading before the first judged
    call and one after each. Empty when nothing grows.

    Byte figures are judged over ``full`` (every call after warm-up) when given: amortised
    growth (a list's array grows by 1/8 at a time) moves in steps that one short window can miss
    entirely, while over the whole run the staircase is a clear line."""
    findings: list[MetricFinding] = []
    blocks = series.get("blocks")
    if blocks is not None and len(blocks) > 1:
        deltas = [b - a for a, b in zip(blocks, blocks[1:])]
        t = trend(blocks)
        if all(d >= 1 for d in deltas):
            findings.append(
                MetricFinding(
                    "blocks", (blocks[-1] - blocks[0]) / len(deltas), "grew on every call"
                )
            )
        elif t.growing(BLOCK_SLOPE):
            findings.append(MetricFinding("blocks", t.slope, "steady upward trend"))
    for metric, threshold in (("bytes", BYTE_SLOPE), ("native", NATIVE_SLOPE)):
        threshold = max(threshold, float(tolerance))
        window = series.get(metric)
        if window is not None and len(window) > 2:
            deltas = sorted(b - a for a, b in zip(window, window[1:]))
            # CPython's every-call rule, tolerant of a one-off jump elsewhere in the heap.
            if (
                sum(d > 0 for d in deltas) >= RISING_SHARE * len(deltas)
                and deltas[len(deltas) // 2] >= threshold
            ):
                findings.append(
                    MetricFinding(
                        metric, float(deltas[len(deltas) // 2]), "grew on almost every call"
                    )
                )
                continue
        values = (full or series).get(metric)
        if values is None or len(values) < 3:
            continue
        t = trend(values)
        if t.growing(threshold) if full is None else t.still_growing(threshold):
            findings.append(MetricFinding(metric, t.slope, "steady upward trend"))
        elif (
            metric == "bytes"
            and full is not None
            and window is not None
            and window[-1] > window[0]  # still stepping in the judged calls
            and staircase(values, threshold)
        ):
            per_call = (values[-1] - values[0]) / (len(values) - 1)
            findings.append(MetricFinding(metric, per_call, "grows in steps (amortised)"))
    fds = series.get("fds")
    if fds is not None and len(fds) > 1 and any(b != a for a, b in zip(fds, fds[1:])):
        findings.append(
            MetricFinding("fds", (fds[-1] - fds[0]) / (len(fds) - 1), "changed across calls")
        )
    if tolerance and findings:
        # With a tolerance, the byte figure decides: blocks alone may be a small, allowed cost.
        growth = series.get("bytes")
        if growth is not None and len(growth) > 1:
            per_call = (growth[-1] - growth[0]) / (len(growth) - 1)
            if per_call <= tolerance and not any(f.metric == "fds" for f in findings):
                return []
    return findings


# ---------------------------------------------------------------------------- interpreter cleanup


class InterpreterCleanup:
    """What CPython's refleak hunter restores and clears between runs, so that caches the
    interpreter fills on its own (type cache, re, typing, linecache, ABC registries, warning
    registries) do not look like leaks. Only modules already imported are touched.

    Done naively (as refleak.py does) this costs ~200 us a call, most of it re-registering every
    ABC's virtual subclasses and looking for ``__warningregistry__`` in every module: more than
    the rest of the leak loop together. Registries are restored only when ``abc``'s cache token
    says something was registered, and warning registries are emptied through the filters'
    version instead of a walk over every module: ~40 us, same effect."""

    def __init__(self) -> None:
        self._filters = list(warnings.filters)
        self._dispatch = copyreg.dispatch_table.copy()
        self._importer_cache = sys.path_importer_cache.copy()
        # Import machinery's tables that only gain entries, each with its entries as they
        # were: put back when a run added some (a length test, since pytest's table has an
        # entry for every module imported). zipimport's directory of each archive it read,
        # which refleak.py puts back too: a test importing from a new temporary archive each
        # run adds one each run (jinja2's ModuleLoader tests: 37 blocks a run). And pytest's
        # assertion-rewriting hook's note of each module name imported, the framework's
        # bookkeeping (jinja2's ModuleLoader names its template modules after the loader's id).
        self._growing = [(table, dict(table)) for table in _import_tables()]
        self._abcs = self._abc_registries()
        self._abc_clears = [
            clear
            for cls in self._abcs
            if (clear := getattr(cls, "_abc_caches_clear", None)) is not None
        ]
        self._token = abc_module.get_cache_token()
        self._modules = -1
        self._ctypes_sizes = (-1, -1)
        self._namespaces: list[dict[str, Any]] = []
        self._mutated = _filters_mutated()
        # 3.13+ clears the type cache and the JIT's caches together (the older name is
        # deprecated for removal: looked up only where the newer one is missing).
        self._clear_type_cache: Callable[[], None] = (
            getattr(sys, "_clear_internal_caches", None)
            or getattr(sys, "_clear_type_cache", None)
            or _nothing
        )

    @staticmethod
    def _abc_classes() -> list[type]:
        abc_module = sys.modules.get("collections.abc")
        if abc_module is None:  # pragma: no cover - always imported by pytest
            return []
        import inspect

        classes = []
        for name in getattr(abc_module, "__all__", ()):
            cls = getattr(abc_module, name, None)
            if isinstance(cls, type) and inspect.isabstract(cls):
                classes.append(cls)
        return classes

    def _abc_registries(self) -> dict[type, Any]:
        """Every abstract collections.abc class and its subclasses, with the weak references of
        its registry (None where the registry cannot be read)."""
        try:
            _get_dump = importlib.import_module("_abc")._get_dump
        except (ImportError, AttributeError):  # pragma: no cover - pure-Python abc
            _get_dump = None
        registries: dict[type, Any] = {}
        for abc in self._abc_classes():
            for cls in [*abc.__subclasses__(), abc]:
                registries[cls] = _get_dump(cls)[0] if _get_dump is not None else None
        return registries

    def _restore_abc_registries(self) -> None:
        for cls, refs in self._abcs.items():
            if refs is None:
                continue
            clear = getattr(cls, "_abc_registry_clear", None)
            if clear is not None:
                clear()
            for ref in refs:
                target = ref()
                if target is not None:
                    cast(abc_module.ABCMeta, cls).register(target)

    def _warning_registries(self) -> list[dict[str, Any]]:
        if len(sys.modules) != self._modules:
            self._modules = len(sys.modules)
            # The namespace, not getattr(): a module's __getattr__ hook would run (and build an
            # exception) for every module on every call.
            self._namespaces = [
                namespace
                for module in list(sys.modules.values())
                if isinstance(namespace := getattr(module, "__dict__", None), dict)
            ]
        return self._namespaces

    def _reset_ctypes(self) -> None:
        """ctypes' reset builds two pointer types (48 us a call, measured): only when its
        caches changed since the last reset."""
        ctypes_module = sys.modules.get("ctypes")
        if ctypes_module is None or not hasattr(ctypes_module, "_reset_cache"):
            return

        def sizes() -> tuple[int, int]:
            # 3.14's pointer-type cache is an object without a length (pointer types are
            # kept on their target type): it does not grow per call, so it counts as empty.
            return (
                _length(getattr(ctypes_module, "_pointer_type_cache", ())),
                _length(getattr(ctypes_module, "_c_functype_cache", ())),
            )

        if sizes() != self._ctypes_sizes:
            ctypes_module._reset_cache()
            self._ctypes_sizes = sizes()

    def __call__(self) -> None:
        filters = cast("list[Any]", warnings.filters)
        filters[:] = self._filters
        if self._mutated is not None:
            # Every __warningregistry__ carries the filters' version and is emptied by the next
            # warning that finds it stale, so bumping the version clears them all, lazily.
            self._mutated()
        else:  # pragma: no cover - a future warnings module without the hook
            for namespace in self._warning_registries():
                registry = namespace.get("__warningregistry__")
                if registry and isinstance(registry, dict):
                    registry.clear()
        copyreg.dispatch_table.clear()
        copyreg.dispatch_table.update(self._dispatch)
        sys.path_importer_cache.clear()
        sys.path_importer_cache.update(self._importer_cache)
        for table, saved in self._growing:
            if len(table) != len(saved):
                table.clear()
                table.update(saved)
        if abc_module.get_cache_token() != self._token:  # something was registered
            self._restore_abc_registries()
            self._token = abc_module.get_cache_token()
        for clear in self._abc_clears:
            clear()
        _clear_module_caches()
        self._reset_ctypes()
        self._clear_type_cache()


def _nothing() -> None:
    pass


def _import_tables() -> list[dict[Any, Any]]:
    """zipimport's table of archive directories and the per-module-name notes of pytest's
    assertion-rewriting hooks on ``sys.meta_path``: private attributes, feature-detected."""
    tables = [getattr(sys.modules.get("zipimport"), "_zip_directory_cache", None)]
    tables.extend(getattr(finder, "_marked_for_rewrite_cache", None) for finder in sys.meta_path)
    return [table for table in tables if isinstance(table, dict)]


def _length(container: object) -> int:
    try:
        return len(container)  # type: ignore[arg-type]
    except TypeError:
        return 0


def _filters_mutated() -> Callable[[], None] | None:
    """What bumps the warning filters' version (emptying every ``__warningregistry__`` the
    next warning finds stale): ``warnings._filters_mutated`` up to 3.13; 3.14 renamed it
    ``_filters_mutated_lock_held``, to be called under ``warnings._lock``."""
    mutated: Callable[[], None] | None = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        return mutated
    held: Callable[[], None] | None = getattr(warnings, "_filters_mutated_lock_held", None)
    lock = getattr(warnings, "_lock", None)
    if held is None or lock is None:
        return None

    def bump() -> None:
        with lock:
            held()

    return bump


def _clear_module_caches() -> None:
    modules = sys.modules
    if (re_module := modules.get("re")) is not None:
        re_module.purge()
    if (typing := modules.get("typing")) is not None:
        for clear in getattr(typing, "_cleanups", ()):
            clear()
    if (struct := modules.get("struct")) is not None:
        struct._clearcache()
    if (parse := modules.get("urllib.parse")) is not None:
        parse.clear_cache()
    if (linecache := modules.get("linecache")) is not None:
        linecache.clearcache()
    if (mimetypes := modules.get("mimetypes")) is not None and mimetypes.inited:
        mimetypes._default_mime_types()
    if (filecmp := modules.get("filecmp")) is not None:
        filecmp._cache.clear()
    if (strptime := modules.get("_strptime")) is not None:
        strptime._regex_cache.clear()
    if (fnmatch := modules.get("fnmatch")) is not None:
        compile_pattern = getattr(fnmatch, "_compile_pattern", None)
        if compile_pattern is not None and hasattr(compile_pattern, "cache_clear"):
            compile_pattern.cache_clear()
    # lxml keeps each thread's parser messages in a bounded log: a test whose parse warns
    # fills it by an entry every few runs, still growing when the check ended (22 of
    # soupsieve 4.1.4's tests: +1 _LogEntry every third run).
    if (clear_log := getattr(modules.get("lxml.etree"), "clear_error_log", None)) is not None:
        clear_log()
    clear_hypothesis_caches()


def clear_hypothesis_caches() -> None:
    """Empty hypothesis' memo caches: the framework's bookkeeping, not the test's. The
    strategies a test builds (a bounded cache, 1,024 entries, that a property test making
    classes per example, attrs', fills by a few entries a run for ~300 runs; cleared through
    hypothesis' own function) and the codepoint intervals of each set of Unicode categories.
    A gated window starts with them empty too, so that what a test adds to them does not depend
    on the tests before it. Private names, feature-detected."""
    modules = sys.modules
    strategies = modules.get("hypothesis.strategies._internal.utils")
    if (clear_strategies := getattr(strategies, "clear_strategy_cache", None)) is not None:
        clear_strategies()
    charmap = modules.get("hypothesis.internal.charmap")
    intervals = getattr(charmap, "category_index_cache", None)
    if isinstance(intervals, dict):
        empty: frozenset[str] = frozenset()
        base = intervals.get(empty)  # the empty set's entry ends its recursion: kept
        intervals.clear()
        if base is not None:
            intervals[empty] = base
    limited = getattr(charmap, "limited_category_index_cache", None)
    if isinstance(limited, dict):
        limited.clear()


# ---------------------------------------------------------------------------- native heap


@functools.cache
def native_allocated() -> Callable[[], int] | None:
    """glibc's allocated-bytes figure: the only place a C-level malloc leak shows. Loaded on
    first use (ctypes is not imported at startup). Where the C library has it (glibc 2.33+),
    whichever way the OS is read."""
    if os.name == "nt":
        return None
    import ctypes

    class _MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        libc = ctypes.CDLL(None)
        function = libc.mallinfo2
    except (OSError, AttributeError):  # glibc < 2.33, musl
        return None
    function.restype = _MallInfo2
    function.argtypes = []

    def allocated() -> int:
        info = function()
        # tracemalloc keeps its traces in the C heap: its own growth is not the user's.
        own = _tracemalloc.get_tracemalloc_memory() if _tracemalloc.is_tracing() else 0
        return int(info.uordblks) + int(info.hblkhd) - own

    return allocated


# glibc's per-thread malloc cache counts its chunks as in use, and over a long check it can
# fill slowly: a clean test's native figure then rises by tens of bytes a run with every heap
# figure flat (jsonschema: 1-9 of 7,288 tests a run). It can only be turned off when a process
# starts, so a failure on that figure alone is checked again in a child started without it.
THREAD_CACHE_OFF = "glibc.malloc.tcache_count=0"


def native_only(findings: Sequence[MetricFinding]) -> bool:
    """A verdict of growth in glibc's figure alone, every heap figure flat."""
    return bool(findings) and all(f.metric == "native" for f in findings)


class SecondLook(NamedTuple):
    """A native-only failure checked again in such a child: whether it passed there, and the
    sentence that says what that means."""

    passed: bool
    note: str


def without_thread_cache(tunables: str | None) -> str | None:
    """``GLIBC_TUNABLES`` (its value here, or None) with the per-thread cache off, the user's
    other tunables kept; None where the cache is off already."""
    kept = [t for t in (tunables or "").split(":") if t]
    if THREAD_CACHE_OFF in kept:
        return None
    kept = [t for t in kept if not t.startswith("glibc.malloc.tcache_count=")]
    return ":".join([*kept, THREAD_CACHE_OFF])


# ---------------------------------------------------------------------------- the runner


def _growth(series: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Each metric's net growth per call over a judged window."""
    return {
        name: (values[-1] - values[0]) / max(1, len(values) - 1) for name, values in series.items()
    }


@dataclass(frozen=True)
class KnownLeak:
    """A container that gained an entry a run or more while a check that failed in full (the
    whole escalation) was explained."""

    container: object  # a list, dict, set or other container retainers.py knows
    path: str  # its reference path from a root
    first: str  # the check that found it (a test's node id)


class KnownLeaks:
    """The containers full checks found leaking in this process, so that the checks after them
    can recognise the same leak in a screen's length of runs instead of the whole escalation.

    The escalation (up to 256 runs) is what tells a leak from a bounded cache still filling;
    a container already seen growing through a whole escalation has passed that test. Without
    this a leak in a suite's test harness cost every test that uses it the whole escalation and
    an explanation: click 8.5.1's ``CliRunner`` keeps an entry per ``invoke``, and its leak check
    did not finish in 8 minutes. The containers are held (the leak holds them anyway)."""

    LIMIT = 8

    def __init__(self) -> None:
        self.leaks: list[KnownLeak] = []

    def learn(self, result: LeakResult, first: str) -> None:
        """Keep the containers a leaked result's explanation found growing."""
        if not result.leaked or result.retainers is None:
            return
        for container, chain in result.retainers.containers:
            if len(self.leaks) >= self.LIMIT:
                return
            if all(leak.container is not container for leak in self.leaks):
                self.leaks.append(KnownLeak(container, chain.path(), first))


def _known_growth(
    known: Sequence[KnownLeak], lengths: array.array[int], runs: int
) -> tuple[KnownLeak, int] | None:
    """The first known leak whose container gained an entry a run or more in the last ``runs``
    runs (``lengths``: theirs before them), with the entries gained; None if none did, or the
    runs were fewer than a quiet spell (too few to call a trend)."""
    if runs < QUIET:
        return None
    for leak, before in zip(known, lengths):
        added = container_length(leak.container) - before
        if added >= runs:
            return leak, added
    return None


@dataclass
class LeakResult:
    leaked: bool
    calls: int
    judged: int
    findings: list[MetricFinding] = field(default_factory=list)
    growth: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[int]] = field(default_factory=dict)
    sites: list[Site] = field(default_factory=list)
    types: list[TypeGrowth] = field(default_factory=list)
    # Reference paths from roots to what grew (see retainers.py).
    retainers: Retainers | None = None
    explained_calls: int = 0
    threads: int = 1
    screened: bool = False  # passed at the screen, before the full run
    # Memory grew, but the time budget ended the check before growth that stops (a cache
    # filling) could be told from a leak: not failed, and said.
    inconclusive: bool = False
    budget: float | None = None  # seconds, where the check had a time budget
    # The time a run took (as the budget counts it: CPU, or a WALL_SHARE of the wall time
    # where more) where one run showed that no verdict fits in the time budget: the check
    # stopped there, neither passed nor failed, and said.
    too_slow: float | None = None
    # Failed at the screen: a known leak's container grew by ``known_entries`` in its runs.
    known: KnownLeak | None = None
    known_entries: int = 0

    def message(self, what: str = "memory", unit: str = "call") -> str:
        from .messages import render_leak

        return render_leak(self, what, unit)


class LeakRunner:
    """Runs a callable repeatedly under the cleanup and judges the readings."""

    def __init__(
        self, engine: Engine, settings: LeakSettings, known: KnownLeaks | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.known = known.leaks if known is not None else []

    def run(
        self, call: Callable[[], object], explain: bool = True, named: bool = False
    ) -> LeakResult:
        """The verdict on ``call``. ``named``: the check was asked for by name (a test's own
        marker, ``check_leaks``), so one too slow for the time budget runs its runs in full, as
        with a number of runs given, rather than stopping with ``too_slow``."""
        with self.engine.sampling_suspended():
            result = self._run(call, explain)
            if named and result.too_slow is not None:
                full = replace(self.settings, screen=None)
                result = LeakRunner(self.engine, full)._run(call, explain)
        return result

    def _run(self, call: Callable[[], object], explain: bool) -> LeakResult:
        settings = self.settings
        per_stage = settings.warmup + settings.iterations
        totals = [per_stage * s for s in settings.stages]
        size = totals[-1] + 1
        # Preallocated C arrays: storing a reading must not allocate an object that the next
        # reading would count as growth.
        blocks = array.array("q", bytes(8 * size))
        nbytes = array.array("q", bytes(8 * size))
        fds = array.array("q", bytes(8 * size))
        native = array.array("q", bytes(8 * size))
        # Reallocations of containers older than the check, frees of any block older than
        # it, and the live bytes the hook tracks, so far (see read()).
        old_reallocs = array.array("q", bytes(8 * size))
        old_frees = array.array("q", bytes(8 * size))
        tracked = array.array("q", bytes(8 * size))
        high = array.array("q", bytes(8))  # the screen's highest native reading (see there)
        known = self.known
        known_lengths = array.array("q", bytes(8 * len(known)))  # at the screen's start
        cleanup = InterpreterCleanup()
        heap = self.engine.heap
        _native_allocated = native_allocated()
        use_native = _native_allocated is not None
        collector = self.engine.collector
        # The call counter as ints made before the window: past the last cached small int (256;
        # 1,024 from 3.15) every `calls += 1` would allocate, and the step from the last cached
        # int to a heap-allocated one is one block that stays, which a long run once judged as
        # growth.
        numbers = list(range(size + 1))
        cleanup()
        collector.begin()
        # No sampled sites: an explanation traces calls of its own (explain below). Without the
        # hook the runs are not traced at all: tracemalloc cannot make its live bytes net of the
        # older blocks a run frees (a full cache replacing entries other tests made read as
        # +216 B a run), and its own tables, a few dozen bytes of the C heap per live trace,
        # read as native growth. Those runs are judged on the net block count
        # (sys.getallocatedblocks, as CPython's -R counts), glibc's figure and fds.
        token = heap.begin(sites=False) if heap.net_bytes else None
        findings: list[MetricFinding] = []
        calls = 0
        try:

            def read(index: int) -> None:
                if token is None:
                    blocks[index] = sys.getallocatedblocks()
                    read_process(index)
                    return
                reading = heap.read(token)
                old_reallocs[index] = reading.old_reallocs or 0
                old_frees[index] = reading.old_frees or 0
                if reading.live_blocks is not None:
                    # Net of the blocks older than the check that it freed, as CPython's -R
                    # counts (sys.getallocatedblocks): a bounded cache that replaces entries
                    # made before the check is not growth. Without it, jsonschema's class-level
                    # lru_cache of resolvers read as a leak for over 256 runs of 37 tests.
                    blocks[index] = reading.live_blocks - old_frees[index]
                else:
                    blocks[index] = sys.getallocatedblocks()
                # A container made before the check and reallocated in it counts as a new
                # live block of its whole new size, while its old block was never counted:
                # not growth. Whole repetitions of a pytest test do this for ~30 runs (dicts
                # that pytest fills and empties each run resize now and then), which read as
                # steps. Taken out here (the hook knows which reallocations they were).
                tracked[index] = (reading.live or 0) - (reading.old_realloc_bytes or 0)
                step = tracked[index] - tracked[index - 1] if index else tracked[0]
                if step > 0 and index and old_frees[index] > old_frees[index - 1]:
                    # The bytes of the old blocks freed are unknown (the allocator does not
                    # say), so a run that replaced some cannot be told from one that grew: it
                    # counts no byte growth. The net block count above and glibc's net figure
                    # (native) still judge it; only an object that grows without a new block in
                    # the same runs as old blocks are freed goes unseen, and old blocks run out.
                    step = 0
                nbytes[index] = (nbytes[index - 1] if index else 0) + step
                read_process(index)

            def read_process(index: int) -> None:
                fds[index] = open_fds() or 0
                if use_native:
                    assert _native_allocated is not None
                    # The hook's own tables live in the C heap too: not the user's growth. (Its
                    # figure needs no correction for reallocations: glibc sees both arrays.)
                    native[index] = _native_allocated() - heap.own_bytes()

            def run_to(total: int, timed: bool = True) -> bool:
                """Runs to ``total`` runs in all; False where the budget ran out first. A stage
                is afforded at the mean time of a run so far, which a test whose runs slow down
                as it repeats outgrows: each run of one of wrapt's tests stacks one more
                wrapper on a module's class and takes twice as long as the one before, and a
                stage of 256 runs went on for 15 minutes."""
                nonlocal calls
                while calls < total:
                    if timed and budget is not None and clock() > OVERRUN * budget:
                        return False
                    call()
                    calls = numbers[calls + 1]
                    cleanup()
                    collector.collect()
                    read(calls)
                return True

            def window(first: int) -> dict[str, list[int]]:
                return self._window(
                    first, calls, blocks, nbytes, fds, native, traced=token is not None
                )

            began_cpu, began_wall = _cpu_clock(), _wall_clock()

            def clock() -> float:
                """The time the check has taken: its CPU time, so that a loaded machine does
                not shrink the budget, or a WALL_SHARE of its wall time where that is more,
                so that a test that waits (a socket's timeout, a server's thread, a child
                process) is timed too: requests' tests that wait 0.5 s for a socket ran
                256 runs each on a budget their CPU time never spent."""
                return max(
                    _cpu_clock() - began_cpu,
                    (_wall_clock() - began_wall) * WALL_SHARE,
                )

            budget: float | None = None

            def affords(more: int, within: float | None = None) -> bool:
                """``more`` calls fit in the time budget (or ``within``), at the mean time of a
                call so far."""
                limit = budget if within is None else within
                if limit is None:
                    return True
                spent = clock()
                return spent + more * spent / max(1, calls) <= limit

            read(0)
            exact = (blocks, nbytes, fds)  # native is quiet by its own rule (see the screen)
            screen = settings.screen
            warmup = settings.warmup
            out_of_time = False
            if screen is not None and screen < settings.iterations:
                run_to(1)
                first = clock()
                budget = max(settings.screen_floor, settings.time_runs * first)
                read(calls)  # again: the floats just made are the check's, not the test's
                if not affords(warmup + QUIET - calls):
                    warmup = min(warmup, 2)  # a slow test: the least warm-up that works
                    suspect_budget = max(settings.suspect_floor, settings.time_runs * first)
                    if not affords(warmup + QUIET - calls, suspect_budget):
                        # Not even the screen's runs fit in the larger budget a suspect gets:
                        # the 2-3 runs it allows can neither pass the test nor judge growth.
                        # dateutil's 14 tests of 0.16-5.3 s a run spent 3-4 runs each on that
                        # (its check cost 6.09x a plain run; 4.61x without). Said, not repeated.
                        return LeakResult(
                            leaked=False,
                            calls=calls,
                            judged=0,
                            series=window(0),
                            threads=threading.active_count(),
                            budget=budget,
                            too_slow=first,
                        )
                run_to(warmup, timed=False)
                for index in range(len(known)):
                    known_lengths[index] = container_length(known[index].container)
                quiet = 0  # calls in a row that moved no reading
                resized = False  # a block grew in place: see below
                # glibc's figure counts the chunks in its per-thread cache as in use, so a
                # clean test's native memory can swing by a chunk from run to run (+-560 B on
                # 3.14, where attrs' clean tests took 32-64 runs instead of 7). A run is quiet
                # on it when it sets no new high since the warm-up (a higher reading during
                # the warm-up would hide a slow leak until it got past it); a leak sets one
                # each time it leaks. Kept in an array made before the first reading: an
                # object made or held between readings would be a block of them.
                high[0] = native[calls]
                while quiet < QUIET and calls < warmup + screen and affords(1):
                    run_to(calls + 1)
                    # (Without glibc's figure the native column stays 0: always quiet.)
                    still = all(col[calls] == col[calls - 1] for col in exact) and (
                        native[calls] <= high[0]
                    )
                    if native[calls] > high[0]:
                        high[0] = native[calls]
                    if still and old_reallocs[calls] != old_reallocs[calls - 1]:
                        # An old container reallocated (see read()): not growth, but not a
                        # quiet run either. A list made before the check that gains a slot a
                        # run shows one of these, then resizes rarely: counted quiet, it would
                        # pass the screen between the two.
                        continue
                    quiet = quiet + 1 if still else 0
                    resized = resized or (
                        nbytes[calls] > nbytes[calls - 1] and blocks[calls] == blocks[calls - 1]
                    )
                # Bytes up with no new block is a container's array growing, which a list that
                # gains a slot per call does ever more rarely (every ~n/8 calls): quiet spells
                # do not clear it; the full run's staircase rule judges it.
                if not resized and (quiet >= QUIET or (quiet == calls - warmup and calls > warmup)):
                    series = window(calls - quiet)
                    return LeakResult(
                        leaked=False,
                        calls=calls,
                        judged=calls - warmup,
                        growth=dict.fromkeys(series, 0.0),
                        series=series,
                        threads=threading.active_count(),
                        screened=True,
                        budget=budget,
                    )
                found = _known_growth(known, known_lengths, calls - warmup)
                if found is not None:
                    series = window(warmup)
                    seen = judge(series, settings.tolerance)
                    if seen:
                        return LeakResult(
                            leaked=True,
                            calls=calls,
                            judged=calls - warmup,
                            findings=seen,
                            growth=_growth(series),
                            series=series,
                            threads=threading.active_count(),
                            budget=budget,
                            known=found[0],
                            known_entries=found[1],
                        )
                budget = max(settings.suspect_floor, settings.time_runs * first)
            judged_from = warmup
            staged = False
            extended = False
            for total in totals:
                strong = staged and any(f.reason in EVERY_CALL for f in findings)
                if strong and not extended and budget is not None and not affords(total - calls):
                    # Growth on (almost) every run is what a leak looks like, and what a cache
                    # still filling looks like: worth a longer look than a drift, once.
                    budget *= STRONG_SUSPECT
                    extended = True
                if not affords(total - calls) or not run_to(total):
                    out_of_time = True
                    break
                staged = True
                judged_from = calls - settings.iterations
                findings = judge(window(judged_from), settings.tolerance, window(warmup))
                if not findings:
                    break
            if not staged:  # out of time before a stage ended: judge what there is
                findings = judge(window(warmup), settings.tolerance)
            judged = window(judged_from)
            growth = _growth(judged)
            result = LeakResult(
                leaked=bool(findings) and not out_of_time,
                calls=calls,
                judged=calls - judged_from,
                findings=findings,
                growth=growth,
                series=judged,
                threads=threading.active_count(),
                inconclusive=bool(findings) and out_of_time,
                budget=budget,
            )
            if result.leaked and explain:
                # Untraced runs (see above): the explanation traces its own.
                tracing = token if token is not None else heap.begin(sites=False)
                try:
                    self._explain(call, cleanup, tracing, result)
                finally:
                    if tracing is not token:
                        heap.end(tracing)
            return result
        finally:
            if token is not None:
                heap.end(token)
            collector.end()

    @staticmethod
    def _window(
        first: int, last: int, *columns: array.array[int], traced: bool
    ) -> dict[str, list[int]]:
        names = ("blocks", "bytes", "fds", "native")
        window = {name: col[first : last + 1].tolist() for name, col in zip(names, columns)}
        if not traced:
            del window["bytes"]
        if native_allocated() is None:
            del window["native"]
        return window

    def _explain(
        self,
        call: Callable[[], object],
        cleanup: Callable[[], None],
        token: Any,
        result: LeakResult,
    ) -> None:
        """Re-run a few calls tracing every allocation: where the growing memory comes from and
        which object types grew. Tracing is for explaining; it never decides."""
        calls = min(10, max(3, self.settings.iterations // 3))
        lengths = container_lengths()
        before = census_types(exclude=[lengths])

        def between() -> None:
            cleanup()
            gc.collect()

        result.sites = self.engine.heap.growth_sites(token, call, between, calls, limit=5)
        after = census_types(exclude=[before, result.sites, lengths])
        grown = []
        for name, (count, size) in after.items():
            old_count, old_size = before.get(name, (0, 0))
            # About one per call or more: growth, not a one-off. The counts are of every
            # object of the type, so others freed meanwhile hide a few: a dict kept per call
            # read as 8 more dicts after 10 calls.
            if (count - old_count) * 4 >= calls * 3:
                per_call = max(1, round((count - old_count) / calls))
                grown.append(TypeGrowth(name, per_call, (size - old_size) // calls))
        grown.sort(key=lambda t: (-t.count, -t.bytes, t.name))
        result.types = grown[:5]
        result.explained_calls = calls
        result.retainers = growth_retainers(lengths, calls)
        if not result.retainers.chains and result.types:
            # Nothing grew in place (each call made a new holder): ask why the new objects of
            # the types that grew are alive.
            is_new = self.engine.heap.is_new
            held = new_objects(is_new, result.types)
            result.retainers = find_retainers(held, ignore=[lengths])
