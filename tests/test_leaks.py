"""Leak decision rules on hand-made series, and the runner in this process."""

from __future__ import annotations

import array
import collections
import functools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pytest_memguard.leaks import (
    QUIET,
    SCREEN,
    SCREEN_FLOOR,
    SUSPECT_FLOOR,
    KnownLeak,
    KnownLeaks,
    LeakResult,
    LeakRunner,
    LeakSettings,
    LeakSettingsError,
    MetricFinding,
    judge,
    native_only,
    parse_leak_marker,
    r_squared,
    theil_sen,
    trend,
    without_thread_cache,
)
from pytest_memguard.measurement import Engine, get_engine
from pytest_memguard.repetition import _broader_fixtures, _pristine_params
from pytest_memguard.retainers import Chain, Retainers

from .conftest import HOOK

FLAT = [100] * 31
# The runs at which test_old_containers_reallocated_in_the_check_are_not_growth grows a list.
GROWN_AT = {2 + 4 * i: i for i in range(8)}


def metrics(findings: Sequence[MetricFinding]) -> set[str]:
    return {f.metric for f in findings}


def test_theil_sen_ignores_one_outlier() -> None:
    values = [float(i) for i in range(20)]
    values[10] = 500.0
    assert theil_sen(values) == pytest.approx(1.0)
    assert theil_sen([5.0]) == 0.0


def test_r_squared_of_a_line_and_of_noise() -> None:
    line = [3.0 * i for i in range(30)]
    assert r_squared(line, 3.0) == pytest.approx(1.0)
    assert r_squared([1.0] * 30, 0.0) == 0.0


def test_clean_series_has_no_findings() -> None:
    assert judge({"blocks": FLAT, "bytes": FLAT, "fds": [3] * 31, "native": FLAT}) == []


def test_one_block_per_call_is_found_by_the_every_call_rule() -> None:
    blocks = list(range(100, 131))
    found = judge({"blocks": blocks, "bytes": FLAT, "fds": [3] * 31})
    assert metrics(found) == {"blocks"}
    assert found[0].reason == "grew on every call"


