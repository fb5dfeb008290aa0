"""pytest glue: options, markers, the ``memguard`` fixture, per-test windows, the session gate.

This module translates pytest events into calls on the pure core and nothing more: what is
measured lives in ``measurement``, what fails in ``budget``, how it reads in ``report``.
"""

from __future__ import annotations

import os
import warnings
from argparse import SUPPRESS
from collections.abc import Generator, Iterable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager, contextmanager
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import pytest

from . import __version__
from . import baseline as baselines
from .measurement import (
    METRICS,
    Engine,
    Measurement,
    Meter,
    get_engine,
    interpreter_scope,
    measure,
    window_flags,
)
from .options import OPTIONS, OptionError, Settings, cli_type, resolve
from .report import (
    PROPERTY_PREFIX,
    TestRecord,
    atomic_write,
    metric_properties,
    render_baseline_summary,
    report_json,
    summary_table,
    to_properties,
)
from .units import parse_size
from .valueclass import valueclass

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


@valueclass(frozen=True)
class TestPlan:
    """What to measure for one test, decided once at collection."""

    budget: Budget | None = None
    leak: LeakSettings | None = None
    error: str | None = None
    heap: bool = True
    retained: bool = False
    private: bool = False
    baseline: bool = False
    isolate: bool = False
    # The extension's window flags where a window needs no Meter (nothing to explain: no
    # budget; no private memory; the extension measures whole windows here); else 0.
    window: int = 0


if TYPE_CHECKING:
    from _pytest.nodes import Node  # annotations only

    # Imported where used: a run without leak checks or soaks never loads them.
    from .budget import Budget, Verdict
    from .leaks import LeakResult, LeakSettings
    from .process import MemoryUsage
    from .soak import Soak, SoakResult

_BASELINE_PREFIX = f"{PROPERTY_PREFIX}baseline."
_BASELINE_STATUS = f"{_BASELINE_PREFIX}status"
_BASELINE_CHANGES = f"{_BASELINE_PREFIX}changes"
_STATUS_NEW = (_BASELINE_STATUS, "new")
_STATUS_OK = (_BASELINE_STATUS, "ok")

# Internal option of a spawned --mem-isolate child: where to write its reports.
CHILD_OPTION = "--memguard-child-reports"
OUR_MARKERS = frozenset({"mem_budget", "mem_leak_check", "no_mem_leak_check", "mem_isolate"})
_NODEID = attrgetter("nodeid")
METER_KEY = pytest.StashKey["Meter | int"]()
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
    # Internal: set by --mem-isolate where it spawns a child run (no fork), never by users.
    group.addoption(CHILD_OPTION, default=None, dest="memguard_child_reports", help=SUPPRESS)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    # Baseline directories hold data, not tests: pytest would walk them like any directory,
    # with a round of collection hooks for every file (~0.3 M instructions a baseline file).
    config.addinivalue_line("norecursedirs", baselines.DIRNAME)
    cli = {o.ini: config.getoption(o.ini, None) for o in OPTIONS}
    ini = {o.ini: config.getini(o.ini) for o in OPTIONS}
    try:
        settings = resolve(cli, ini)
    except OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    plugin = MemguardPlugin(config, settings, get_engine())
    config.stash[PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "memguard-session")
    child_reports = config.getoption("memguard_child_reports", None)
    if child_reports:
        from .isolate import ChildReports

        plugin.is_worker = plugin.is_child = True  # the parent reports, records and writes
        config.pluginmanager.register(ChildReports(config, child_reports), "memguard-child")


def _where(item: pytest.Item) -> str:
    return item.nodeid


def _our_markers(node: Node, above: dict[int, frozenset[str]]) -> frozenset[str]:
    """Our markers on ``node`` and its parents, the chain ``iter_markers`` walks, each parent
    looked at once per collection rather than once per test under it (the walk per test was
    half the cost of planning a run). ``above`` is keyed by id: nodes hash by node id in
    Python, and they all outlive the collection. (Items get an entry too, never reused.)"""
    found = above.get(id(node))
    if found is None:
        parent = node.parent
        found = _our_markers(parent, above) if parent is not None else frozenset()
        own = node.own_markers
        if own:  # most nodes have none
            found = found.union(m.name for m in own if m.name in OUR_MARKERS)
        above[id(node)] = found
    return found


class _Registered:
    """What is registered with pytest's plugin manager lists only its hooks in ``dir()``.
    pytest scans every name a plugin's ``dir()`` lists for fixtures (pytest 9: a raw lookup
    through the class's MRO, two caught AttributeErrors and an ``inspect.unwrap`` a name),
    and pluggy scans the same names for hooks. The session object listed 93 names, this
    module 85 and the call hook 30: ~40k instructions a name on 3.11, 7.3 M (8.5 M checking
    baselines) of the 500-test benchmark spent finding nothing."""

    def __dir__(self) -> list[str]:  # asked twice when registered (not worked out at import)
        return [name for name in dir(type(self)) if name.startswith("pytest_")]


