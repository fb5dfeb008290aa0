"""Budgets: what a test may use, parsed once, and the verdict on a measurement.

Parsing is strict because a budget that silently means something else is worse than none: every
error names the test, the argument and the value, and says what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .measurement import Measurement, format_metric
from .tolerance import Tolerance, ToleranceError
from .units import SizeError, parse_size

BUDGET_METRICS = ("peak", "retained", "private", "allocations")
_KEYWORDS = ("limit", *BUDGET_METRICS, "tolerance", "no_survivors", "children")


class BudgetError(ValueError):
    """A ``mem_budget`` that cannot mean anything; the message says where and why."""


@dataclass(frozen=True)
class Budget:
    peak: int | None = None
    retained: int | None = None
    private: int | None = None
    allocations: int | None = None
    tolerance: Tolerance | None = None
    # Classes (or "module.Class" names) of which nothing the test made may outlive it.
    no_survivors: tuple[type | str, ...] = ()
    # The processes the test starts count too: their private memory is added to peak and
    # private (see ``Measurement.children_share``).
    children: bool | None = None
    source: str = "mem_budget"

    def limits(self) -> dict[str, int]:
        return dict(self.limit_items())

    def limit_items(self) -> tuple[tuple[str, int], ...]:
        """(metric, limit) pairs, worked out once: one budget is checked on every test."""
        cached: tuple[tuple[str, int], ...] | None = getattr(self, "_limit_items", None)
        if cached is None:
            cached = tuple((m, v) for m in BUDGET_METRICS if (v := getattr(self, m)) is not None)
            object.__setattr__(self, "_limit_items", cached)
        return cached

    def merged_over(self, farther: Budget) -> Budget:
        """Closest marker wins per keyword: a function's ``retained=`` keeps a class's peak."""
        values: dict[str, Any] = {
            m: getattr(self, m) if getattr(self, m) is not None else getattr(farther, m)
            for m in (*BUDGET_METRICS, "tolerance")
        }
        values["no_survivors"] = self.no_survivors or farther.no_survivors
        values["children"] = self.children if self.children is not None else farther.children
        return replace(self, **values)


@dataclass(frozen=True)
class Violation:
    metric: str
    limit: int
    value: int
    source: str = "mem_budget"
    children: int | None = None  # the part of ``value`` that is the test's children's

    def message(self) -> str:
        what = f"{self.metric} {format_metric(self.metric, self.value)}"
        if self.children is not None:
            what += (
                f" (this process {format_metric(self.metric, self.value - self.children)}, "
                f"the processes it started {format_metric(self.metric, self.children)})"
            )
        return (
            f"{what} exceeds {self.source} {format_metric(self.metric, self.limit)} by "
            f"{format_metric(self.metric, self.value - self.limit)}"
        )


@dataclass(frozen=True)
class Verdict:
    violations: tuple[Violation, ...] = ()
    unmeasured: tuple[str, ...] = field(default=())

    @property
    def failed(self) -> bool:
        return bool(self.violations)


def _parse_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BudgetError(f"invalid {what} {value!r}: expected a whole number of allocations")
    text = str(value).replace("_", "").replace(",", "").strip()
    if not (text.isascii() and text.isdigit()):  # "²" is a digit to str.isdigit
        raise BudgetError(f"invalid {what} {value!r}: expected a whole number of allocations")
    return int(text)


def _parse_kinds(value: object, what: str) -> tuple[type | str, ...]:
    """A class, a ``"module.Class"`` name (several, space-separated, in the ini form), or a
    list or tuple of them."""
    items = (
        value.split()
        if isinstance(value, str)
        else list(value)
        if isinstance(value, (list, tuple))
        else [value]
    )
    for item in items:
        if not isinstance(item, type) and not (isinstance(item, str) and item.strip()):
            raise BudgetError(
                f"invalid {what} {value!r}: expected a class, a 'module.Class' name, "
                "or a list of them"
            )
    if not items:
        raise BudgetError(f"invalid {what} {value!r}: expected at least one class")
    return tuple(items)


def _parse_switch(value: object, what: str) -> bool:
    """True or False; the ini form's text too (``children=true``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise BudgetError(f"invalid {what} {value!r}: expected True or False")