def test_a_leak_every_fourth_call_is_found_by_the_trend_rule() -> None:
    blocks = [100 + (i // 4) for i in range(31)]
    found = judge({"blocks": blocks})
    assert metrics(found) == {"blocks"}
    assert found[0].reason == "steady upward trend"


def test_a_cache_that_fills_and_stops_is_not_a_leak() -> None:
    blocks = [100 + min(i, 10) for i in range(31)]
    assert judge({"blocks": blocks}) == []


def test_noise_around_a_level_is_not_a_leak() -> None:
    blocks = [100 + (1 if i % 3 == 0 else -1 if i % 3 == 1 else 0) for i in range(31)]
    assert judge({"blocks": blocks}) == []


def test_bytes_staircase_over_the_whole_run() -> None:
    # A list growing one slot per call: its array grows in 1/8 steps, nothing between.
    staircase = []
    capacity = 0
    for size in range(1, 282):
        if size > capacity:
            capacity = size + (size >> 3) + 6
        staircase.append(56 + 8 * capacity)
    window = staircase[-31:]
    found = judge({"bytes": window}, full={"bytes": staircase[5:]})
    assert metrics(found) == {"bytes"}


def test_a_staircase_that_stopped_before_the_judged_calls_is_not_a_leak() -> None:
    """attrs, whole suite: bytes that stepped up now and then through the first ~220 runs
    and not in the last 30 (something of the session's that fills in steps and stopped)."""
    full = [1000] * 10 + [1100] * 60 + [1300] * 80 + [1600] * 107
    window = full[-31:]
    assert judge({"bytes": window}, full={"bytes": full}) == []
    # The same steps, one of them in the judged calls: still growing, a leak.
    stepping = full[:-10] + [1900] * 10
    assert metrics(judge({"bytes": stepping[-31:]}, full={"bytes": stepping})) == {"bytes"}


def test_native_growth_with_one_unrelated_jump() -> None:
    native = [1000 + 128 * i for i in range(31)]
    native[7:] = [v + 33_000 for v in native[7:]]
    found = judge({"native": native})
    assert metrics(found) == {"native"}
    assert found[0].per_call == 128


def test_any_fd_change_is_a_leak() -> None:
    fds = [5] * 31
    fds[20:] = [6] * 11
    assert metrics(judge({"fds": fds})) == {"fds"}


def test_tolerance_allows_small_byte_growth() -> None:
    series = {"blocks": list(range(31)), "bytes": [i * 32 for i in range(31)]}
    assert metrics(judge(series)) == {"blocks", "bytes"}
    assert judge(series, tolerance=64) == []
    assert metrics(judge(series, tolerance=16)) == {"blocks", "bytes"}


def test_trend_halves() -> None:
    t = trend([0, 1, 2, 3, 4, 5, 6, 7, 8])
    assert t.growing(0.5)
    assert not trend([0, 4, 8, 8, 8, 8, 8, 8, 8]).growing(0.2)


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((0,), {}, "iterations"),
        ((), {"iterations": 2.5}, "iterations"),
        ((), {"warmup": -1}, "warmup"),
        ((), {"warmup": "5"}, "warmup"),
        ((), {"iterations": True}, "iterations"),
        ((), {"speed": 1}, "unknown keyword speed"),
        ((1, 2, 3), {}, "at most"),
        ((10,), {"iterations": 5}, "given twice"),
        ((), {"tolerance": "lots"}, "'lots'"),
    ],
)
def test_bad_leak_markers_name_the_test(
    args: tuple[object, ...], kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(LeakSettingsError) as info:
        parse_leak_marker(args, kwargs, "tests/t.py::test_x", LeakSettings())
    assert "tests/t.py::test_x" in str(info.value)
    assert fragment in str(info.value)


def test_marker_defaults_and_overrides() -> None:
    defaults = LeakSettings(iterations=12, warmup=3)
    assert parse_leak_marker((), {}, "t", defaults) == defaults
    custom = parse_leak_marker((20, 2), {"tolerance": "1KB"}, "t", defaults)
    assert (custom.iterations, custom.warmup, custom.tolerance) == (20, 2, 1024)


SINK: list[object] = []


def test_runner_catches_one_object_per_call_and_explains_it() -> None:
    sink: list[object] = []

    def leaky() -> None:
        sink.append(object())  # the leaking line

    result = LeakRunner(get_engine(), LeakSettings()).run(leaky)
    assert result.leaked
    assert "blocks" in metrics(result.findings)
    assert result.growth["blocks"] == pytest.approx(1.0, abs=0.1)
    assert any(t.name == "object" and t.count == 1 for t in result.types)
    message = result.message()
    assert "blocks" in message
    assert "grew on every call" in message


def test_runner_passes_clean_code_at_the_screen() -> None:
    def clean() -> None:
        d = collections.OrderedDict((i, str(i)) for i in range(50))
        d.clear()

    result = LeakRunner(get_engine(), LeakSettings()).run(clean)
    assert not result.leaked
    assert result.screened
    # Warm-up, then QUIET calls that moved nothing (a few more where the interpreter's own
    # first-use costs land late: 3.14 under -n 2).
    assert 2 + QUIET <= result.calls <= 2 + QUIET + 4


def test_runner_without_screen_runs_every_call_the_user_asked_for() -> None:
    def clean() -> None:
        d = collections.OrderedDict((i, str(i)) for i in range(50))
        d.clear()

    result = LeakRunner(get_engine(), LeakSettings(screen=None)).run(clean)
    assert not result.leaked
    assert not result.screened
    assert result.budget is None
    assert result.calls == 2 + 30


def test_the_harness_allocates_nothing_that_stays_even_past_256_calls() -> None:
    """The loop's own call counter once became a heap int at call 257 (small ints stop at
    256), one block that stayed: a step in every long run's series."""
    settings = LeakSettings(iterations=300, warmup=1, screen=None)
    result = LeakRunner(get_engine(), settings).run(lambda: None, explain=False)
    assert not result.leaked
    blocks = result.series["blocks"]
    assert len(blocks) == 301
    deltas = [b - a for a, b in zip(blocks, blocks[1:])]
    # Readings 256 (call 257) and on: where the counter stopped being a cached small int. (On
    # 3.9 one unrelated step of two blocks shows up once near call 30, from the cleanup.)
    assert deltas[240:] == [0] * len(deltas[240:])


def test_a_leak_every_fourth_call_gets_past_the_screen() -> None:
    sink: list[object] = []
    calls = iter(range(10**6))

    def sometimes() -> None:
        if next(calls) % 4 == 0:
            sink.append(object())

    result = LeakRunner(get_engine(), LeakSettings()).run(sometimes)
    assert not result.screened
    assert result.leaked
    assert "blocks" in metrics(result.findings)


def test_a_number_of_iterations_chosen_by_the_user_turns_the_screen_off() -> None:
    chosen = parse_leak_marker((40,), {}, "t.py::test_x", LeakSettings())
    assert chosen.screen is None
    left = parse_leak_marker((), {"warmup": 2}, "t.py::test_x", LeakSettings())
    assert left.screen == SCREEN


def test_runner_lets_a_bounded_cache_fill() -> None:
    @functools.lru_cache(maxsize=64)
    def cached(key: int) -> list[int]:
        return [key]

    # Keys above 256: the small ints up to 256 are cached singletons, so keys counted up from 0
    # would start a second, real fill phase at key 257 (the cache then holds heap ints). On
    # CPython 3.9 the run escalated that far and was failed for it, wrongly blamed on the check.
    counter = iter(range(10**6, 2 * 10**6))

    def fill() -> None:
        cached(next(counter))

    result = LeakRunner(get_engine(), LeakSettings()).run(fill)
    assert not result.leaked
    assert result.calls > 35  # it was suspect while filling, then escalated and passed


def _full_cache() -> tuple[Callable[[int], dict[str, int]], Iterator[int]]:
    """An lru_cache full of entries made before the check, and keys it has not seen."""

    @functools.lru_cache(maxsize=512)
    def cached(key: int) -> dict[str, int]:
        return {"key": key}

    keys = iter(range(10**6, 2 * 10**6))  # heap ints: see test_runner_lets_a_bounded_cache_fill
    for _ in range(512):
        cached(next(keys))
    return cached, keys


BACKENDS = ["hook", "tracemalloc"] if HOOK else ["tracemalloc"]


def _engine(backend: str) -> Engine:
    """The session's engine on the hook, or one on the tracemalloc fallback."""
    from pytest_memguard.fallback import TracemallocBackend

    return get_engine() if backend == "hook" else Engine(heap=TracemallocBackend(), native=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_cache_replacing_entries_older_than_the_check_is_not_growth(backend: str) -> None:
    """jsonschema's class-level lru_cache of resolvers is full of other tests' entries when a
    check begins; each run adds one and evicts one made before the check, which the hook never
    saw allocated. Counted net of those frees (as CPython's -R counts blocks) the cache holds
    still; counted without them it grew an entry a run until every old one was gone, past any
    escalation (37 of jsonschema's tests failed). tracemalloc cannot see those frees: with it
    the runs are not traced, and the net block count and glibc's figure judge."""
    engine = _engine(backend)
    cached, keys = _full_cache()
    result = LeakRunner(engine, LeakSettings()).run(lambda: cached(next(keys)))
    assert not result.leaked
    assert result.calls <= 2 + 30  # decided without escalating
    assert ("bytes" in result.series) == engine.heap.net_bytes


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_leak_beside_a_cache_replacing_older_entries_is_still_caught(backend: str) -> None:
    """The old entries' sizes are unknown, so a run that frees some counts no byte growth;
    the net block count still sees the object kept every run."""
    engine = _engine(backend)
    cached, keys = _full_cache()
    sink: list[object] = []

    def both() -> None:
        cached(next(keys))
        sink.append(object())

    result = LeakRunner(engine, LeakSettings()).run(both, explain=False)
    assert result.leaked
    assert result.growth["blocks"] == pytest.approx(1.0, abs=0.1)


def test_interpreter_hooks_are_feature_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """3.14 renamed warnings' version bump and made ctypes' pointer cache unsized; 3.13
    deprecated sys._clear_type_cache for _clear_internal_caches. Both branches of each."""
    import threading
    import warnings

    from pytest_memguard import leaks

    bumped: list[str] = []
    monkeypatch.delattr(warnings, "_filters_mutated", raising=False)
    monkeypatch.setattr(
        warnings, "_filters_mutated_lock_held", lambda: bumped.append("held"), raising=False
    )
    monkeypatch.setattr(warnings, "_lock", threading.RLock(), raising=False)
    bump = leaks._filters_mutated()
    assert bump is not None
    bump()
    assert bumped == ["held"]
    monkeypatch.setattr(warnings, "_filters_mutated", lambda: bumped.append("old"), raising=False)
    leaks._filters_mutated()()  # type: ignore[misc]
    assert bumped == ["held", "old"]

    class Unsized:
        pass

    assert leaks._length(Unsized()) == 0
    assert leaks._length({1: 2}) == 1
    monkeypatch.delattr(sys, "_clear_internal_caches", raising=False)
    assert leaks.InterpreterCleanup()._clear_type_cache is sys._clear_type_cache
    monkeypatch.setattr(sys, "_clear_internal_caches", lambda: None, raising=False)
    assert leaks.InterpreterCleanup()._clear_type_cache is sys._clear_internal_caches  # type: ignore[attr-defined]


def busy(seconds: float) -> None:
    """Spend CPU time: the budget is counted in it (a loaded machine does not shrink it)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_slow_clean_test_runs_within_its_time_budget() -> None:
    def slow() -> None:
        busy(0.02)

    result = LeakRunner(get_engine(), LeakSettings()).run(slow)
    assert not result.leaked
    assert not result.inconclusive
    assert result.budget is not None
    assert result.budget >= 4 * 0.02
    # Quiet, it passes after ~4 more runs; moved (first-use effects), it may go on to the
    # suspect's budget: never past what its budget holds of 0.02 s runs.
    assert 2 <= result.calls <= result.budget / 0.02 + 1


def test_a_test_too_slow_for_any_verdict_stops_after_one_run() -> None:
    """0.15 s a run: the suspect's budget (4 runs' worth) holds 4 runs, the screen needs 7, so
    no verdict fits; one run says so, where 3-4 more used to decide nothing."""
    runs = [0]

    def slow() -> None:
        runs[0] += 1
        busy(0.15)

    result = LeakRunner(get_engine(), LeakSettings()).run(slow)
    assert (result.calls, runs[0]) == (1, 1)
    assert not result.leaked
    assert not result.inconclusive
    assert result.too_slow is not None
    assert 0.14 <= result.too_slow <= 1.0


def test_a_test_that_waits_is_timed_by_its_wall_time() -> None:
    """0.4 s asleep a run, next to no CPU: a quarter of its wall time (0.1 s) counts against
    the budget, so it is too slow for a verdict like a test of 0.1 s of CPU, where its CPU time
    alone would have bought it the whole escalation (256 runs, 100 s)."""
    runs = [0]

    def waits() -> None:
        runs[0] += 1
        time.sleep(0.4)

    result = LeakRunner(get_engine(), LeakSettings()).run(waits)
    assert (result.calls, runs[0]) == (1, 1)
    assert not result.leaked
    assert result.too_slow is not None
    assert 0.099 <= result.too_slow <= 0.5


def test_a_clock_a_test_patched_does_not_time_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test may leave ``time.perf_counter`` patched (freezegun, a fast clock that runs a day
    a read): the budget reads the clock as it was when the plugin was imported."""
    days = iter(range(0, 10**9, 86_400))
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(days)))
    monkeypatch.setattr(time, "process_time", lambda: float(next(days)))

    def quick() -> None:
        pass

    result = LeakRunner(get_engine(), LeakSettings()).run(quick)
    assert result.too_slow is None
    assert not result.leaked
    assert 7 <= result.calls <= 64


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_time_floors_are_the_same_on_every_backend(backend: str) -> None:
    """The floors are sized in runs of a fast test under the hook; the fallback's runs are not
    traced (see above), so it gets the same floors and as many runs."""
    engine = _engine(backend)

    def quick() -> None:
        pass

    result = LeakRunner(engine, LeakSettings()).run(quick)
    assert not result.leaked
    # The screen's floor at least (more where the first call was slow on a loaded machine, or
    # the suspect's where a reading moved: the portable path's sampler thread makes blocks),
    # and never a second past the suspect's.
    assert result.budget is not None
    assert SCREEN_FLOOR * 0.999 <= result.budget <= SUSPECT_FLOOR + 1.0


