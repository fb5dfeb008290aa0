from __future__ import annotations

import pytest

from pytest_memguard.budget import (
    Budget,
    BudgetError,
    check,
    merge_markers,
    parse_budget,
    parse_budget_spec,
)
from pytest_memguard.measurement import Measurement
from pytest_memguard.options import DEFAULT_TOLERANCE, DEFAULT_TOLERANCE_VALUE
from pytest_memguard.tolerance import Tolerance, ToleranceError

MiB = 2**20
WHERE = "tests/test_x.py::test_y"


def test_positional_limit_is_peak() -> None:
    assert parse_budget(("50MB",), {}, WHERE) == Budget(peak=50 * MiB)
    assert parse_budget((), {"limit": "50MB"}, WHERE) == Budget(peak=50 * MiB)


def test_keywords_in_any_combination() -> None:
    budget = parse_budget((), {"retained": "1MB", "private": 2 * MiB, "allocations": 10_000}, WHERE)
    assert budget.limits() == {"retained": MiB, "private": 2 * MiB, "allocations": 10_000}
    assert parse_budget((), {"allocations": "1_000"}, WHERE).allocations == 1000


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        (("fifty",), {}, "'fifty'"),
        (("-5MB",), {}, "'-5MB'"),
        ((-1,), {}, "-1"),
        ((True,), {}, "True"),
        (("1MB", "2MB"), {}, "one positional limit"),
        ((), {"peek": "1MB"}, "unknown keyword peek"),
        ((), {}, "no limit given"),
        (("1MB",), {"peak": "2MB"}, "limit and peak"),
        (("1MB",), {"limit": "2MB"}, "limit given twice"),
        ((), {"allocations": "many"}, "'many'"),
        ((), {"allocations": 1.5}, "1.5"),
        ((), {"allocations": -3}, "-3"),
        ((), {"retained": [1]}, "[1]"),
        ((), {"tolerance": "lots"}, "'lots'"),
    ],
)
def test_bad_budgets_name_the_test_and_the_value(
    args: tuple[object, ...], kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(BudgetError) as info:
        parse_budget(args, kwargs, WHERE)
    assert WHERE in str(info.value)
    assert fragment in str(info.value)


def test_ini_spec() -> None:
    assert parse_budget_spec("200MB", "x", "mem_default_budget").peak == 200 * MiB
    budget = parse_budget_spec("peak=200MB, retained=1MB, allocations=5", "x", "d")
    assert budget.limits() == {"peak": 200 * MiB, "retained": MiB, "allocations": 5}
    with pytest.raises(BudgetError, match="unknown keyword"):
        parse_budget_spec("peek=1MB", "x", "d")


def test_closest_marker_wins_per_keyword() -> None:
    function = Budget(retained=MiB)
    klass = Budget(peak=50 * MiB, retained=5 * MiB)
    module = Budget(peak=100 * MiB, allocations=7)
    merged = merge_markers([function, klass, module])
    assert merged is not None
    assert merged.limits() == {"peak": 50 * MiB, "retained": MiB, "allocations": 7}
    assert merge_markers([]) is None


def test_check_on_both_sides_of_the_limit() -> None:
    budget = Budget(peak=10 * MiB, allocations=100)
    at_limit = check(budget, Measurement(peak=10 * MiB, allocations=100))
    assert not at_limit.failed
    over = check(budget, Measurement(peak=10 * MiB + 1, allocations=101))
    assert over.failed
    assert [v.metric for v in over.violations] == ["peak", "allocations"]
    assert over.violations[0].message() == ("peak 10.0 MiB exceeds mem_budget 10.0 MiB by 1 B")
    assert over.violations[1].message() == "allocations 101 exceeds mem_budget 100 by 1"


def test_unmeasurable_metrics_are_reported_not_passed_silently() -> None:
    verdict = check(Budget(allocations=5), Measurement(allocations=None))
    assert not verdict.failed
    assert verdict.unmeasured == ("allocations",)


@pytest.mark.parametrize(
    ("spec", "relative", "absolute"),
    [
        ("10%", 0.10, 0),
        ("64KiB", 0.0, 64 * 1024),
        ("10%+64KiB", 0.10, 64 * 1024),
        ("64KiB+10%", 0.10, 64 * 1024),
        ("2.5 % + 1MB", 0.025, MiB),
    ],
)
def test_tolerance_parse(spec: str, relative: float, absolute: int) -> None:
    tolerance = Tolerance.parse(spec)
    assert tolerance.relative == pytest.approx(relative)
    assert tolerance.absolute == absolute


def test_default_tolerance_written_out_is_the_parsed_spec() -> None:
    assert Tolerance.parse(DEFAULT_TOLERANCE) == DEFAULT_TOLERANCE_VALUE


@pytest.mark.parametrize("spec", ["", "lots", "10%+20%", "1MB+2MB", "-5%", 5, "10%+"])
def test_tolerance_rejects(spec: object) -> None:
    with pytest.raises(ToleranceError, match="expected a spec"):
        Tolerance.parse(spec)


def test_tolerance_boundaries() -> None:
    tolerance = Tolerance(relative=0.10, absolute=100)
    assert not tolerance.side(1000, 1200) > 0  # at the slack: not a regression
    assert tolerance.side(1000, 1201) > 0
    assert tolerance.side(1000, 799) < 0
    assert not tolerance.side(1000, 800) < 0  # at the slack: not an improvement
    assert [tolerance.side(1000, n) for n in (799, 800, 1000, 1200, 1201)] == [-1, 0, 0, 0, 1]
    assert str(tolerance) == "10%+100 B"
    assert str(Tolerance()) == "0 B"