def lifts_budgets(args: tuple[object, ...], kwargs: Mapping[str, object]) -> bool:
    """``mem_budget(None)``: no budget for this test, the default and outer markers included."""
    return (args == (None,) and not kwargs) or (not args and dict(kwargs) == {"limit": None})


def parse_budget(
    args: tuple[object, ...], kwargs: Mapping[str, object], where: str, source: str = "mem_budget"
) -> Budget:
    """Turn ``mem_budget(*args, **kwargs)`` on test ``where`` into a ``Budget``."""
    if len(args) > 1:
        raise BudgetError(
            f"invalid mem_budget on {where}: takes one positional limit, got {len(args)} "
            f"({', '.join(repr(a) for a in args)})"
        )
    unknown = sorted(set(kwargs) - set(_KEYWORDS))
    if unknown:
        raise BudgetError(
            f"invalid mem_budget on {where}: unknown keyword {', '.join(unknown)}; "
            f"expected {', '.join(_KEYWORDS)}"
        )
    values = dict(kwargs)
    if args:
        if "limit" in values:
            raise BudgetError(f"invalid mem_budget on {where}: limit given twice")
        values["limit"] = args[0]
    if values.get("limit") is not None:
        if values.get("peak") is not None:
            raise BudgetError(
                f"invalid mem_budget on {where}: limit and peak are the same thing; give one"
            )
        values["peak"] = values.pop("limit")
    values.pop("limit", None)
    parsed: dict[str, Any] = {}
    try:
        for metric in ("peak", "retained", "private"):
            if values.get(metric) is not None:
                parsed[metric] = parse_size(values[metric], f"{source} {metric} on {where}")
    except SizeError as exc:
        raise BudgetError(str(exc)) from None
    if values.get("allocations") is not None:
        parsed["allocations"] = _parse_count(
            values["allocations"], f"{source} allocations on {where}"
        )
    if values.get("tolerance") is not None:
        try:
            parsed["tolerance"] = Tolerance.parse(
                values["tolerance"], f"{source} tolerance on {where}"
            )
        except ToleranceError as exc:
            raise BudgetError(str(exc)) from None
    if values.get("no_survivors") is not None:
        parsed["no_survivors"] = _parse_kinds(
            values["no_survivors"], f"{source} no_survivors on {where}"
        )
    if values.get("children") is not None:
        parsed["children"] = _parse_switch(values["children"], f"{source} children on {where}")
    budget = Budget(source=source, **parsed)
    if budget.children and budget.peak is None and budget.private is None:
        raise BudgetError(
            f"invalid mem_budget on {where}: children=True counts the processes the test "
            "starts in peak and private; give one of them, e.g. "
            "mem_budget(peak='200MB', children=True)"
        )
    if not budget.limits() and budget.tolerance is None and not budget.no_survivors:
        raise BudgetError(
            f"invalid mem_budget on {where}: no limit given; expected e.g. "
            "mem_budget('50MB') or mem_budget(retained='1MB', allocations=10_000)"
        )
    return budget


def parse_budget_spec(text: str, where: str, source: str) -> Budget:
    """Parse the ini form: ``50MB`` or ``peak=50MB, retained=1MB, allocations=10000``."""
    args: list[object] = []
    kwargs: dict[str, object] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if sep:
            kwargs[key.strip()] = value.strip()
        else:
            args.append(part)
    return parse_budget(tuple(args), kwargs, where, source)


def merge_markers(budgets: Iterable[Budget]) -> Budget | None:
    """Merge budgets ordered closest first (function, class, module)."""
    merged: Budget | None = None
    for budget in budgets:
        merged = budget if merged is None else merged.merged_over(budget)
    return merged


PASSED = Verdict()  # what a test within its budget gets: shared, it is immutable


def check(budget: Budget, measurement: Measurement) -> Verdict:
    violations: list[Violation] = []
    unmeasured: list[str] = []
    for metric, limit in budget.limit_items():
        value = getattr(measurement, metric)
        share = None
        if value is not None and budget.children and metric in ("peak", "private"):
            share = measurement.children_share(metric)
            value += share
        if value is None:
            unmeasured.append(metric)
        elif value > limit:
            violations.append(Violation(metric, limit, value, budget.source, share))
    if not violations and not unmeasured:
        return PASSED
    return Verdict(tuple(violations), tuple(unmeasured))