def test_a_slow_test_the_budget_can_screen_is_not_too_slow() -> None:
    """0.05 s a run: 7 runs fit in the suspect's 0.5 s, so it is checked as before."""

    def slow() -> None:
        busy(0.05)

    result = LeakRunner(get_engine(), LeakSettings()).run(slow)
    assert result.too_slow is None
    assert 2 <= result.calls <= 10


def test_a_slow_growing_test_out_of_time_is_inconclusive_not_failed() -> None:
    sink: list[object] = []

    def slow_and_growing() -> None:
        busy(0.02)
        sink.append(object())

    settings = LeakSettings(suspect_floor=0.3)
    result = LeakRunner(get_engine(), settings).run(slow_and_growing)
    assert not result.leaked
    assert result.inconclusive
    assert [f.metric for f in result.findings][:1] == ["blocks"]
    assert 3 <= result.calls <= 25  # 0.3 s of 0.02 s runs, and never the 280 of the schedule


def test_a_test_whose_runs_slow_down_stops_within_its_budget() -> None:
    """Runs of 0.1 ms through the screen, then of 0.1 s (a test whose runs slow down as it
    repeats: one of wrapt's stacks one more wrapper on a module's class each run): the stage
    after the screen is afforded at the mean time of the runs so far, and must still stop
    once its budget is spent twice over, not run to its end at 32 runs."""
    sink: list[object] = []
    runs = [0]

    def slows_down() -> None:
        runs[0] += 1
        busy(0.0001 if runs[0] <= SCREEN + 2 else 0.1)
        sink.append(object())

    settings = LeakSettings(screen_floor=0.2, suspect_floor=0.2)
    result = LeakRunner(get_engine(), settings).run(slows_down)
    assert result.budget == 0.2
    assert not result.leaked
    assert result.inconclusive
    # 0.4 s is 2-4 runs of 0.1 s past the screen's 22.
    assert SCREEN + 2 < result.calls <= SCREEN + 2 + 5 < 32


