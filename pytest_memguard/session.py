"""The run's state: what each test measures (its plan), the window around it, the records made
from its reports, and the baselines. ``plugin`` turns pytest's hooks into calls on this.

A test's figures travel one way: its window (a ``Meter``) gives them, ``finish`` compares them
with the test's budget and baseline and attaches them to the item as ``memguard.*`` user
properties, pytest puts those on the test's reports (which xdist carries to its controller),
and ``absorb`` makes the test's record from the reports. The session's end reads only records.
"""

from __future__ import annotations

import linecache
import os
import random
import sys
import warnings
from collections import Counter
from collections.abc import Generator, Iterable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import pytest

from .baseline import BaselineCheck, Change, random_string_hashes, render_regression
from .firstuse import MODULES, modules_loaded, real_modules
from .measurement import Engine, Measurement, Meter, interpreter_scope
from .options import Settings
from .report import (
    PROPERTY_PREFIX,
    TestRecord,
    atomic_write,
    render_baseline_summary,
    report_document,
    report_json,
    summary_table,
    to_properties,
)
from .tolerance import Tolerance

if TYPE_CHECKING:
    # Imported where used: a run without budgets or leak checks never loads them.
    from .budget import Budget, Verdict
    from .leaks import KnownLeaks, LeakResult, LeakSettings, SecondLook
    from .repetition import CannotRepeat, Repetition
    from .retainers import Survivors

HYPOTHESIS_SLACK = 0.25
# How many leak failures on glibc's figure alone a run checks again in a child process: the
# slow filling of glibc's thread cache failed 1-9 of jsonschema's tests a run, while a native
# leak in a suite's shared harness would fail most of its tests and pay a start-up for each.
SECOND_LOOKS = 16
# The seed of ``random`` in a window whose baseline is gated: hypothesis' too (fix_random_inputs).
RANDOM_SEED = 0
# How many warm calls a test whose figures look regressed gets, at most (see finish).
WARM_CALLS = 2
# A test recorded with this much kept past its call, nearly all it ever held at once, is called
# again warm, as one that paid a first use it was seen to pay: a cache filled from data
# already in memory shows in nothing else. chardet 7.7.0's first test to detect with a
# multi-byte model builds its tables (22.5 MiB kept of a 23.4 MiB peak, 147,621 calls; warm,
# 4 KiB and 111,380), and a 64 KiB regression in it was compared with that and missed. Work
# that keeps a part of what it held is what it is every call: attrs' hypothesis property
# tests keep 1.2-3.8 MiB of a 2.2-6.3 MiB peak warm too, and calling those four again cost
# attrs' update 15% more CPU.
WARM_RETAINED = 1 << 20
WARM_RETAINED_SHARE = 0.9
# Tests listed by name under "too slow to check for leaks"; the JSON report has them all.
TOO_SLOW_LISTED = 20
OUR_MARKERS = frozenset({"mem_budget", "mem_leak_check", "no_mem_leak_check", "mem_isolate"})
BASELINE_STATUS = f"{PROPERTY_PREFIX}baseline.status"
BASELINE_CHANGES = f"{PROPERTY_PREFIX}baseline.changes"
BASELINE_CONCURRENT = f"{PROPERTY_PREFIX}baseline.concurrent"
BASELINE_SUBTESTS = f"{PROPERTY_PREFIX}baseline.subtests"
# The figures hold a first use no warm call took out (baseline.FIRST_USE).
BASELINE_FIRST_USE = f"{PROPERTY_PREFIX}baseline.first_use"


class MemguardWarning(pytest.PytestWarning):
    """A memory figure a test asked for could not be measured here."""


@dataclass(frozen=True)
class TestPlan:
    """What to measure for one test, decided once at collection."""

    __test__ = False  # not a test class, whatever pytest makes of the name

    budget: Budget | None = None
    leak: LeakSettings | None = None
    error: str | None = None  # a bad marker or baseline file: the test fails at setup
    heap: bool = True
    retained: bool = False
    private: bool = False
    baseline: bool = False
    isolate: bool = False
    trim: bool = False  # a peak budget: trim malloc first (see Meter)
    children: bool = False  # watch the processes the test starts (mem_budget children=True)
    tolerance: Tolerance | None = None  # the baseline's, where not the run's
    # Where the window opens (``window_kind``): "function", "unittest" or "call".
    window: str = "call"

    @property
    def leak_check(self) -> LeakSettings | None:
        """The leak check to run: none for a test whose plan failed (it fails at setup)."""
        return self.leak if self.error is None else None


def window_kind(item: pytest.Item) -> str:
    """Which hook opens an item's window: a test function's is the call of the function
    (``pytest_pyfunc_call``); a unittest case reports to the item as its result, from
    ``startTest`` (before ``setUp``) to ``stopTest`` (after ``tearDown`` and cleanups); any other
    item's is its ``runtest`` (the call phase)."""
    kind = type(item)
    if isinstance(item, pytest.Function) and kind.runtest is pytest.Function.runtest:
        return "function"
    if callable(getattr(kind, "startTest", None)) and callable(getattr(kind, "stopTest", None)):
        return "unittest"
    return "call"


PLAN_KEY = pytest.StashKey[TestPlan]()
METER_KEY = pytest.StashKey[Meter]()
SURVIVORS_KEY: pytest.StashKey[Survivors] = pytest.StashKey()


_OUTCOMES = (pytest.fail.Exception, pytest.skip.Exception, pytest.xfail.Exception)


def _doctest(item: pytest.Item) -> Any:
    """The ``doctest.DocTest`` a pytest doctest item runs, or None for any other item."""
    test = getattr(item, "dtest", None)
    return test if isinstance(getattr(test, "globs", None), dict) else None


def _least(first: int | None, second: int | None) -> int | None:
    return first if second is None or (first is not None and first <= second) else second