class MemguardPlugin(_Registered):
    def __init__(self, config: pytest.Config, settings: Settings, engine: Engine) -> None:
        self.config = config
        self.settings = settings
        self.engine = engine
        self._records: dict[str, TestRecord] = {}  # made from reports (see absorb)
        # Node id -> properties of a test whose window made its record (``direct_records``),
        # until a whole record is asked for (see ``records``).
        self._direct: dict[str, dict[str, Any]] = {}
        self.is_worker = hasattr(config, "workerinput")
        self.is_child = False  # a spawned --mem-isolate child: never isolates again
        self.rootdir = str(config.rootpath)
        self.scope = interpreter_scope()
        self.collected: set[str] = set()  # node ids from xdist workers, and deselected ones
        self.deselected = False
        self.repeating = False  # inside a leak check's repeated calls: no per-call windows
        self.scope_test = settings.mem_scope == "test"
        self._warmed = False
        self.plans: dict[int, TestPlan] = {}  # by id(item): items live as long
        self._default_budget = settings.mem_default_budget
        cheap = engine.heap.cheap
        self._default_plan = TestPlan(
            budget=None,
            heap=cheap,
            retained=False,
            private=False,
            window=self._window(None, cheap, False, False),
        )
        self._baselines: dict[str, dict[str, dict[str, baselines.Entry]] | str] = {}
        self.baseline_outcome: dict[str, list[str]] = {}
        self._tracked: dict[str, tuple[bool, str | None]] = {}  # see _baseline_use
        self._entries: dict[str, dict[str, baselines.Entry]] = {}  # see _module_entries
        self._expected: dict[str, dict[str, tuple[int | None, ...]]] = {}  # _module_expected
        # What a check compares for each test: the gated metrics, and where their values are
        # in a window's figures (``Meter.read()``, in the order of METRICS).
        self._gated = settings.mem_baseline_metrics
        gated_at = [METRICS.index(m) for m in self._gated]
        # itemgetter of two or more indices returns a tuple, in one C call; of one, the item.
        self._gated_of: Callable[[tuple[int | None, ...]], tuple[int | None, ...]] = (
            itemgetter(*gated_at) if len(gated_at) > 1 else lambda v: tuple(v[i] for i in gated_at)
        )
        gated = self._gated  # and of a stored entry (a KeyError where one is missing)
        self._gated_in: Callable[[baselines.Entry], tuple[int | None, ...]] = (
            itemgetter(*gated) if len(gated) > 1 else lambda e: tuple(e[m] for m in gated)
        )
        self._judging = self.baseline_mode != "update"  # an update records instead of failing
        self._shared_plans: dict[tuple[int, int, bool, bool], TestPlan] = {}
        self._plan_errors = False
        self._leak_defaults: LeakSettings | None = None
        self._budget_props: dict[int, tuple[Budget, list[tuple[str, Any]]]] = {}
        self._paths: dict[str, str] = {}  # test module (as in node ids) -> baseline file
        # Records are made from the window's figures where that is all a run needs (see
        # _register_per_test_hooks); the xdist controller runs no test and gets reports only.
        self.direct_records = False
        if config.pluginmanager.hasplugin("xdist") and config.getoption("dist", "no") != "no":
            # The controller of an xdist run (xdist set ``dist`` from ``-n`` in its
            # pytest_cmdline_main, before configure); workers and plain runs need no hook.
            from .xdist import XdistHooks

            config.pluginmanager.register(XdistHooks(self), "memguard-xdist")
            config.pluginmanager.register(_ReportHooks(self), "memguard-reports")

    # ------------------------------------------------------------------ reporting header
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return [f"memguard {__version__}: {self.engine.describe()}"]

    # ------------------------------------------------------------------ collection
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Last, so that the plans see the markers conftests and plugins add to items here
        (a common way to give a whole directory a budget) and only the items that will run.
        Under ``--setup-only`` (and ``--setup-plan``) no test runs, so none is measured."""
        if self.config.getoption("setuponly", False):
            return
        plans = self.plans
        plan_of = self._plan
        above: dict[int, frozenset[str]] = {}  # id(node) -> our markers on it and its parents
        # id(parent) -> the plan of its tests that carry no markers: where no parent has one
        # of ours either, nothing in such a test's plan is its own (the module decides the
        # baseline file), so it is worked out once per class or module (most tests).
        unmarked: dict[int, TestPlan] = {}
        for item in items:
            parent = item.parent
            if item.own_markers or parent is None:
                plan = plan_of(item, _our_markers(item, above))
            else:
                shared = unmarked.get(id(parent))
                if shared is None:
                    names = _our_markers(parent, above)
                    shared = plan_of(item, names)
                    if not names:
                        unmarked[id(parent)] = shared
                plan = shared
            plans[id(item)] = plan
        self._register_per_test_hooks(items)

    def _register_per_test_hooks(self, items: list[pytest.Item]) -> None:
        """Hooks that run for every test cost even when they return at once (a few µs each
        through pluggy, on tests that take pytest well under a millisecond): only those this
        run needs are registered, once the plans say which."""
        manager = self.config.pluginmanager
        plans = {id(plan): plan for plan in self.plans.values()}.values()  # the distinct ones
        scope_test = self.scope_test
        errors = self._plan_errors = any(plan.error is not None for plan in plans)
        leaks = any(plan.leak is not None for plan in plans)
        call_scope_items = not scope_test and not all(
            issubclass(kind, pytest.Function) for kind in set(map(type, items))
        )
        hooks: list[tuple[str, object]] = []
        # Records from reports, or straight from each window: the summary table and a baseline
        # check need a test's figures and the verdict of its comparison, both made with the
        # window; outcomes (what an update records: passed tests only; the JSON report),
        # properties added after the window (leak checks, soaks) and results made in another
        # process (isolation) come with the reports only. Three reports a test through pluggy
        # cost more than the rest of the bookkeeping.
        updating = self.baseline_mode == "update"
        reports = (
            self.settings.mem_report is not None
            or leaks
            or any((plan.baseline and updating) or plan.isolate for plan in plans)
        )
        self.direct_records = not reports and not self.is_worker
        if reports and not self.is_worker:
            hooks.append(("memguard-reports", _ReportHooks(self)))
        if errors or scope_test:
            hooks.append(("memguard-setup", _SetupHooks(self)))
        if scope_test:
            hooks.append(("memguard-teardown", _TeardownHooks(self)))
        if leaks or call_scope_items:
            hooks.append(("memguard-call", _CallHooks(self)))
        if any(plan.isolate for plan in plans):
            hooks.append(("memguard-isolate", _IsolateHooks(self)))
        for name, hook in hooks:
            if manager.get_plugin(name) is None:
                manager.register(hook, name)
        if manager.get_plugin("memguard-pyfunc") is None:
            direct = _DirectCall(self)
            manager.register(direct, "memguard-pyfunc")
            direct.follow(manager)

    # ------------------------------------------------------------------ baselines
    @property
    def baseline_mode(self) -> str:
        """'check', 'update', 'off' or 'auto' (check where baseline files exist)."""
        return self.settings.mem_baseline or "auto"

    def _location(self, nodeid: str) -> tuple[str, str]:
        """(baseline file, key): the file is computed once per test module."""
        module, sep, rest = nodeid.partition("::")
        path = self._paths.get(module)
        if path is None:
            path = self._paths[module] = baselines.location(module, self.rootdir)[0]
        return path, (rest if sep else module)

    def _load_baseline(self, path: str) -> dict[str, dict[str, baselines.Entry]] | str:
        cached = self._baselines.get(path)
        if cached is None:
            try:
                cached = baselines.load(path)
            except baselines.BaselineError as exc:
                cached = str(exc)
            self._baselines[path] = cached
        return cached

    def _module_entries(self, module: str) -> dict[str, baselines.Entry]:
        """This interpreter's entries in a test module's file (none where it cannot be read).
        Files are read once per session, before an update writes them, so the JSON report
        finds the entries the check used."""
        entries = self._entries.get(module)
        if entries is None:
            scopes = self._load_baseline(self._location(module)[0])
            entries = {} if isinstance(scopes, str) else scopes.get(self.scope, {})
            self._entries[module] = entries
        return entries

    def _stored_entry(self, nodeid: str) -> baselines.Entry | None:
        """The entry a test is checked against."""
        module, sep, key = nodeid.partition("::")
        return self._module_entries(module).get(key if sep else module)

    def _module_expected(self, module: str) -> dict[str, tuple[int | None, ...]]:
        """The gated figures of each entry of a module, as tuples in the order of
        ``_gated``: what a check compares first (made once per module)."""
        entries = self._module_entries(module)
        try:  # entries written by an update carry every gated metric: picked in C
            expected = dict(zip(entries, map(self._gated_in, entries.values())))
        except KeyError:  # a metric this platform could not measure when it was recorded
            gated = self._gated
            expected = {key: tuple(map(entry.get, gated)) for key, entry in entries.items()}
        self._expected[module] = expected
        return expected

    def _baseline_use(self, nodeid: str) -> tuple[bool, str | None]:
        """(whether the test's baseline is checked or recorded, why its file cannot be used),
        worked out once per test module: always with check or update, never with off, and by
        default where the module's baseline file exists."""
        module = nodeid.partition("::")[0]
        use = self._tracked.get(module)
        if use is None:
            mode = self.baseline_mode
            path = self._location(nodeid)[0]
            tracked = mode != "off" and (mode != "auto" or os.path.exists(path))
            problem = self._load_baseline(path) if tracked else None
            use = self._tracked[module] = (tracked, problem if isinstance(problem, str) else None)
        return use

    def _plan(self, item: pytest.Item, names: AbstractSet[str]) -> TestPlan:
        """``names``: our markers on the item and its parents."""
        try:
            budget = self._budget(item) if "mem_budget" in names else self._default_budget
            leak = self._leak(item, names)
        except ValueError as exc:  # BudgetError, or leaks.LeakSettingsError (not imported yet)
            return TestPlan(error=str(exc))
        tracked, problem = self._baseline_use(item.nodeid)
        if problem is not None:
            return TestPlan(error=problem)
        isolate = not self.is_child and (self.settings.mem_isolate or "mem_isolate" in names)
        if budget is None and leak is None and not tracked and not isolate:
            return self._default_plan  # most tests: one shared plan
        # Plans are immutable: tests with the same budget and leak settings (the defaults, or
        # none) share one. The key's ids stay valid, the plan keeping both objects alive.
        key = (id(budget), id(leak), tracked, isolate)
        plan = self._shared_plans.get(key)
        if plan is None:
            plan = self._shared_plans[key] = self._new_plan(budget, leak, tracked, isolate)
        return plan

    def _new_plan(
        self, budget: Budget | None, leak: LeakSettings | None, tracked: bool, isolate: bool
    ) -> TestPlan:
        retained = (budget is not None and budget.retained is not None) or tracked
        private = budget is not None and budget.private is not None
        needs_heap = budget is not None and (
            budget.retained is not None or budget.allocations is not None
        )
        heap = self.engine.heap.cheap or needs_heap or retained
        return TestPlan(
            budget=budget,
            leak=leak,
            heap=heap,
            retained=retained,
            private=private,
            baseline=tracked,
            isolate=isolate,
            window=self._window(budget, heap, retained, private),
        )

    def _window(self, budget: Budget | None, heap: bool, retained: bool, private: bool) -> int:
        """``TestPlan.window``: a budget may need its failure explained (a Meter's sites and
        types), private memory a trim before the window, and the extension may not measure
        whole windows here."""
        if budget is not None or private or self.engine.native is None:
            return 0
        return window_flags(heap, retained, private=False)

    @property
    def leak_defaults(self) -> LeakSettings:
        """The settings of ``--mem-leak-check`` and of markers' missing arguments (made once)."""
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
                tuple(mark.args), dict(mark.kwargs), _where(item), self.leak_defaults
            )
        if self.settings.mem_leak_check and "no_mem_leak_check" not in names:
            return self.leak_defaults
        return None

    def _budget(self, item: pytest.Item) -> Budget | None:
        from .budget import merge_markers, parse_budget  # where a test has a mem_budget

        budgets = [
            parse_budget(tuple(mark.args), mark.kwargs, _where(item))
            for mark in item.iter_markers("mem_budget")
        ]
        if budgets:
            return merge_markers(budgets)
        return self._default_budget

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        if items:
            self.deselected = True
            self.collected.update(item.nodeid for item in items)

    # ------------------------------------------------------------------ running
    def start(self, item: pytest.Item, plan: TestPlan) -> Meter | int:
        """A Meter, or the handle of the extension's window where the plan needs no Meter
        (``TestPlan.window``)."""
        if not self._warmed:
            # One empty window first: our own code paths allocate once when first run, and the
            # first test of a process must not carry that.
            self._warmed = True
            warm = Meter(self.engine, heap=plan.heap, retained=plan.retained)
            warm.start()
            warm.stop()
            warm.close()
            if plan.window:
                self.engine.close_window(self.engine.open_window(plan.window), False)
        if plan.window:
            return self.engine.open_window(plan.window)
        meter = Meter(self.engine, plan.heap, plan.retained, plan.private)
        meter.start()
        return meter

    def finish(self, item: pytest.Item, plan: TestPlan, meter: Meter | int, judge: bool) -> None:
        if isinstance(meter, int):
            values = self.engine.close_window(meter, plan.heap and plan.retained)
            changes = self._record(item, plan, values, None)
            if judge and changes:
                self._judge(item, None, changes, None)
            return
        try:
            values = meter.read()
            budget = plan.budget
            verdict = None
            if budget is not None:
                from .budget import check  # loaded with the budget, at collection

                verdict = check(budget, meter.stop(values))
            if verdict is None or not (judge and verdict.failed):
                # The hooks out before our bookkeeping allocates (every allocation tracked
                # costs): only the explanation of a failed budget still needs the tracking.
                meter.close()
            changes = self._record(item, plan, values, budget)
            if judge and (changes or verdict is not None):
                self._judge(item, meter, changes, verdict)
        finally:
            meter.close()

    def _record(
        self,
        item: pytest.Item,
        plan: TestPlan,
        values: tuple[int | None, ...],
        budget: Budget | None,
    ) -> list[baselines.Change] | None:
        """The window's figures as the test's properties (and record), compared with its
        baseline; returns the regressions that should fail it."""
        properties = metric_properties(values)
        if budget is not None:
            properties.extend(self._budget_properties(budget))
        nodeid = item.nodeid
        changes = (
            self._compare_baseline(nodeid, plan, values, properties) if plan.baseline else None
        )
        item.user_properties.extend(properties)
        if self.direct_records:
            self._direct[nodeid] = dict(properties)
        return changes

    def _judge(
        self,
        item: pytest.Item,
        meter: Meter | None,
        changes: list[baselines.Change] | None,
        verdict: Verdict | None,
    ) -> None:
        """Fail the test on a baseline regression or a budget it exceeded (explained: the top
        allocation sites and the types that grew); warn of limits that cannot be checked."""
        if changes:
            pytest.fail(baselines.render_regression(changes), pytrace=False)
        if verdict is None:
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
            assert meter is not None  # a plan with a budget has a Meter
            measurement = meter.result
            assert measurement is not None  # made by meter.stop() for the verdict
            alive = all(v.metric in ("retained", "private") for v in verdict.violations)
            sizes = [v.value for v in verdict.violations if v.metric != "allocations"]
            # An allocation-count failure is about where calls happen, not what is left.
            meter.explain(alive_only=alive, types=bool(sizes), by_count=not sizes)
            scale = min(sizes) if sizes else 0
            from .messages import render_failure

            message = render_failure(
                (v.message() for v in verdict.violations), measurement, alive, scale
            )
            pytest.fail(message, pytrace=False)

    def _budget_properties(self, budget: Budget) -> list[tuple[str, Any]]:
        """The ``memguard.budget.*`` properties, made once per budget (often one for all)."""
        found = self._budget_props.get(id(budget))
        if found is None or found[0] is not budget:
            limits = {f"budget.{k}": v for k, v in budget.limit_items()}
            found = self._budget_props[id(budget)] = (budget, to_properties({}, limits))
        return found[1]

    def _compare_baseline(
        self,
        nodeid: str,
        plan: TestPlan,
        values: tuple[int | None, ...],
        properties: list[tuple[str, Any]],
    ) -> list[baselines.Change] | None:
        """Compare the window's ``values`` (``Meter.read()``) with the stored entry (read-only:
        workers never write) and add the ``memguard.baseline.status`` property (and
        ``.changes`` where a figure moved beyond tolerance). Returns the regressions that should
        fail the test; an update run records instead of judging. The entry's figures are not
        copied onto every test: they are in the file, and the JSON report joins them from it.

        Made for every test of a checked module, so the common case, gated figures equal to
        the entry's (counts and heap bytes repeat exactly), is decided by comparing a tuple
        built in C with one made when the module's file was read."""
        module, sep, key = nodeid.partition("::")
        expected = self._expected.get(module)
        if expected is None:
            expected = self._module_expected(module)
        name = key if sep else module
        # Taken, not read: what is left when the session ends was not run (no stale entries
        # where nothing is left, see _settle_baselines).
        stored = expected.pop(name, None)
        if stored is None:
            entry = self._module_entries(module).get(name)
            if entry is None:
                properties.append(_STATUS_NEW)
                return None
            stored = tuple(map(entry.get, self._gated))  # run again (a rerun plugin)
        if self._gated_of(values) == stored:
            properties.append(_STATUS_OK)
            return None
        base = self._module_entries(module)[name]
        budget = plan.budget
        tolerance = (
            budget.tolerance
            if budget is not None and budget.tolerance is not None
            else self.settings.mem_tolerance
        )
        result = baselines.compare(base, dict(zip(METRICS, values)), self._gated, tolerance)
        moved = result.regressions or result.improvements  # regressions win the status
        if moved:
            status = "regressed" if result.regressions else "improved"
            properties.append((_BASELINE_STATUS, status))
            properties.append((_BASELINE_CHANGES, "; ".join(c.describe() for c in moved)))
        else:
            properties.append(_STATUS_OK)
        return result.regressions if self._judging else None

    def _why_unmeasured(self, metric: str) -> str:
        if metric == "allocations":
            return f"allocation counts need the allocator hook; {self.engine.describe()}"
        return f"this platform cannot measure {metric}"

    def measured(self, item: pytest.Item, plan: TestPlan) -> Generator[None, Any, Any]:
        meter = self.start(item, plan)
        try:
            result = yield
        except BaseException:
            self.finish(item, plan, meter, judge=False)
            raise
        self.finish(item, plan, meter, judge=True)
        return result

    def check_leaks(self, item: pytest.Item, settings: LeakSettings) -> None:
        """Call the test function again and again with the same fixture values (the official
        run above passed) and fail when memory grows from call to call."""
        from .leaks import LeakRunner

        self.repeating = True
        try:
            result = LeakRunner(self.engine, settings).run(item.runtest)
        finally:
            self.repeating = False
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

    def absorb(self, report: pytest.TestReport) -> None:
        when = report.when
        if when != "teardown" and report.outcome == "passed":
            return  # a passed setup or call says nothing the teardown report will not
        nodeid = report.nodeid
        records = self._records
        record = records.get(nodeid)
        if record is None:
            record = records[nodeid] = TestRecord(nodeid)
        record.absorb(when, report.outcome, report.user_properties if when == "teardown" else ())

    @property
    def records(self) -> dict[str, TestRecord]:
        """Every test's record, by node id. A record made straight from a window is kept as
        its properties until something needs the whole record (the JSON report, GitHub's
        output): the summary table and the baseline outcome read only the properties
        (``measured_properties``), and a Python object per test cost ~5k instructions."""
        direct = self._direct
        if direct:
            records = self._records
            for nodeid, properties in direct.items():
                records[nodeid] = TestRecord(nodeid, properties)
            direct.clear()
        return self._records

    def measured_properties(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(node id, properties) of every test, without making records."""
        for record in self._records.values():
            yield record.nodeid, record.properties
        yield from self._direct.items()

    # ------------------------------------------------------------------ session end
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        lines = summary_table(self.measured_properties(), self.settings.mem_top)
        if lines:
            terminalreporter.write_sep("-", f"memguard: top {len(lines) - 1} tests by peak memory")
            for line in lines:
                terminalreporter.write_line(line)
        baseline_lines = render_baseline_summary(self.baseline_outcome, self.baseline_mode)
        if baseline_lines:
            terminalreporter.write_sep("-", "memguard: baselines")
            for line in baseline_lines:
                terminalreporter.write_line(line)
        if os.environ.get("GITHUB_ACTIONS") == "true":
            from .github import github_annotations

            for line in github_annotations(self.records.values()):
                terminalreporter.write_line(line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            return
        # The collected tests, read here rather than kept by a pytest_collection_finish hook
        # (one hook fewer to register): their node ids are wanted only if baselines are settled.
        self._settle_baselines(getattr(session, "items", ()))
        if self.settings.mem_report is not None:
            text = report_json(
                self.scope, self.engine.describe(), self.records.values(), self._stored_entry
            )
            atomic_write(self.settings.mem_report, text)
        summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_path:
            from .github import append_step_summary

            append_step_summary(
                summary_path, self.records.values(), self.baseline_outcome, self.settings.mem_top
            )

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

    def _every_entry_checked(self) -> bool:
        """True when this process planned the run's tests (not an xdist controller, no plan
        errors) and every stored entry of every tracked module was taken by a check: then no
        entry is stale and its file needs no second look."""
        if self.collected or not self.plans or self._plan_errors:
            return False
        expected = self._expected
        return all(
            not expected.get(module, True) for module, (on, _) in self._tracked.items() if on
        )

    def _settle_baselines(self, items: Iterable[pytest.Item]) -> None:
        """Controller side: list new, regressed, improved and stale entries; on update, write
        each file once, under its lock."""
        mode = self.baseline_mode
        outcome: dict[str, list[str]] = {
            "regressed": [],
            "improved": [],
            "new": [],
            "stale": [],
            "updated": [],
            "errors": [],
        }
        self.baseline_outcome = outcome
        tracked = self._tracked.values()
        if mode == "off" or (mode == "auto" and tracked and not any(t for t, _ in tracked)):
            return  # by default, when no test module here has a baseline file: nothing to do
        for nodeid, properties in self.measured_properties():
            status = properties.get(_BASELINE_STATUS)
            if status in ("regressed", "improved", "new"):
                outcome[status].append(nodeid)
        if mode != "update" and self._every_entry_checked():
            return  # a check with nothing stale: no need to group the collected node ids
        by_file: dict[str, dict[str, baselines.Entry]] = {}
        collected = self.collected.union(map(_NODEID, items))
        if not collected:
            collected = {nodeid for nodeid, _ in self.measured_properties()}
        keys_by_module: dict[str, set[str]] = {}  # grouped first: one file name per module
        for nodeid in collected:
            module, sep, key = nodeid.partition("::")
            keys_by_module.setdefault(module, set()).add(key if sep else module)
        collected_by_file: dict[str, set[str]] = {}
        for module, keys in keys_by_module.items():
            collected_by_file.setdefault(self._location(module)[0], set()).update(keys)
        if mode == "update":  # records made from reports: an update needs the outcomes
            for record in self.records.values():
                if record.measured and record.fully_passed:
                    path, key = self._location(record.nodeid)
                    by_file.setdefault(path, {})[key] = baselines.entry_from(record.metrics)
        # Only a run that saw every test can tell a removed test from one not run this time.
        full_run = self.unfiltered()
        remove_stale = mode == "update" and full_run
        for path in sorted(set(by_file) | set(collected_by_file)):
            scopes = self._load_baseline(path)  # read once per session (update re-reads under lock)
            if isinstance(scopes, str):
                outcome["errors"].append(scopes)
                continue
            stored = scopes.get(self.scope, {})
            stale = sorted(set(stored) - collected_by_file.get(path, set())) if full_run else []
            outcome["stale"].extend(f"{os.path.relpath(path, self.rootdir)}: {k}" for k in stale)
            if mode != "update":
                continue
            entries = by_file.get(path, {})
            if not entries and not (remove_stale and stale):
                continue
            changed = baselines.update_file(
                path,
                self.scope,
                entries,
                stale if remove_stale else (),
                self.settings.mem_tolerance,
            )
            if changed:
                outcome["updated"].append(os.path.relpath(path, self.rootdir))


class _PerTestHooks(_Registered):
    """Hooks that run for every test, registered after collection only when a run needs them
    (see ``MemguardPlugin._register_per_test_hooks``)."""

    def __init__(self, plugin: MemguardPlugin) -> None:
        self.plugin = plugin


class _ReportHooks(_PerTestHooks):
    """Registered where records must be made from reports (not on workers, whose controller
    makes them)."""

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.plugin.absorb(report)


class _SetupHooks(_PerTestHooks):
    """Registered when a plan carries an error or windows cover the whole test."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Before any fixture is set up (and inside every wrapper, whose per-test state a
        failure here must not skip)."""
        plan = self.plugin.plans.get(id(item))
        if plan is not None and plan.error is not None:
            pytest.fail(plan.error, pytrace=False)
        if plan is not None and self.plugin.scope_test:
            item.stash[METER_KEY] = self.plugin.start(item, plan)


class _TeardownHooks(_PerTestHooks):
    """Registered with ``mem_scope = test``: the window closes after teardown."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        try:
            return (yield)
        finally:
            plan = self.plugin.plans.get(id(item))
            meter = item.stash.get(METER_KEY, None)
            if plan is not None and meter is not None:
                del item.stash[METER_KEY]
                self.plugin.finish(item, plan, meter, judge=True)