def test_a_number_of_runs_the_user_chose_has_no_time_budget() -> None:
    sink: list[object] = []

    def slow_and_growing() -> None:
        busy(0.002)
        sink.append(object())

    settings = LeakSettings(iterations=5, warmup=1, screen=None, suspect_floor=0.0, time_runs=0)
    result = LeakRunner(get_engine(), settings).run(slow_and_growing)
    assert result.leaked
    assert result.budget is None
    assert result.calls == 6 * 8  # every stage of the escalation ran


@pytest.mark.parametrize("backend", BACKENDS)
def test_old_containers_reallocated_in_the_check_are_not_growth(backend: str) -> None:
    """Lists made before the check, each grown once in it, one every 4 runs (pytest's dicts,
    filled and emptied by every run, resize now and then): each new array is a live block the
    check traced, each old one a block from before. Read together, nothing moved, and the
    screen passes; read as growth, the steps would never leave it 5 quiet runs."""
    engine = _engine(backend)
    # Made before the check: exactly full, so that the first append reallocates the array.
    old_lists = [[None] * 8 for _ in range(8)]
    turns = iter(range(1000))

    def grows_old_lists_now_and_then() -> None:
        which = GROWN_AT.get(next(turns))
        if which is not None:
            old_lists[which].append(None)
            old_lists[which].pop()  # a list does not shrink by one: the new array stays

    result = LeakRunner(engine, LeakSettings()).run(grows_old_lists_now_and_then)
    assert not result.leaked
    assert result.screened