class MemguardSession:
    """One per pytest run (per xdist worker, and the controller), kept in ``config.stash``."""

    def __init__(self, config: pytest.Config, settings: Settings, engine: Engine) -> None:
        self.config = config
        self.settings = settings
        self.engine = engine
        engine.watch_file_reads()  # a first read is a first use (see firstuse)
        self.is_worker = hasattr(config, "workerinput")  # its controller reports and writes
        self.is_child = False  # a spawned --mem-isolate child: never isolates again
        self.rootdir = str(config.rootpath)
        self.scope = interpreter_scope()
        self.scope_test = settings.mem_scope == "test"
        self.baselines = BaselineCheck(
            self.rootdir,
            self.scope,
            settings.mem_baseline or "auto",
            settings.mem_baseline_metrics,
            settings.mem_tolerance,
        )
        self.random_hashes = random_string_hashes(os.environ, bool(sys.flags.ignore_environment))
        self.records: dict[str, TestRecord] = {}
        self.collected: set[str] = set()  # node ids from xdist workers, and deselected ones
        self.deselected = False
        self.baseline_outcome: dict[str, list[str]] = {}
        self.unwritten: list[str] = []  # reports that could not be written, and why
        # pytest-memray traces this run (its --memray): every figure includes its work.
        self.memray = bool(config.getoption("memray", False))
        self.report_missing = False  # the --mem-report the user asked for could not be written
        # A repetition of a test: a leak check's run, a warm call, the traced call explaining
        # a regression. Only a warm call's hooks open windows (see windowless).
        self.repeating = False
        # In a warm call (_remeasure): the windows its hooks opened, where the first call's did.
        self.warm: list[Meter] | None = None
        # In a test's call phase (a report logged now is a subtest's), and the subtests
        # reported since the test's window opened.
        self.calling = False
        self.subtests = 0
        self.subtests_failed = 0
        self._modules_settled = 0  # how many modules there were when _settle_modules last ran
        self._warmed = False
        self._leak_defaults: LeakSettings | None = None
        self.known_leaks: KnownLeaks | None = None  # what full leak checks found (see there)
        self.second_looks = 0  # leak failures checked again in a child (see _second_look)

    # ------------------------------------------------------------------ plans
    def plan(self, item: pytest.Item) -> TestPlan:
        names = {m.name for m in item.iter_markers() if m.name in OUR_MARKERS}
        where = item.nodeid
        try:
            budget = self.settings.mem_default_budget
            if "mem_budget" in names:
                budget = self._budget(item)
            leak = self._leak(item, names)
        except ValueError as exc:  # BudgetError, LeakSettingsError
            return TestPlan(error=str(exc))
        for name in ("mem_isolate", "no_mem_leak_check"):
            for mark in item.iter_markers(name) if name in names else ():
                if mark.args or mark.kwargs:
                    given = ", ".join([*map(repr, mark.args), *map(str, mark.kwargs)])
                    return TestPlan(
                        error=f"invalid {name} on {where}: takes no arguments, got {given}"
                    )
        tracked = self.baselines.tracks(where)
        if tracked:
            problem = self.baselines.problem(where)
            if problem is not None:
                return TestPlan(error=problem)
        isolate = not self.is_child and (self.settings.mem_isolate or "mem_isolate" in names)
        retained = tracked or (budget is not None and budget.retained is not None)
        # The hook costs 1.1-1.25x on allocation-heavy suites (attrs, dateutil), so heap figures
        # are measured where something reads them: a budget (whose failure names the sites, and
        # whose peak also takes the heap peak, which sees a Python spike a sampled peak cannot
        # preempt), a baseline, a leak check, a report file. Elsewhere the kernel's figures are
        # all. The same rule on the tracemalloc fallback, so that its figures are the hook's.
        reported = bool(self.settings.mem_report or self.settings.mem_html)
        read = budget is not None or leak is not None or reported
        return TestPlan(
            budget=budget,
            leak=leak,
            heap=retained or read,
            retained=retained,
            private=budget is not None and budget.private is not None,
            trim=budget is not None and budget.peak is not None,
            children=budget is not None and bool(budget.children),
            tolerance=self._tolerance(item, budget) if tracked else None,
            baseline=tracked,
            isolate=isolate,
            window=window_kind(item),
        )

    def _tolerance(self, item: pytest.Item, budget: Budget | None) -> Tolerance | None:
        """A marker's tolerance, else the run's; at least ``HYPOTHESIS_SLACK`` for a
        hypothesis test: with its examples fixed, what it allocates still depends on how
        full hypothesis' own caches are (attrs' property tests moved by up to 18% with the
        tests run before them, the same examples drawn)."""
        tolerance = budget.tolerance if budget is not None and budget.tolerance else None
        if not getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            return tolerance
        base = tolerance or self.settings.mem_tolerance
        return replace(base, relative=max(base.relative, HYPOTHESIS_SLACK))

    def fix_random_inputs(self) -> None:
        """Tests whose baselines are checked or recorded, or that are checked for leaks, draw
        the same examples every run: hypothesis draws new random examples each run otherwise
        (attrs' property tests moved by 5-16% from run to run, and a leak check's repeated runs
        would each fill hypothesis' caches with new examples). Done as hypothesis' own
        ``--hypothesis-seed`` does it, and only where the user gave no seed."""
        core: Any = sys.modules.get("hypothesis.core")
        if core is None:
            return
        # Hypothesis makes its global Random on first use and checks, with gc.get_referrers,
        # that something keeps it; on 3.14 that search skips objects frozen by gc.freeze(),
        # as every window's are, and hypothesis warns (an error where warnings are). Made
        # here, before any window, the check finds its owner.
        entropy: Any = sys.modules.get("hypothesis.internal.entropy")
        prng = getattr(entropy, "deterministic_PRNG", None)
        if prng is not None:
            with prng():
                pass
        if self.config.getoption("hypothesis_seed", None) is not None:
            return
        if getattr(core, "global_force_seed", 0) is None:  # feature-detected: not public
            core.global_force_seed = RANDOM_SEED

    @property
    def windowless(self) -> bool:
        """A leak check's repetition (measured around the whole run) or the traced call that
        explains a regression: the hooks open no window of their own."""
        return self.repeating and self.warm is None

    def seed_import(self, collector: pytest.Collector) -> None:
        """A test file whose tests' baselines are checked or recorded is collected (and a
        module imported) with ``random`` seeded, as each window is: data a module draws when
        imported is then the same in every run, whichever files were collected before it.
        pygments' ``test_basic_api.py`` shuffles its lexers' input at import: 182 and 344 of
        its ``test_random_input`` tests read as regressed in two checks of unchanged code."""
        if isinstance(collector, pytest.File) and self.baselines.tracks(collector.nodeid):
            random.seed(RANDOM_SEED)

    def _budget(self, item: pytest.Item) -> Budget | None:
        """The item's markers merged, closest first; None where the closest is
        ``mem_budget(None)``, which lifts every budget (``mem_default_budget`` too)."""
        from .budget import lifts_budgets, merge_markers, parse_budget

        marks = list(item.iter_markers("mem_budget"))
        if marks and lifts_budgets(tuple(marks[0].args), marks[0].kwargs):
            return None
        budgets = [parse_budget(tuple(mark.args), mark.kwargs, item.nodeid) for mark in marks]
        return merge_markers(budgets)

    @property
    def leak_defaults(self) -> LeakSettings:
        """The settings of ``--mem-leak-check`` and of markers' missing arguments."""
        if self._leak_defaults is None:
            from .leaks import LeakSettings

            iterations = self.settings.mem_leak_iterations
            warmup = self.settings.mem_leak_warmup
            self._leak_defaults = (
                LeakSettings(warmup=warmup)
                if iterations is None
                else LeakSettings(iterations=iterations, warmup=warmup, screen=None)
            )
        return self._leak_defaults

    def _leak(self, item: pytest.Item, names: AbstractSet[str]) -> LeakSettings | None:
        if "mem_leak_check" in names:
            from .leaks import parse_leak_marker

            mark = item.get_closest_marker("mem_leak_check")
            assert mark is not None
            return parse_leak_marker(
                tuple(mark.args), dict(mark.kwargs), item.nodeid, self.leak_defaults
            )
        if self.settings.mem_leak_check and "no_mem_leak_check" not in names:
            return self.leak_defaults
        return None

    # ------------------------------------------------------------------ a test's window
    def start(self, plan: TestPlan) -> Meter:
        if not self._warmed:
            # One empty window first: our own code paths allocate once when first run, and the
            # first test of a process must not carry that.
            self._warmed = True
            with Meter(self.engine, heap=plan.heap, retained=plan.retained):
                pass
        self.subtests = self.subtests_failed = 0
        if plan.baseline:
            # linecache only grows: code generators (attrs, dataclasses) register their source
            # under a name and count up past the names taken, so what a test allocates grew
            # with how many such classes earlier tests made (attrs' test_repr: 1,590 calls in
            # file order, 2,220 at a random order). Its next reader re-reads a file from disk.
            linecache.clearcache()
            # What a property test adds to hypothesis' memo caches depended on what earlier
            # tests left there: attrs' test_immutable retained 1.1 MiB serially, 1.5 MiB in an
            # xdist worker. Emptied, the figure is the cost of filling them.
            from .leaks import clear_hypothesis_caches

            clear_hypothesis_caches()
            # Tests that draw from ``random`` draw the same every run, as hypothesis' examples
            # are (fix_random_inputs) and as pytest-randomly seeds every test: jinja2's
            # lorem-ipsum tests made 1,344 calls in one run of unchanged code and 1,509 in the
            # next. Seeded at each window, so the warm second call draws what the first did.
            random.seed(RANDOM_SEED)
            self._settle_modules()
        meter = Meter(
            self.engine,
            plan.heap,
            plan.retained,
            plan.private,
            trim=plan.trim,
            children=plan.children,
            # Only a failed budget is explained from the window's samples: a regression's
            # sites come from one more call with every allocation traced.
            sites=plan.budget is not None,
        )
        meter.start()
        return meter

    def _settle_modules(self) -> None:
        """Lookups that cost more the more modules are imported, done before the window
        whenever modules were added, so that a test pays for neither how many modules earlier
        tests imported nor which. Before 3.12, ``getattr(module, name, default)`` of a missing
        name makes an AttributeError and its message (about 6 calls), and unittest's
        ``assertWarns`` asks every module for its ``__warningregistry__``: docutils'
        ``test_io.py`` made 8-12% more calls in the reversed file order. An empty registry is
        what ``warnings`` gives a module the first time it warns from there, so every module
        gets one. ``inspect.getmodule`` of what it cannot place (a frame of ``<frozen runpy>``,
        as every ``inspect.stack()`` under pytest has) maps the file of each module imported
        since it last did: structlog's ``TestCallsiteParameterAdder`` test that came first
        after imports at a random order made 20,465 calls, 15,089 recorded. Here it maps them."""
        if modules_loaded() == self._modules_settled:
            return
        if sys.version_info < (3, 12):
            for module in list(MODULES.values()):
                if isinstance(module, ModuleType):
                    vars(module).setdefault("__warningregistry__", {})
        inspect: Any = MODULES.get("inspect")
        if inspect is not None:
            with suppress(Exception):  # its own failure, the user's call meets it too
                inspect.getmodule(None, "<memguard: no such file>")
        self._modules_settled = modules_loaded()

    @contextmanager
    def window(self, item: pytest.Item, plan: TestPlan) -> Iterator[None]:
        """The test's window around what the block runs; judged if the block returns. In a warm
        call, only opened and stopped: ``_remeasure`` takes it."""
        meter = self.start(plan)
        if self.warm is not None:
            try:
                yield
            finally:
                meter.stop()
                self.warm.append(meter)
            return
        try:
            yield
        except BaseException as exc:
            self.finish(item, plan, meter, judge=False, compare=_expected_failure(item, exc))
            raise
        self.finish(item, plan, meter, judge=True)

    def measured(self, item: pytest.Item, plan: TestPlan) -> Generator[None, object, object]:
        """The body of a hook wrapper whose window holds what it wraps."""
        with self.window(item, plan):
            return (yield)

    def measured_runtest(
        self, item: pytest.Item, plan: TestPlan
    ) -> Generator[None, object, object]:
        """The body of the call phase's wrapper for any other item (a doctest, another
        plugin's): its window holds the item's ``runtest`` only. Other plugins' hooks of the
        call phase run inside every wrapper of it, so a window opened by the wrapper held them
        too: pytest-randomly reseeds its generators there, which moved each of toolz's doctests
        by 600 or more calls at a random order."""
        had = "runtest" in item.__dict__
        original = item.runtest
        doctest = _doctest(item)
        # The doctest runner empties a doctest's globals after each run: kept for a warm call.
        globs = dict(doctest.globs) if doctest is not None and plan.baseline else None

        def runtest() -> None:
            if self.repeating and doctest is not None and globs is not None:
                doctest.globs.update(globs)
            if self.windowless:
                original()
                return
            with self.window(item, plan):
                original()

        item.runtest = runtest  # type: ignore[method-assign]
        try:
            return (yield)
        finally:
            if had:
                item.runtest = original  # type: ignore[method-assign]
            else:
                del item.runtest

    def measured_unittest(
        self, item: pytest.Item, plan: TestPlan
    ) -> Generator[None, object, object]:
        """A unittest case's window, from its result's ``startTest`` to its ``stopTest``: the
        item is the result unittest reports to. The case's failures are kept on the item and
        raised after the call phase, so a failed case is not judged."""
        meters: list[Meter] = []
        kind: Any = type(item)  # pytest's own startTest/stopTest still run, outside the window

        def start_test(testcase: object) -> None:
            kind.startTest(item, testcase)
            if not self.windowless:
                (meters if self.warm is None else self.warm).append(self.start(plan))

        def stop_test(testcase: object) -> None:
            opened = meters if self.warm is None else self.warm
            if opened and not self.windowless:
                opened[-1].stop()
            kind.stopTest(item, testcase)

        item.startTest = start_test  # type: ignore[attr-defined]
        item.stopTest = stop_test  # type: ignore[attr-defined]
        failed = True
        try:
            result = yield
            failed = bool(getattr(item, "_excinfo", None))  # pytest's store of the failures
        finally:
            try:  # a warm call (in finish) opens its window where this call did
                for meter in meters:
                    self.finish(item, plan, meter, judge=not failed)
            finally:
                del item.startTest, item.stopTest  # type: ignore[attr-defined]
        return result

    def finish(
        self, item: pytest.Item, plan: TestPlan, meter: Meter, judge: bool, compare: bool = False
    ) -> None:
        """Close the window, attach the figures to the item and, where ``judge`` (the test
        itself passed), fail it on a budget it exceeded or a baseline regression. ``compare``:
        the body raised what it was expected to (xfail), so its figures are compared with the
        baseline too, though nothing can fail a test expected to fail."""
        try:
            measurement = meter.stop()  # first: anything of ours allocated before would count
        except BaseException:
            meter.close()
            raise
        # The call is over, its teardown is not: a test that rebound sys.modules for its call
        # (structlog's test_no_multiprocessing) has it so still, and what is imported from here
        # on for the first time (a warm call's helpers, a failure's messages) needs the real one.
        with real_modules():
            self._finish_stopped(item, plan, meter, measurement, judge, compare)

    def _finish_stopped(
        self,
        item: pytest.Item,
        plan: TestPlan,
        meter: Meter,
        measurement: Measurement,
        judge: bool,
        compare: bool,
    ) -> None:
        """``finish`` once the window is stopped, with its figures."""
        # A subtest that failed failed the test (pytest reports it apart; the body went on):
        # its figures are of a run that did not pass, as for any failed test.
        judge = judge and not self.subtests_failed
        # A regressed test's warm window, left open: the hook traces one more call in it.
        explained: Meter | None = None
        try:
            budget = plan.budget
            verdict = None
            if budget is not None:
                from .budget import check

                verdict = check(budget, measurement)
            if verdict is None or not (judge and verdict.failed):
                meter.close()  # the tracking stays on only to explain a failed budget
            metrics = measurement.metrics()
            regressions: list[Change] = []
            concurrent = measurement.concurrent
            subtests = self.subtests
            had_subtests = subtests > 0
            baseline_properties: list[tuple[str, Any]] = []
            # Only a body that passed, or failed as expected (xfail: its figures up to the
            # expected error repeat, and are recorded), is compared: a failing test's figures
            # are of a partial run, never recorded, and "new" on every check would be a lie.
            if plan.baseline and (judge or compare):
                tolerance = plan.tolerance
                checked = self.baselines.compare(
                    item.nodeid, metrics, tolerance, concurrent, had_subtests
                )
                # A first use that imports nothing: a pattern compiled, a file read first.
                loaded = measurement.compiled or measurement.files_read > 0
                cold = (
                    measurement.imports > 0
                    or loaded
                    or checked.status == "regressed"
                    or (checked.status == "new" and _filled_a_cache(measurement))
                )
                # Not where the window closes after teardown (its fixtures are gone). Any
                # item's call is repeated as a test function's is, a doctest's with its
                # globals put back (see measured_runtest): other plugins' items pay for first
                # uses too (pygments' example-file items compile their lexer's rules on first
                # use: apdl's read 266,020 calls at a random order, 13,230 recorded), and a
                # second call that raises changes nothing. A first use can leave the next call
                # paying part of it (a lexer's hundreds of rules push the oldest patterns out
                # of re's bounded cache, and pygments' test_lexer_classes compiled its own
                # again: 222 calls, 52-60 recorded), so it is called again while the figures
                # still look regressed.
                warm = None
                if cold and (judge or compare) and meter.closed and not self.scope_test:
                    for _ in range(WARM_CALLS):
                        if warm is not None:
                            warm.close()
                        again = self._remeasure(item, plan, expected=compare)
                        if again is None:
                            break
                        warm = again
                        warm_metrics = warm.result.metrics() if warm.result else {}
                        metrics = {k: _least(v, warm_metrics.get(k)) for k, v in metrics.items()}
                        concurrent = concurrent or bool(warm.result and warm.result.concurrent)
                        checked = self.baselines.compare(
                            item.nodeid, metrics, tolerance, concurrent, had_subtests
                        )
                        if not checked.regressions:
                            break
                    if warm is not None:
                        if checked.regressions and judge and not warm.closed:
                            explained = warm
                        else:
                            warm.close()
                if warm is None:
                    checked = checked.unwarmed(
                        imported=measurement.imports > 0,
                        first_use=loaded and not self.baselines.recorded_first_use(item.nodeid),
                    )
                baseline_properties.append((BASELINE_STATUS, checked.status))
                if warm is None and loaded:
                    baseline_properties.append((BASELINE_FIRST_USE, True))
                if concurrent:
                    baseline_properties.append((BASELINE_CONCURRENT, True))
                if subtests:
                    baseline_properties.append((BASELINE_SUBTESTS, subtests))
                if checked.moved:
                    text = "; ".join(c.describe() for c in checked.moved)
                    baseline_properties.append((BASELINE_CHANGES, text))
                regressions = checked.regressions
            properties = to_properties(metrics)
            properties.extend(baseline_properties)
            if plan.children:
                children = {
                    "children.count": len(measurement.children),
                    "children.peak": measurement.children_share("peak"),
                    "children.private": measurement.children_share("private"),
                }
                properties.extend(to_properties({}, children))
            if budget is not None:
                properties.extend(
                    to_properties({}, {f"budget.{k}": v for k, v in budget.limit_items()})
                )
            item.user_properties.extend(properties)
            if judge:
                self._judge(item, meter, regressions, verdict, explained, concurrent, had_subtests)
        finally:
            meter.close()
            if explained is not None:
                explained.close()

    def _remeasure(self, item: pytest.Item, plan: TestPlan, expected: bool = False) -> Meter | None:
        """A second, warm call of a test (same fixture values) whose first window paid for
        first use (a module imported in it) or that looks regressed: what the test itself
        costs, whichever test ran before it. Its window is opened by the hook that opened the
        first call's, so both hold the same work; around ``runtest`` it would also hold
        pytest's dispatch of the call, which under ``-n 2`` built a hook proxy for each call of
        pygments' ``test_lexer_classes`` (121 calls against 52). The meter is returned stopped
        but still tracking (``explain`` can follow; the caller closes it). None where the body
        cannot run twice (it raised; with ``expected``, the first call failed as an xfail
        expects, and this one must fail the same way): then the first figures stand."""
        from .repetition import reports_held

        # A unittest case reports its failures to the item (pytest keeps them in
        # ``_excinfo`` and raises them after the call phase): a failed re-run must not count.
        failures = item.__dict__.get("_excinfo")
        kept = list(failures) if failures is not None else None
        self.repeating = True
        opened: list[Meter] = []
        self.warm = opened
        done = False
        calling, self.calling = self.calling, True
        try:
            # Its subtests' reports are not logged (docutils' unittest cases, whose subtests
            # were counted twice and whose second call failed a subtest in some orders).
            with reports_held(item) as failed:
                try:
                    item.runtest()
                except (Exception, *_OUTCOMES) as exc:  # pytest.fail/skip/xfail: BaseExceptions
                    if not (expected and _expected_failure(item, exc)):
                        return None
                else:
                    if expected:
                        return None
            if failed or len(item.__dict__.get("_excinfo") or ()) != len(kept or ()):
                return None
            if len(opened) != 1:  # no window (the call never reached it), or several
                return None
            done = True
            return opened[0]
        finally:
            self.calling = calling
            self.warm = None
            for meter in opened if not done else ():
                meter.close()
            self.repeating = False
            if "_excinfo" in item.__dict__:
                item.__dict__["_excinfo"] = kept

    def _judge(
        self,
        item: pytest.Item,
        meter: Meter,
        regressions: list[Change],
        verdict: Verdict | None,
        warm: Meter | None = None,
        concurrent: bool = False,
        subtests: bool = False,
    ) -> None:
        """Fail the test on a baseline regression (with where one more call allocates, traced
        in ``warm``, the window of the call that confirmed it, still open) or a budget it
        exceeded (explained: the top allocation sites and the types that grew); warn of limits
        that cannot be checked."""
        if regressions:
            message = render_regression(regressions, concurrent, subtests, self.random_hashes)
            if warm is not None:
                message += self._regression_sites(item, regressions)
            pytest.fail(message, pytrace=False)
        if verdict is None:
            return
        for metric in verdict.unmeasured:
            warnings.warn(
                MemguardWarning(
                    f"mem_budget {metric} on {item.nodeid} cannot be checked: "
                    f"{self._why_unmeasured(metric)}"
                ),
                stacklevel=1,
            )
        if verdict.failed:
            measurement = meter.result
            assert measurement is not None  # made by meter.stop()
            alive = all(v.metric in ("retained", "private") for v in verdict.violations)
            sizes = [v.value for v in verdict.violations if v.metric != "allocations"]
            # An allocation-count failure is about where calls happen, not what is left.
            meter.explain(alive_only=alive, types=bool(sizes), by_count=not sizes, chains=alive)
            scale = min(sizes) if sizes else 0
            from .messages import render_failure

            message = render_failure((v.message() for v in verdict.violations), measurement, scale)
            pytest.fail(message, pytrace=False)

    def _regression_sites(self, item: pytest.Item, regressions: list[Change]) -> str:
        """Where a regressed test allocates: one more call with every allocation traced (the
        warm ones confirmed the regression; sampled sites of a small test say nothing).
        Empty where that call raises or the backend cannot show freed blocks."""
        from .repetition import reports_held

        counts = all(c.metric == "allocations" for c in regressions)
        self.repeating = True
        try:
            with reports_held(item):  # its subtests' reports, as a warm call's, are not logged
                sites = self.engine.heap.call_sites(item.runtest, 5, by_count=counts)
        except (Exception, *_OUTCOMES):
            return ""
        finally:
            self.repeating = False
        from .messages import render_sites  # after the call: its import is not the test's

        rows = render_sites(sites, alive_only=False)[1:]
        if not rows:
            return ""
        return "\nWhere one more call of the test allocates (every allocation traced):\n" + (
            "\n".join(rows)
        )

    def _why_unmeasured(self, metric: str) -> str:
        if metric == "allocations":
            return f"allocation counts need the allocator hook; {self.engine.describe()}"
        return f"this platform cannot measure {metric}"

    def leak_checked_run(
        self, item: pytest.Item, nextitem: pytest.Item | None, settings: LeakSettings
    ) -> list[pytest.TestReport]:
        """The test's protocol with a leak check, its reports not yet logged: the official run
        (measured, judged and reported as any other), then, if it passed, the whole test again
        and again (setup, call and teardown, see ``repetition``), and the verdict written into
        the official call's report. The official run comes first so that a test that cannot
        run twice still passes or fails as itself; fixtures broader than the test's are torn
        down (as far as ``nextitem`` needs) only after the repetitions."""
        from _pytest.runner import runtestprotocol

        from .repetition import Repetition, teardown_rest

        repetition = Repetition(item)  # before the official run: a doctest's globals
        reports = runtestprotocol(item, log=False, nextitem=cast("pytest.Item", item.parent))
        call = next((report for report in reports if report.when == "call"), None)
        if call is not None and all(report.passed for report in reports):
            self._judge_leaks(item, repetition, settings, call, reports[-1])
        rest = teardown_rest(item, nextitem)
        if rest.failed:  # a broader fixture's teardown: the test's teardown error, as always
            rest.user_properties = reports[-1].user_properties
            reports[-1] = rest
        return reports

    def _judge_leaks(
        self,
        item: pytest.Item,
        repetition: Repetition,
        settings: LeakSettings,
        call: pytest.TestReport,
        teardown: pytest.TestReport,
    ) -> None:
        """Repeat the test and write the verdict into the official call's report, and the
        figures into its teardown report (where records read properties from)."""
        from .leaks import KnownLeaks, LeakRunner
        from .repetition import CannotRepeat

        if self.known_leaks is None:
            self.known_leaks = KnownLeaks()

        self.repeating = True
        result: LeakResult | CannotRepeat
        try:
            with warnings.catch_warnings():
                # The official run showed the test's warnings; the repetitions' are dropped
                # (kept, they would be growth the check itself made).
                warnings.showwarning = _drop_warning
                named = item.get_closest_marker("mem_leak_check") is not None
                runner = LeakRunner(self.engine, settings, self.known_leaks)
                result = runner.run(repetition, named=named)
                self.known_leaks.learn(result, item.nodeid)
        except CannotRepeat as exc:
            result = exc
        finally:
            self.repeating = False
            repetition.restore()
        if isinstance(result, CannotRepeat):
            # The official run was the first: a repetition's run number is one more.
            reason = f"its run {result.run + 1} {result.reason}"
            properties = {"leak.cannot_repeat": reason}
            if item.get_closest_marker("mem_leak_check") is not None:
                call.outcome = "failed"
                call.longrepr = (
                    f"mem_leak_check on {item.nodeid}: the test cannot repeat, so it was not "
                    f"checked for leaks: {reason} (mark it no_mem_leak_check if it cannot run "
                    "twice by design)"
                )
        else:
            second = self._second_look(item, result) if result.leaked else None
            if second is not None and second.passed:
                result = replace(result, leaked=False)
            properties = _leak_properties(result)
            if second is not None:
                properties["leak.second_look"] = second.note
            if result.leaked:
                call.outcome = "failed"
                call.longrepr = result.message(unit="run")
                if second is not None:
                    call.longrepr += f"\n{second.note}"
        teardown.user_properties.extend(to_properties({}, properties))

    def _second_look(self, item: pytest.Item, result: LeakResult) -> SecondLook | None:
        """A failure on glibc's figure alone, checked again in a child process started with
        glibc's per-thread malloc cache off (see ``THREAD_CACHE_OFF``), or None where that
        does not apply (another figure grew, no glibc, the cache off already, or this is such
        a child)."""
        from .leaks import SecondLook, native_allocated, native_only, without_thread_cache

        if self.is_child or not native_only(result.findings) or native_allocated() is None:
            return None
        tunables = without_thread_cache(os.environ.get("GLIBC_TUNABLES"))
        if tunables is None:
            return None
        if self.second_looks >= SECOND_LOOKS:
            return SecondLook(
                False,
                "Not checked again without glibc's per-thread malloc cache: this run did that "
                f"for {SECOND_LOOKS} failures already (each costs a pytest start-up).",
            )
        self.second_looks += 1
        from .isolate import run_spawned

        reports = run_spawned(item, env={"GLIBC_TUNABLES": tunables})
        call = next((r for r in reports if r.when == "call"), None)
        # A pass counts only where the child checked: its teardown report has the verdict.
        verdict = f"{PROPERTY_PREFIX}leak.leaked"
        checked = any(name == verdict for r in reports for name, _ in r.user_properties)
        if call is not None and checked and all(r.passed for r in reports):
            return SecondLook(
                True,
                "passed in a child process with glibc's per-thread malloc cache off "
                f"(GLIBC_TUNABLES={tunables}): the native growth was that cache filling",
            )
        if call is not None and call.failed and "leaks:" in call.longreprtext:
            return SecondLook(
                False,
                "Failed again in a child process with glibc's per-thread malloc cache off "
                f"(GLIBC_TUNABLES={tunables}): not that cache filling.",
            )
        return None

    # ------------------------------------------------------------------ records
    def absorb(self, report: pytest.TestReport) -> None:
        """A test's record, from its reports (its own process's, a worker's or a child's)."""
        if _subtest(report) and not report.failed:
            return  # a skipped subtest is the subtest's (pytest counts it apart), not the test's
        record = self.records.get(report.nodeid)
        if record is None:
            record = self.records[report.nodeid] = TestRecord(report.nodeid)
        teardown = report.when == "teardown"
        record.absorb(report.when, report.outcome, report.user_properties if teardown else ())
        if report.when == "call" and report.skipped and hasattr(report, "wasxfail"):
            record.xfailed = True
        if report.failed and record.explanation is None and self.settings.mem_html is not None:
            record.explanation = report.longreprtext  # the first failure says why

    # ------------------------------------------------------------------ the run's end
    def unfiltered(self) -> bool:
        """A run that saw every test: only then may stale baseline entries be removed."""
        option = self.config.option
        if self.deselected or option.keyword or option.markexpr:
            return False
        if getattr(option, "lf", False) or getattr(option, "deselect", None):
            return False
        if getattr(option, "stepwise", False):
            return False
        return not any("::" in str(arg) for arg in self.config.args)

    def reserve_baselines(self, items: Iterable[pytest.Item]) -> None:
        """On update, the baseline files of the tests about to run, made before the first
        (see ``BaselineCheck.reserve``); an isolated test's child leaves it to its parent."""
        if not self.is_child:
            self.baselines.reserve(
                item.nodeid
                for item in items
                if (plan := item.stash.get(PLAN_KEY, None)) is not None and plan.baseline
            )

    def settle(self, items: Iterable[pytest.Item]) -> None:
        """List new, regressed, improved and stale entries; on update, write the files."""
        records = self.records.values()
        self.baseline_outcome = self.baselines.settle(
            # A test skipped or failed at run time has no entry, nor will an update make one:
            # it is not "new" on every check.
            statuses=(
                (r.nodeid, status)
                for r in records
                if (status := r.properties.get(BASELINE_STATUS)) is not None
                and (status != "new" or r.recordable)
            ),
            passed=(
                (r.nodeid, r.metrics, bool(r.properties.get(BASELINE_FIRST_USE)))
                for r in records
                if r.measured and r.recordable
            ),
            collected=self.collected.union(item.nodeid for item in items) or self.records,
            full_run=self.unfiltered(),
        )

    def write_reports(self) -> None:
        """Write the JSON report and GitHub's step summary. A write that fails (a full disk, a
        directory removed during the run) is listed in ``unwritten``, not raised: the run's
        own summary and its final line must still reach the user."""
        records = self.records.values()
        if self.settings.mem_report is not None:
            text = report_json(self.scope, self.engine.describe(), records, self.baselines.entry)
            try:
                atomic_write(self.settings.mem_report, text)
            except OSError as exc:
                self.unwritten.append(f"--mem-report={self.settings.mem_report}: {_why(exc)}")
                self.report_missing = True
        if self.settings.mem_html is not None:
            from .html_report import render_html

            document = report_document(
                self.scope, self.engine.describe(), records, self.baselines.entry
            )
            explanations = {r.nodeid: r.explanation for r in records if r.explanation}
            try:
                atomic_write(self.settings.mem_html, render_html(document, explanations))
            except OSError as exc:
                self.unwritten.append(f"--mem-html={self.settings.mem_html}: {_why(exc)}")
                self.report_missing = True
        summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_path:
            from .github import append_step_summary

            try:
                append_step_summary(
                    summary_path, records, self.baseline_outcome, self.settings.mem_top
                )
            except OSError as exc:
                self.unwritten.append(f"GITHUB_STEP_SUMMARY={summary_path}: {_why(exc)}")

    def summary_lines(self) -> list[tuple[str, list[str]]]:
        """(title, lines) of the sections of the terminal summary."""
        sections = []
        lines = summary_table(
            ((r.nodeid, r.properties) for r in self.records.values()), self.settings.mem_top
        )
        if lines:
            sections.append((f"memguard: top {len(lines) - 1} tests by peak memory", lines))
        cut_short = [r for r in self.records.values() if r.get("leak.inconclusive")]
        if cut_short:
            # A summary, not a warning a test: hypothesis tests, whose own caches fill over
            # ~1,000 runs, all end here, and one line each is what the user needs.
            sections.append(
                (
                    "memguard: leak checks cut short by their time budget (not failed)",
                    [
                        "memory grew over the runs the budget allowed, too few to tell a leak "
                        "from a cache that fills and stops; to decide, give a test its own "
                        "number of runs: @pytest.mark.mem_leak_check(iterations=30)",
                        *(_cut_short_line(r) for r in cut_short),
                    ],
                )
            )
        too_slow = [r for r in self.records.values() if r.get("leak.too_slow")]
        if too_slow:
            shown = [
                f"  {r.nodeid}: {_seconds(r.get('leak.too_slow'))} a run"
                for r in too_slow[:TOO_SLOW_LISTED]
            ]
            if len(too_slow) > TOO_SLOW_LISTED:
                more = len(too_slow) - TOO_SLOW_LISTED
                shown.append(f"  and {more} more (leak.too_slow in the JSON report)")
            sections.append(
                (
                    "memguard: tests too slow to check for leaks in their time budget",
                    [
                        "one run took so long that the time budget holds neither the screen nor "
                        "the first stage of the full check, so no verdict was possible; to check "
                        "one, mark it @pytest.mark.mem_leak_check: a marked test gets its runs "
                        "in full (a run's time: its CPU time, or a quarter of its wall time "
                        "where the test waits longer)",
                        *shown,
                    ],
                )
            )
        looked = [
            r.nodeid
            for r in self.records.values()
            if r.get("leak.second_look") and r.get("leak.leaked") is False
        ]
        if looked:
            sections.append(
                (
                    "memguard: leak checks that passed their second look",
                    [
                        "only glibc's figure grew over these tests' runs, and their check passed "
                        "in a child process with glibc's per-thread malloc cache off: that cache "
                        "filling, not a leak (leak.second_look in the JSON report):",
                        *(f"  {nodeid}" for nodeid in looked),
                    ],
                )
            )
        known = Counter(
            str(first) for r in self.records.values() if (first := r.get("leak.known_from"))
        )
        if known:
            sections.append(
                (
                    "memguard: leaks that failed more tests than the one that explained them",
                    [
                        "each test below failed with a leak its check explained; the tests "
                        "after it that grew the same container failed at their screen, not "
                        "explained again (leak.known_from in the JSON report):",
                        *(
                            f"  {first}: {count} more test{'s' if count != 1 else ''}"
                            for first, count in known.most_common()
                        ),
                    ],
                )
            )
        unrepeatable = [r for r in self.records.values() if r.get("leak.cannot_repeat")]
        if unrepeatable:
            sections.append(
                (
                    "memguard: tests that cannot repeat, not checked for leaks",
                    [f"  {r.nodeid}: {r.get('leak.cannot_repeat')}" for r in unrepeatable],
                )
            )
        baseline_lines = render_baseline_summary(
            self.baseline_outcome, self.baselines.mode, self.random_hashes
        )
        if baseline_lines:
            sections.append(("memguard: baselines", baseline_lines))
        if self.unwritten:  # last: next to the run's final line
            sections.append(("memguard: reports not written", [*self.unwritten]))
        return sections


