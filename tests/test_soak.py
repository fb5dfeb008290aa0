"""Soak decision on hand-made curves, wrapping counters, the fast clock; examples end to end."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from pytest_memguard.measurement import get_engine
from pytest_memguard.soak import Soak, counter, fast_clock, judge_curve

from .conftest import Runner, needs_kernel_peak
from .test_plugin_budget import outcomes

POSITIONS = [20 * (k + 1) for k in range(50)]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_linear_growth_is_flagged() -> None:
    verdict = judge_curve(POSITIONS, [1000 + 10 * p for p in POSITIONS])
    assert verdict.growing
    assert verdict.per_iteration == pytest.approx(10.0)


def test_a_fill_then_plateau_passes() -> None:
    verdict = judge_curve(POSITIONS, [min(p, 300) * 50 for p in POSITIONS])
    assert not verdict.growing
    assert verdict.reason == "levelled off"


def test_a_decelerating_warm_up_passes() -> None:
    values = [int(20000 * (1 - 0.9 ** (p / 40))) for p in POSITIONS]
    assert not judge_curve(POSITIONS, values).growing


def test_a_sawtooth_without_trend_passes() -> None:
    values = [5000 + (k % 5) * 800 for k in range(50)]
    assert not judge_curve(POSITIONS, values).growing


def test_steps_of_a_doubling_table_do_not_hide_linear_growth() -> None:
    values = [32 * p + (8192 if p > 560 else 0) + (4096 if p > 280 else 0) for p in POSITIONS]
    assert judge_curve(POSITIONS, values).growing


def test_max_growth_is_slack() -> None:
    values = [10 * p for p in POSITIONS]
    assert judge_curve(POSITIONS, values).growing
    assert not judge_curve(POSITIONS, values, max_growth=10**6).growing


def test_too_few_samples_cannot_be_judged() -> None:
    assert not judge_curve([1, 2, 3], [1, 2, 3]).growing


def test_soak_iterates_exactly_and_records_the_series() -> None:
    total = count = 0
    soak = Soak(get_engine(), 1000, samples=20)
    for i in soak:
        total += i
        count += 1
    assert (count, total) == (1000, sum(range(1000)))
    assert soak.result.positions[-1] == 1000
    assert len(soak.result.heap) == 20


def _grow(iterations: int) -> None:
    sink: list[bytes] = []
    for _ in Soak(get_engine(), iterations):
        sink.append(bytes(100))


def test_soak_fails_a_growing_loop_with_the_curve() -> None:
    with pytest.raises(AssertionError) as info:
        _grow(3000)
    text = str(info.value)
    assert "kept growing through a soak of 3,000 iterations" in text
    assert "per 1,000" in text
    assert "heap     " in text


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"iterations": 10, "samples": 2}, "samples"),
        ({"iterations": 10, "max_growth": -1}, "max_growth"),
    ],
)
def test_soak_rejects_bad_input(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Soak(get_engine(), **kwargs)  # type: ignore[arg-type]


def test_counter_near_wrap_crosses_it_soon() -> None:
    values = [v for v, _ in zip(counter(16), range(150))]
    assert values[0] == 65536 - 100
    assert values[99] == 65535
    assert values[100] == 0
    assert [v for v, _ in zip(counter(8, margin=3), range(5))] == [253, 254, 255, 0, 1]
    assert [v for v, _ in zip(counter(2), range(5))] == [2, 3, 0, 1, 2]
    assert [v for v, _ in zip(counter(16, start=7), range(2))] == [7, 8]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((0,), "bits"),
        ((True,), "bits"),
        ((16, 65536), "start"),
        ((16, -1), "start"),
        ((16, "soon"), "start"),
        ((8, "near_wrap", 0), "margin"),
        ((8, "near_wrap", 257), "margin"),
    ],
)
def test_counter_rejects_bad_input(args: tuple[object, ...], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        counter(*args)  # type: ignore[arg-type]


def test_fast_clock_makes_two_days_pass_and_restores() -> None:
    real = (time.time, time.monotonic, time.perf_counter, time.monotonic_ns)
    start = time.monotonic()
    with fast_clock(step=3600):
        first = time.time()
        for _ in range(48):
            later = time.time()
        assert later - first == pytest.approx(48 * 3600)
        before, after = time.monotonic_ns(), time.monotonic_ns()
        assert after - before == 3600 * 10**9  # every read moves a step forward
        assert time.perf_counter() > start
    assert (time.time, time.monotonic, time.perf_counter, time.monotonic_ns) == real


def _read_from_threads_then_fail(reads: list[int]) -> None:
    def reader() -> None:
        for _ in range(500):
            reads.append(time.monotonic_ns())

    with fast_clock(step=1):
        threads = [threading.Thread(target=reader) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        raise RuntimeError("boom")


def test_fast_clock_restores_on_error_and_is_thread_safe() -> None:
    real = time.monotonic
    reads: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        _read_from_threads_then_fail(reads)
    assert time.monotonic is real
    assert len(set(reads)) == 2000  # no two reads saw the same instant


@pytest.mark.parametrize("step", [0, -1, "fast", float("nan")])
def test_fast_clock_rejects_bad_steps(step: object) -> None:
    with pytest.raises(ValueError, match="step"):
        fast_clock(step).__enter__()  # type: ignore[arg-type]


def test_examples_soak_each_on_its_side(pytester: pytest.Pytester, run: Runner) -> None:
    for name in ("rtp_buffer.py", "caches.py", "test_soak.py"):
        shutil.copy(EXAMPLES / name, pytester.path / name)
    result = run("-rA", "--mem-report=report.json")
    seen = outcomes(result)
    assert len(seen) == 7
    assert set(seen.values()) == {"PASSED"}, result.stdout.str()
    report = (pytester.path / "report.json").read_text()
    assert '"soak.growth_per_1000"' in report
    assert '"soak.heap"' in report


@needs_kernel_peak  # a sampled peak misses a spike made inside one stretch of Python
def test_a_soak_inside_a_window_leaves_the_windows_peak_alone() -> None:
    """The soak samples anonymous memory: reading it must not reset the kernel peak that the
    enclosing window (the test's own, or a measure()) has seen so far."""
    import pytest_memguard as pm

    with pm.measure() as m:
        big = bytearray(40 * 2**20)
        for offset in range(0, len(big), 4096):
            big[offset] = 1
        del big
        for _ in Soak(get_engine(), 1000, samples=10):
            pass
    assert m.kernel_peak is not None
    assert m.kernel_peak >= 0.9 * 40 * 2**20