class _Definition:
    def __init__(self, scope: str) -> None:
        self.scope = scope
        self._finalizers: list[object] = []
        self.cached_result = None


def _item_with(manager: object, closure: dict[str, list[_Definition]]) -> Any:
    session = SimpleNamespace(_fixturemanager=manager)
    return SimpleNamespace(session=session, _fixtureinfo=SimpleNamespace(name2fixturedefs=closure))


def test_broader_fixtures_are_every_one_the_session_has_on_pytest_8_and_9() -> None:
    """A test may ask for a fixture by name while it runs, so the item's closure is not all:
    pytest 9 lists the definitions visible to a node, pytest 8 keeps them by name."""
    session, module, function = (
        _Definition("session"),
        _Definition("module"),
        _Definition("function"),
    )
    in_closure = _Definition("session")
    closure = {"in_closure": [in_closure]}
    pytest9 = SimpleNamespace(_get_all_fixture_defs_for_node=lambda node: [session, function])
    assert _broader_fixtures(_item_with(pytest9, closure)) == [session]
    pytest8 = SimpleNamespace(_arg2fixturedefs={"a": [session, function], "b": [module]})
    assert _broader_fixtures(_item_with(pytest8, closure)) == [session, module]
    assert _broader_fixtures(_item_with(None, closure)) == [in_closure]  # neither: the closure