def _subtest(report: pytest.TestReport) -> bool:
    """A subtest's report (pytest 9's ``SubtestReport``, pytest-subtests' ``SubTestReport``):
    it carries the subtest's ``context`` (its message and parameters)."""
    return report.when == "call" and hasattr(getattr(report, "context", None), "kwargs")


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _cut_short_line(record: TestRecord) -> str:
    from .messages import per_call

    growth = [
        f"{metric} {per_call(metric, value, 'run')}"
        for metric in ("blocks", "bytes", "native", "fds")
        if (value := record.get(f"leak.{metric}_per_call"))
    ]
    return f"  {record.nodeid}: {', '.join(growth) or 'moved'} over {record.get('leak.calls')} runs"


def _expected_failure(item: pytest.Item, exc: BaseException) -> bool:
    """The test body raised what an xfail expects: ``pytest.xfail()``, or any error under an
    ``xfail`` mark that runs the test (pytest's own evaluation, read from the item's stash;
    ``raises=`` narrows it as pytest does)."""
    from _pytest.outcomes import Exit, Skipped, XFailed
    from _pytest.skipping import xfailed_key

    if isinstance(exc, XFailed):
        return True
    xfailed = item.stash.get(xfailed_key, None)
    # pytest.fail() and pytest.raises' "DID NOT RAISE" are BaseExceptions that an xfail takes
    # (dateutil's test_non_date_number); a skip, an exit or Ctrl-C are not failures.
    if xfailed is None or not xfailed.run or isinstance(exc, (Skipped, Exit, KeyboardInterrupt)):
        return False
    raises: Any = xfailed.raises
    if raises is None:
        return True
    if isinstance(raises, (type, tuple)):
        return isinstance(exc, raises)
    matches = getattr(raises, "matches", None)  # pytest 9's RaisesExc
    return bool(matches(exc)) if callable(matches) else True


def _filled_a_cache(measurement: Measurement) -> bool:
    """The call kept WARM_RETAINED or more, and nearly all of its peak (see there)."""
    retained = measurement.retained or 0
    return retained >= WARM_RETAINED and retained >= WARM_RETAINED_SHARE * (
        measurement.heap_peak or 0
    )


def _drop_warning(*args: object, **kwargs: object) -> None:
    pass


def _leak_properties(result: LeakResult) -> dict[str, Any]:
    props: dict[str, Any] = {"leak.calls": result.calls, "leak.leaked": result.leaked}
    if result.inconclusive:
        props["leak.inconclusive"] = True
    if result.too_slow is not None:
        props["leak.too_slow"] = round(result.too_slow, 3)
    if result.known is not None:
        props["leak.known_from"] = result.known.first
    if result.threads > 1:
        props["leak.threads"] = result.threads - 1  # others than the test's: readings count them
    props.update({f"leak.{k}_per_call": round(v, 3) for k, v in result.growth.items()})
    if result.leaked or result.inconclusive:  # the judged runs, for the HTML report's charts
        for metric in ("blocks", "bytes"):
            if metric in result.series:
                props[f"leak.{metric}_series"] = list(result.series[metric])
    return props


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
