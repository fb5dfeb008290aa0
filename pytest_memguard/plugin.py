"""pytest glue: options, markers, the ``memguard`` fixture, per-test windows, the session gate.

This module translates pytest events into calls on the pure core and nothing more: what is
measured lives in ``measurement``, what fails in ``budget``, how it reads in ``report``.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import pytest

from . import __version__
from .budget import Budget, BudgetError, Verdict, check, merge_markers, parse_budget
from .leaks import LeakResult, LeakRunner, LeakSettings, LeakSettingsError, parse_leak_marker
from .measurement import Engine, Measurement, Meter, get_engine, interpreter_scope, measure
from .options import OPTIONS, OptionError, Settings, cli_type, resolve
from .report import (
    TestRecord,
    atomic_write,
    render_failure,
    report_json,
    summary_table,
    to_properties,
)
from .usage import MemoryUsage, usage

T = TypeVar("T")

MARKERS = (
    "mem_budget(limit=None, *, peak=None, retained=None, private=None, allocations=None, "
    "tolerance=None): fail the test when its memory exceeds a limit (limit is peak). Sizes "
    "like '50MB'; allocations is a count of allocator calls.",
    "mem_leak_check(iterations=None, warmup=None, *, tolerance=None): run the test function "
    "warmup times unjudged, then iterations times measured, and fail when memory grows from "
    "call to call.",
    "no_mem_leak_check: exempt a test whose body cannot run twice from --mem-leak-check.",
    "mem_isolate: run this test in a fresh child process for clean numbers.",
)


class MemguardWarning(pytest.PytestWarning):
    """A memory figure a test asked for could not be measured here."""


@dataclass(frozen=True)
class TestPlan:
    """What to measure for one test, decided once at collection."""

    budget: Budget | None = None
    leak: LeakSettings | None = None
    error: str | None = None
    heap: bool = True
    retained: bool = False
    private: bool = False


PLAN_KEY = pytest.StashKey[TestPlan]()
METER_KEY = pytest.StashKey[Meter]()
PLUGIN_KEY = pytest.StashKey["MemguardPlugin"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memguard", "memory budgets, leak checks and baselines")
    for option in OPTIONS:
        if option.flag is not None:
            if option.is_flag:
                group.addoption(
                    option.flag,
                    action="store_true",
                    default=None,
                    dest=option.ini,
                    help=option.help.replace("%", "%%"),  # argparse %-formats help
                )
            else:
                group.addoption(
                    option.flag,
                    default=None,
                    dest=option.ini,
                    type=cli_type(option),
                    metavar=option.metavar,
                    help=option.help.replace("%", "%%"),
                )
        parser.addini(option.ini, help=option.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    cli = {o.ini: config.getoption(o.ini, None) for o in OPTIONS}
    ini = {o.ini: config.getini(o.ini) for o in OPTIONS}
    try:
        settings = resolve(cli, ini)
    except OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    plugin = MemguardPlugin(config, settings, get_engine())
    config.stash[PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "memguard-session")


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(PLUGIN_KEY, None)
    if plugin is not None:
        plugin.finish()
        config.pluginmanager.unregister(plugin)
        del config.stash[PLUGIN_KEY]


def _where(item: pytest.Item) -> str:
    return item.nodeid


class MemguardPlugin:
    def __init__(self, config: pytest.Config, settings: Settings, engine: Engine) -> None:
        self.config = config
        self.settings = settings
        self.engine = engine
        self.records: dict[str, TestRecord] = {}
        self.is_worker = hasattr(config, "workerinput")
        self._froze_gc = False

    # ------------------------------------------------------------------ reporting header
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return [f"memguard {__version__}: {self.engine.describe()}"]

    # ------------------------------------------------------------------ collection
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            item.stash[PLAN_KEY] = self._plan(item)

    def _plan(self, item: pytest.Item) -> TestPlan:
        try:
            budget = self._budget(item)
            leak = self._leak(item)
        except (BudgetError, LeakSettingsError) as exc:
            return TestPlan(error=str(exc))
        retained = budget is not None and budget.retained is not None
        private = budget is not None and budget.private is not None
        needs_heap = budget is not None and (
            budget.retained is not None or budget.allocations is not None
        )
        heap = self.engine.heap.cheap or needs_heap or retained
        return TestPlan(budget=budget, leak=leak, heap=heap, retained=retained, private=private)

    @property
    def leak_defaults(self) -> LeakSettings:
        return LeakSettings(
            iterations=self.settings.mem_leak_iterations, warmup=self.settings.mem_leak_warmup
        )

    def _leak(self, item: pytest.Item) -> LeakSettings | None:
        mark = item.get_closest_marker("mem_leak_check")
        if mark is not None:
            return parse_leak_marker(
                tuple(mark.args), dict(mark.kwargs), _where(item), self.leak_defaults
            )
        if self.settings.mem_leak_check and item.get_closest_marker("no_mem_leak_check") is None:
            return self.leak_defaults
        return None

    def _budget(self, item: pytest.Item) -> Budget | None:
        budgets = [
            parse_budget(tuple(mark.args), mark.kwargs, _where(item))
            for mark in item.iter_markers("mem_budget")
        ]
        if budgets:
            return merge_markers(budgets)
        return self.settings.mem_default_budget

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if any(p.retained for p in self._plans(session.items)):
            # Per-test garbage collection is what 'retained' needs; frozen, the objects from
            # collection are skipped, so a collection costs ~0.3 ms instead of ~15 ms.
            gc.collect()
            gc.freeze()
            self._froze_gc = True

    @staticmethod
    def _plans(items: list[pytest.Item]) -> Iterator[TestPlan]:
        for item in items:
            plan = item.stash.get(PLAN_KEY, None)
            if plan is not None:
                yield plan

    # ------------------------------------------------------------------ running
    def _start(self, item: pytest.Item, plan: TestPlan) -> Meter:
        meter = Meter(self.engine, heap=plan.heap, retained=plan.retained, private=plan.private)
        item.stash[METER_KEY] = meter
        meter.start()
        return meter

    def _finish(self, item: pytest.Item, plan: TestPlan, judge: bool) -> None:
        meter = item.stash.get(METER_KEY, None)
        if meter is None:
            return
        del item.stash[METER_KEY]
        try:
            measurement = meter.stop()
            verdict = check(plan.budget, measurement) if plan.budget is not None else Verdict()
            extra: dict[str, Any] = {}
            if plan.budget is not None:
                extra.update({f"budget.{k}": v for k, v in plan.budget.limits().items()})
            item.user_properties.extend(to_properties(measurement.metrics(), extra))
            if not judge:
                return
            for metric in verdict.unmeasured:
                warnings.warn(
                    MemguardWarning(
                        f"mem_budget {metric} on {_where(item)} cannot be checked: "
                        f"{self._why_unmeasured(metric)}"
                    ),
                    stacklevel=1,
                )
            if verdict.failed:
                alive = all(v.metric in ("retained", "private") for v in verdict.violations)
                sizes = [v.value for v in verdict.violations if v.metric != "allocations"]
                # An allocation-count failure is about where calls happen, not what is left.
                meter.explain(alive_only=alive, types=bool(sizes), by_count=not sizes)
                scale = min(sizes) if sizes else 0
                message = render_failure(
                    (v.message() for v in verdict.violations), measurement, alive, scale
                )
                pytest.fail(message, pytrace=False)
        finally:
            meter.close()

    def _why_unmeasured(self, metric: str) -> str:
        if metric == "allocations":
            return f"allocation counts need the allocator hook; {self.engine.describe()}"
        return f"this platform cannot measure {metric}"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        plan = item.stash.get(PLAN_KEY, None)
        if plan is not None and plan.error is not None:
            pytest.fail(plan.error, pytrace=False)
        if plan is not None and self.settings.mem_scope == "test":
            self._start(item, plan)
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        plan = item.stash.get(PLAN_KEY, None)
        if plan is None or self.settings.mem_scope != "call":
            return (yield)
        self._start(item, plan)
        try:
            result = yield
        except BaseException:
            self._finish(item, plan, judge=False)
            raise
        self._finish(item, plan, judge=True)
        if plan.leak is not None:
            self._check_leaks(item, plan.leak)
        return result

    def _check_leaks(self, item: pytest.Item, settings: LeakSettings) -> None:
        """Call the test function again and again with the same fixture values (the official
        run above passed) and fail when memory grows from call to call."""
        result = LeakRunner(self.engine, settings).run(item.runtest)
        item.user_properties.extend(to_properties({}, _leak_properties(result)))
        if result.threads > 1:
            warnings.warn(
                MemguardWarning(
                    f"mem_leak_check on {_where(item)}: {result.threads - 1} other thread(s) "
                    "were alive; memory readings are process-wide, so their allocations count"
                ),
                stacklevel=1,
            )
        if result.leaked:
            pytest.fail(result.message(), pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        try:
            return (yield)
        finally:
            plan = item.stash.get(PLAN_KEY, None)
            if plan is not None and self.settings.mem_scope == "test":
                self._finish(item, plan, judge=True)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker:
            return
        record = self.records.get(report.nodeid)
        if record is None:
            record = self.records[report.nodeid] = TestRecord(report.nodeid)
        properties = report.user_properties if report.when in ("call", "teardown") else ()
        record.absorb(report.when, report.outcome, properties)

    # ------------------------------------------------------------------ session end
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        lines = summary_table(self.records.values(), self.settings.mem_top)
        if lines:
            terminalreporter.write_sep("-", f"memguard: top {len(lines) - 1} tests by peak memory")
            for line in lines:
                terminalreporter.write_line(line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker or self.settings.mem_report is None:
            return
        text = report_json(interpreter_scope(), self.engine.describe(), self.records.values())
        atomic_write(self.settings.mem_report, text)

    def finish(self) -> None:
        if self._froze_gc:
            gc.unfreeze()
            self._froze_gc = False


def _leak_properties(result: LeakResult) -> dict[str, Any]:
    props: dict[str, Any] = {"leak.calls": result.calls, "leak.leaked": result.leaked}
    props.update({f"leak.{k}_per_call": round(v, 3) for k, v in result.growth.items()})
    return props


class MemguardFixture:
    """The ``memguard`` fixture: measure memory from inside a test."""

    def __init__(self, engine: Engine, leak_defaults: LeakSettings | None = None) -> None:
        self._engine = engine
        self._leak_defaults = leak_defaults or LeakSettings()

    def check_leaks(
        self,
        fn: Callable[..., T],
        *args: Any,
        iterations: int | None = None,
        warmup: int | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` like ``mem_leak_check``; raise AssertionError (a test
        failure) with the report on a leak, else return the last call's result."""
        where = getattr(fn, "__qualname__", repr(fn))
        try:
            settings = parse_leak_marker(
                (), {"iterations": iterations, "warmup": warmup}, where, self._leak_defaults
            )
        except LeakSettingsError as exc:
            raise ValueError(str(exc)) from None
        last: list[T] = []

        def call() -> None:
            last[:] = [fn(*args, **kwargs)]

        result = LeakRunner(self._engine, settings).run(call)
        if result.leaked:
            raise AssertionError(result.message(f"{where}:"))
        value = last[0]
        last.clear()
        return value

    def usage(self) -> MemoryUsage:
        return usage()

    @contextmanager
    def measure(self, *, retained: bool = True, private: bool = False) -> Iterator[Measurement]:
        with measure(retained=retained, private=private) as result:
            yield result


@pytest.fixture
def memguard(request: pytest.FixtureRequest) -> MemguardFixture:
    """Measure memory, check for leaks and run long soaks from inside a test."""
    plugin = request.config.stash.get(PLUGIN_KEY, None)
    if plugin is None:  # pragma: no cover - the fixture comes with the plugin
        return MemguardFixture(get_engine())
    return MemguardFixture(plugin.engine, plugin.leak_defaults)