def test_parameters_are_copied_before_the_official_run_where_they_can_be() -> None:
    import threading

    args = [300]
    item = SimpleNamespace(callspec=SimpleNamespace(params={"args": args, "expected": "x"}))
    pristine = _pristine_params(cast(Any, item))
    assert pristine == {"args": [300], "expected": "x"}
    assert pristine is not None
    assert pristine["args"] is not args
    args[0] = -300  # what the official run does to it
    assert pristine["args"] == [300]
    unlocked = SimpleNamespace(callspec=SimpleNamespace(params={"lock": threading.Lock()}))
    assert _pristine_params(cast(Any, unlocked)) is None  # not copyable: runs as it is
    assert _pristine_params(cast(Any, SimpleNamespace())) is None  # not parametrized
    empty = SimpleNamespace(callspec=SimpleNamespace(params={}))
    assert _pristine_params(cast(Any, empty)) is None


def test_known_leaks_keep_each_container_a_leaked_result_found_once_up_to_a_limit() -> None:
    def result(leaked: bool, *containers: object) -> LeakResult:
        pairs = [(c, Chain("mod", (f".c{i}",), "dict")) for i, c in enumerate(containers)]
        found = Retainers([chain for _, chain in pairs], len(pairs), containers=pairs)
        return LeakResult(leaked=leaked, calls=256, judged=30, retainers=found)

    known = KnownLeaks()
    shared: dict[object, object] = {}
    known.learn(result(False, {}), "t::passed")  # not a leak: nothing learned
    known.learn(LeakResult(leaked=True, calls=256, judged=30), "t::unexplained")
    assert known.leaks == []
    known.learn(result(True, shared), "t::first")
    known.learn(result(True, shared, []), "t::second")  # the same dict is kept once
    assert [(leak.first, leak.path) for leak in known.leaks] == [
        ("t::first", "mod.c0"),
        ("t::second", "mod.c1"),
    ]
    assert known.leaks[0].container is shared
    known.learn(result(True, *([] for _ in range(20))), "t::many")
    assert len(known.leaks) == KnownLeaks.LIMIT