class _DirectCall(_PerTestHooks):
    """The window around the test's call: this implementation of ``pytest_pyfunc_call`` runs
    first, opens the window, and calls the hook's other implementations itself, in the order
    pluggy would and until one returns a result (pytest's own, and an async plugin's where one
    is installed), so pluggy's dispatch stays outside the window. Wrapping the call instead
    (``_WrappedCall``) cost pluggy's wrapper machinery, ~9k instructions a test, and put its
    dispatch, 8 allocations, inside every window. The wrapper is kept for a run where another
    implementation would be called before this one."""

    def __init__(self, plugin: MemguardPlugin) -> None:
        super().__init__(plugin)
        self.call: Callable[[pytest.Function], object] | None = None  # None: defer (wrapper)

    def follow(self, manager: pytest.PytestPluginManager) -> None:
        """Take the hook's other implementations as they are now; fall back to the wrapper
        if this one is no longer called first."""
        impls = [
            impl
            for impl in manager.hook.pytest_pyfunc_call.get_hookimpls()
            if not (impl.wrapper or impl.hookwrapper)
        ]
        if len(impls) < 2 or impls[-1].plugin is not self:  # pluggy calls the last one first
            self.call = None
            if manager.get_plugin("memguard-pyfunc-wrapper") is None:
                manager.register(_WrappedCall(self.plugin), "memguard-pyfunc-wrapper")
            return
        others = [(impl.function, bool(impl.argnames)) for impl in reversed(impls[:-1])]
        if len(others) == 1 and others[0][1]:
            self.call = others[0][0]  # pytest's alone (most runs): called as it is
            return

        def call(item: pytest.Function) -> object:
            for function, takes_item in others:
                result = function(item) if takes_item else function()
                if result is not None:
                    return result
            return None

        self.call = call

    def pytest_plugin_registered(self, plugin: object, manager: pytest.PytestPluginManager) -> None:
        """A plugin registered after collection may implement the hook too."""
        if self.call is not None and hasattr(plugin, "pytest_pyfunc_call"):
            self.follow(manager)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> object:
        plugin = self.plugin
        call = self.call
        plan = plugin.plans.get(id(pyfuncitem))
        if call is None or plan is None or plugin.scope_test or plugin.repeating:
            return None  # the other implementations run next, as if this one were not here
        meter = plugin.start(pyfuncitem, plan)
        try:
            result = call(pyfuncitem)
        except BaseException:
            plugin.finish(pyfuncitem, plan, meter, judge=False)
            raise
        plugin.finish(pyfuncitem, plan, meter, judge=True)
        return True if result is None else result