def test_runner_fails_growth_through_a_known_leak_at_the_screen_and_nothing_else() -> None:
    harness: list[object] = []
    elsewhere: list[object] = []
    known = KnownLeaks()
    known.leaks.append(KnownLeak(harness, "mod.harness", "t::first"))

    def through_harness() -> None:
        harness.append(object())

    def leaks_elsewhere() -> None:
        elsewhere.append(object())

    runner = LeakRunner(get_engine(), LeakSettings(), known)
    result = runner.run(through_harness)
    assert result.leaked
    assert result.known is known.leaks[0]
    assert QUIET <= result.judged <= SCREEN
    assert result.known_entries == result.judged
    assert result.sites == []
    assert result.retainers is None
    assert "explained under t::first, not explained again" in result.message(unit="run")
    other = runner.run(leaks_elsewhere)  # the whole escalation, and its own explanation
    assert other.leaked
    assert other.known is None
    assert other.calls > 2 + SCREEN
    assert other.retainers is not None
    assert other.retainers.containers[0][0] is elsewhere


def test_a_known_leak_counts_once_its_container_gains_an_entry_a_run_over_a_quiet_spell() -> None:
    from pytest_memguard.leaks import _known_growth

    slow, fast = [0] * 4, [0] * 12
    known = [KnownLeak(slow, "mod.slow", "t::a"), KnownLeak(fast, "mod.fast", "t::b")]
    lengths = array.array("q", [0, 2])  # before the runs: fast had 2 entries then
    assert _known_growth(known, lengths, 10) == (known[1], 10)  # slow gained 4 in 10 runs
    assert _known_growth(known, lengths, 11) is None
    assert _known_growth(known, lengths, QUIET - 1) is None  # too few runs to call it
    assert QUIET == 5
    assert _known_growth(known, lengths, QUIET) == (known[1], 10)  # slow's 4 are too few
    # The first that qualifies, in the order they were learned:
    assert _known_growth(known, array.array("q", [-1, 2]), QUIET) == (known[0], 5)
    assert _known_growth([], array.array("q"), 20) is None


def test_a_known_leak_reads_its_containers_length_by_the_base_type() -> None:
    from pytest_memguard.leaks import _known_growth

    class Lying(dict[int, int]):
        def __len__(self) -> int:  # a subclass's code must not run between readings
            raise AssertionError("called")

    grown = Lying((i, i) for i in range(QUIET))
    known = [KnownLeak(grown, "mod.lying", "t::a")]
    assert _known_growth(known, array.array("q", [0]), QUIET) == (known[0], QUIET)


def test_between_runs_a_loaded_lxml_has_its_error_log_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_memguard import leaks

    cleared: list[int] = []
    fake = SimpleNamespace(clear_error_log=lambda: cleared.append(1))
    monkeypatch.setitem(sys.modules, "lxml.etree", fake)
    leaks._clear_module_caches()
    assert cleared == [1]
    monkeypatch.delitem(sys.modules, "lxml.etree")
    leaks._clear_module_caches()  # not loaded: nothing to clear, nothing imported
    assert cleared == [1]
    assert "lxml.etree" not in sys.modules


def test_a_second_look_turns_glibcs_thread_cache_off_keeping_other_tunables() -> None:
    off = "glibc.malloc.tcache_count=0"
    assert without_thread_cache(None) == off
    assert without_thread_cache("") == off
    assert without_thread_cache("glibc.malloc.arena_max=2") == f"glibc.malloc.arena_max=2:{off}"
    assert without_thread_cache("glibc.malloc.tcache_count=7:x=1") == f"x=1:{off}"
    assert without_thread_cache(f"x=1:{off}") is None  # off already: nothing to look again with


def test_only_growth_in_glibcs_figure_alone_gets_a_second_look() -> None:
    native = MetricFinding("native", 40.0, "steady upward trend")
    blocks = MetricFinding("blocks", 1.0, "grew on every call")
    assert native_only([native])
    assert not native_only([native, blocks])
    assert not native_only([blocks])
    assert not native_only([])