class _WrappedCall(_PerTestHooks):
    """Where another implementation of ``pytest_pyfunc_call`` would be called before
    ``_DirectCall``: the innermost wrapper, so the window holds the implementation that calls
    the test and nothing of pytest's or other plugins' per-test machinery, whose allocations
    vary with how many tests ran before (under xdist, with scheduling)."""

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, object, object]:
        plugin = self.plugin
        plan = plugin.plans.get(id(pyfuncitem))
        if plan is None or plugin.scope_test or plugin.repeating:
            return (yield)
        return (yield from plugin.measured(pyfuncitem, plan))


class _CallHooks(_PerTestHooks):
    """Registered when a test is leak-checked, or an item is not a test function (its call
    phase is measured here, there being no pytest_pyfunc_call)."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        plugin = self.plugin
        plan = plugin.plans.get(id(item))
        if plan is None or plugin.scope_test or isinstance(item, pytest.Function):
            result = yield
        else:
            result = yield from plugin.measured(item, plan)
        if plan is not None and plan.leak is not None:
            plugin.check_leaks(item, plan.leak)
        return result


class _IsolateHooks(_PerTestHooks):
    """Registered when a test is to run in a child process."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        """Run a test marked mem_isolate (or every test with --mem-isolate) in a child process
        that starts from the session's post-collection state (forked) or from nothing
        (spawned, where there is no fork), and report what it reported."""
        plan = self.plugin.plans.get(id(item))
        if plan is None or not plan.isolate:
            return None
        from .isolate import method, run_isolated, run_spawned

        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        reports = run_isolated(item) if method() == "fork" else run_spawned(item)
        for report in reports:
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True


def _leak_properties(result: LeakResult) -> dict[str, Any]:
    props: dict[str, Any] = {"leak.calls": result.calls, "leak.leaked": result.leaked}
    props.update({f"leak.{k}_per_call": round(v, 3) for k, v in result.growth.items()})
    return props


class MemguardFixture:
    """The ``memguard`` fixture: measure memory from inside a test."""

    def __init__(
        self,
        engine: Engine,
        leak_defaults: LeakSettings | None = None,
        node: pytest.Item | None = None,
    ) -> None:
        self._engine = engine
        self._leak_defaults = leak_defaults
        self._node = node

    def soak(
        self,
        iterations: int,
        *,
        samples: int | None = None,
        max_growth: int | str | None = None,
    ) -> Soak:
        """``for i in memguard.soak(100_000): ...`` fails the test if memory kept growing
        through the run instead of levelling off; ``max_growth`` is slack (a size)."""
        from .soak import Soak

        slack = 0 if max_growth is None else parse_size(max_growth, "soak max_growth")
        return Soak(self._engine, iterations, samples, slack, self._record_soak)

    def _record_soak(self, result: SoakResult) -> None:
        if self._node is None or result.verdict is None:
            return
        self._node.user_properties.extend(
            to_properties(
                {},
                {
                    "soak.iterations": result.iterations,
                    "soak.growing": result.verdict.growing,
                    "soak.growth_per_1000": int(round(result.verdict.per_iteration * 1000)),
                    "soak.positions": list(result.positions),
                    "soak.heap": list(result.heap),
                },
            )
        )

    @staticmethod
    def counter(
        bits: int, *, start: str | int = "near_wrap", margin: int | None = None
    ) -> Iterator[int]:
        """Integers modulo ``2**bits``, by default starting just before the wrap."""
        from .soak import counter

        return counter(bits, start, margin)

    @staticmethod
    def fast_clock(step: float = 60.0) -> AbstractContextManager[None]:
        """``time.time``/``monotonic``/``perf_counter`` (and ``_ns``) advance ``step`` s a read."""
        from .soak import fast_clock

        return fast_clock(step)

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
        from .leaks import LeakRunner, LeakSettings, LeakSettingsError, parse_leak_marker

        where = getattr(fn, "__qualname__", repr(fn))
        try:
            settings = parse_leak_marker(
                (),
                {"iterations": iterations, "warmup": warmup},
                where,
                self._leak_defaults or LeakSettings(),
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
        from .process import usage

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
    return MemguardFixture(plugin.engine, plugin.leak_defaults, request.node)


# What pytest looks for in this module, the entry point's plugin: its hooks and the fixture.
# The rest of its names (imports, classes) would each cost a fixture scan (see _Registered).
_PYTEST_NAMES = sorted([*(name for name in globals() if name.startswith("pytest_")), "memguard"])


def __dir__() -> list[str]:
    return _PYTEST_NAMES
