"""pytest glue: options, markers, hooks and the ``memguard`` fixture.

Each hook translates a pytest event into a call on the run's ``MemguardSession`` (kept in
``config.stash``), which owns the plans, windows, records and baselines. The hooks are fixed:
one object, ``MemguardHooks``, registered at configure; only optional features add their own
(isolation in a child process, xdist's controller, a spawned child's report writer).
"""

from __future__ import annotations

import dataclasses
import os
from argparse import SUPPRESS
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from . import __version__
from .baseline import DIRNAME
from .measurement import Engine, Measurement, get_engine, measure, survivors
from .options import CHILD_OPTION, OPTIONS, OptionError, cli_type, resolve
from .report import report_path_problem, to_properties
from .session import (
    METER_KEY,
    PLAN_KEY,
    SURVIVORS_KEY,
    MemguardSession,
    MemguardWarning,
    TestPlan,
)
from .units import parse_size

if TYPE_CHECKING:
    from .isolate import ForkServer
    from .leaks import LeakSettings
    from .other_process import WatchedProcess
    from .process import MemoryUsage
    from .retainers import Kind, Survivors
    from .soak import Soak, SoakResult

T = TypeVar("T")

MARKERS = (
    "mem_budget(limit=None, *, peak=None, retained=None, private=None, allocations=None, "
    "tolerance=None): fail the test when its memory exceeds a limit (limit is peak). Sizes "
    "like '50MB'; allocations is a count of allocator calls.",
    "mem_leak_check(iterations=None, warmup=None, *, tolerance=None): after its own run, run "
    "the whole test (setup, call, teardown) warmup times unjudged, then iterations times "
    "measured, and fail when memory grows from run to run.",
    "no_mem_leak_check: exempt a test whose body cannot run twice from --mem-leak-check.",
    "mem_isolate: run this test in a fresh child process for clean numbers.",
)

SESSION_KEY = pytest.StashKey[MemguardSession]()
__all__ = ["MemguardFixture", "MemguardWarning", "memguard"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memguard", "memory budgets, leak checks and baselines")
    for option in OPTIONS:
        help_text = option.help.replace("%", "%%")  # argparse %-formats help
        if option.flag is None:
            pass  # ini only
        elif option.is_flag:
            group.addoption(
                option.flag, action="store_true", default=None, dest=option.ini, help=help_text
            )
        else:
            group.addoption(
                option.flag,
                default=None,
                dest=option.ini,
                type=cli_type(option),
                metavar=option.metavar,
                help=help_text,
            )
        parser.addini(option.ini, help=option.help, default=None)
    # Internal: set by --mem-isolate where it spawns a child run (no fork), never by users.
    group.addoption(CHILD_OPTION, default=None, dest="memguard_child_reports", help=SUPPRESS)


def forget_readline_terminal_size() -> None:
    """GNU readline sets COLUMNS and LINES in the C library's environment when it is
    imported, which pytest does before any conftest (its capture's readline workaround).
    ``os.environ``, read when Python started, does not have them, but every process started
    after inherits them: the tests of an xdist worker or a spawned child read a terminal size
    from the environment that the same tests run serially do not. natsort's argparse test made
    183 more calls serially (``shutil.get_terminal_size`` raised and caught an OSError for each
    of its arguments), so a baseline recorded under ``-n 2`` failed a serial check. Where
    ``os.environ`` does not have them, they are taken out of the C environment too, as it was
    before readline was imported; a size the user set is kept."""
    for name in ("COLUMNS", "LINES"):
        if name not in os.environ:
            os.unsetenv(name)


def pytest_configure(config: pytest.Config) -> None:
    forget_readline_terminal_size()
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    # Baseline directories hold data, not tests.
    config.addinivalue_line("norecursedirs", DIRNAME)
    cli = {o.ini: config.getoption(o.ini, None) for o in OPTIONS}
    ini = {o.ini: config.getini(o.ini) for o in OPTIONS}
    try:
        settings = resolve(cli, ini)
    except OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("memray", False):  # pytest-memray is tracing this run
        # Its tracing allocates inside every test, and our windows count that: figures of such
        # a run are not the tests' own, so they are never stored or gated.
        if settings.mem_baseline in ("check", "update"):
            raise pytest.UsageError(
                f"--mem-baseline={settings.mem_baseline} with --memray: pytest-memray's "
                "tracing allocates inside every test and would count as the tests' memory; "
                "run the baselines without --memray"
            )
        settings = dataclasses.replace(settings, mem_baseline="off")
    if not hasattr(config, "workerinput"):
        for option, path in (
            ("--mem-report", settings.mem_report),
            ("--mem-html", settings.mem_html),
        ):
            problem = None if path is None else report_path_problem(path)
            if problem is not None:
                raise pytest.UsageError(f"{option} {path!r}: {problem}")
    session = MemguardSession(config, settings, get_engine())
    config.stash[SESSION_KEY] = session
    manager = config.pluginmanager
    manager.register(MemguardHooks(session), "memguard-session")
    child_reports = config.getoption("memguard_child_reports", None)
    if child_reports:
        from .isolate import ChildReports

        session.is_worker = session.is_child = True  # the parent reports, records and writes
        manager.register(ChildReports(config, child_reports), "memguard-child")
    if manager.hasplugin("xdist") and config.getoption("dist", "no") != "no":
        # The controller of an xdist run (xdist set ``dist`` from ``-n`` before configure):
        # it needs the node ids its workers collected.
        from .xdist import XdistHooks

        manager.register(XdistHooks(session.collected), "memguard-xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    for name in ("memguard-session", "memguard-child", "memguard-xdist", "memguard-isolate"):
        plugin = config.pluginmanager.get_plugin(name)
        if plugin is not None:
            config.pluginmanager.unregister(plugin, name)
    if SESSION_KEY in config.stash:
        del config.stash[SESSION_KEY]


class MemguardHooks:
    """Every hook of a run, each a call on the session."""

    def __init__(self, session: MemguardSession) -> None:
        self.session = session

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        lines = [f"memguard {__version__}: {self.session.engine.describe()}"]
        if self.session.memray:
            lines.append(
                "memguard: pytest-memray is tracing this run (--memray): every figure includes "
                "its work, so baselines are neither checked nor updated"
            )
        return lines

    def pytest_collectstart(self, collector: pytest.Collector) -> None:
        self.session.seed_import(collector)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        """Last, so that the plans see the markers conftests and plugins add to items here
        (a common way to give a whole directory a budget) and only the items that will run.
        Under ``--setup-only`` (and ``--setup-plan``) no test runs, so none is measured."""
        if config.getoption("setuponly", False):
            return
        session = self.session
        isolate = repeatable = False
        for item in items:
            plan = item.stash[PLAN_KEY] = session.plan(item)
            isolate = isolate or plan.isolate
            repeatable = repeatable or plan.baseline or plan.leak is not None
        if repeatable:
            session.fix_random_inputs()
        manager = config.pluginmanager
        if isolate and manager.get_plugin("memguard-isolate") is None:
            manager.register(IsolateHooks(), "memguard-isolate")

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        if items:
            self.session.deselected = True
            self.session.collected.update(item.nodeid for item in items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Before the first test: the threads alive now are the run's (xdist's I/O thread,
        other plugins'), not the suite's; every later one may do a test's work. An update
        makes the baseline files it will write now, so its tests see the tree a check will."""
        self.session.engine.heap.leave_out_threads()
        if not session.config.option.collectonly:  # no test runs, no file is written
            self.session.reserve_baselines(getattr(session, "items", ()))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Before any fixture is set up: a plan's error fails the test here, and with
        ``mem_scope = test`` the window opens here."""
        plan = item.stash.get(PLAN_KEY, None)
        if plan is None:
            return
        if plan.error is not None:
            pytest.fail(plan.error, pytrace=False)
        budget = plan.budget
        if budget is not None and budget.no_survivors and not self.session.repeating:
            # Before the window: the watch's own snapshot is not the test's memory.
            from .retainers import Survivors

            item.stash[SURVIVORS_KEY] = Survivors(budget.no_survivors).start()
        if self.session.scope_test and not self.session.repeating:
            item.stash[METER_KEY] = self.session.start(plan)

    def _window_plan(self, item: pytest.Item, window: str) -> TestPlan | None:
        """The plan of a test whose window this hook opens (see ``TestPlan.window``)."""
        plan = item.stash.get(PLAN_KEY, None)
        if plan is None or plan.window != window or self.session.scope_test:
            return None
        return None if self.session.windowless else plan

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, object, object]:
        """A test function's window: the innermost wrapper of the hook that calls it, so that
        it holds the test and not other plugins' work of the call phase (pytest-randomly
        reseeds its generators there: ~600 allocations a test)."""
        plan = self._window_plan(pyfuncitem, "function")
        if plan is None:
            return (yield)
        return (yield from self.session.measured(pyfuncitem, plan))

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        """The window of other items: their ``runtest`` (a unittest case's from its
        ``startTest`` to its ``stopTest``)."""
        session = self.session
        calling, session.calling = session.calling, True
        try:
            plan = self._window_plan(item, "unittest")
            if plan is not None:
                result = yield from session.measured_unittest(item, plan)
            elif (plan := self._window_plan(item, "call")) is not None:
                result = yield from session.measured_runtest(item, plan)
            else:
                result = yield
            return result
        finally:
            session.calling = calling

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        """A test with a leak check: its official run, then its repetitions, then its reports
        (an isolated test's check runs in its child, see ``IsolateHooks``)."""
        plan = item.stash.get(PLAN_KEY, None)
        leak = None if plan is None or plan.isolate else plan.leak_check
        if leak is None or item.config.getoption("setupshow", False):
            return None
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in self.session.leak_checked_run(item, nextitem, leak):
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        """With ``mem_scope = test`` the window closes after the fixtures' teardown; a
        ``no_survivors`` budget is checked after it (what fixtures hold is let go by then)."""
        try:
            result = yield
        finally:
            plan = item.stash.get(PLAN_KEY, None)
            meter = item.stash.get(METER_KEY, None)
            if plan is not None and meter is not None:
                del item.stash[METER_KEY]
                self.session.finish(item, plan, meter, judge=True)
        watch = item.stash.get(SURVIVORS_KEY, None)
        if watch is not None:
            del item.stash[SURVIVORS_KEY]
            watch.finish(exclude=(getattr(item, "funcargs", None) or {}).values())
            if watch:
                pytest.fail(watch.explain("mem_budget no_survivors"), pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, None, None]:
        """Outermost, and out of any window: a subtest (unittest's ``subTest``, pytest's
        ``subtests``) is reported from inside the test's call, and what reporting costs depends
        on the plugins installed (the terminal's bookkeeping, or xdist's serialisation): ~200
        allocations a subtest that are not the test's."""
        heap = self.session.engine.heap
        before = heap.pause(True)
        try:
            if self.session.calling:  # the test's own report comes after its call phase
                self.session.subtests += 1
                self.session.subtests_failed += report.failed
            if not self.session.is_worker:
                self.session.absorb(report)
            return (yield)
        finally:
            heap.pause(before)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """First, so that the terminal summary (written after this) has the outcome. Only
        problems of the run as a whole touch the exit status; a regression fails its test."""
        ours = self.session
        ours.engine.collector.settle()
        if ours.is_worker:
            return
        ours.settle(getattr(session, "items", ()))
        ours.write_reports()
        # The baselines were not all kept, or the report the user asked for is missing.
        lost = ours.baseline_outcome.get("errors") or ours.report_missing
        if lost and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        session = self.session
        if session.is_worker:
            return
        for title, lines in session.summary_lines():
            terminalreporter.write_sep("-", title)
            for line in lines:
                terminalreporter.write_line(line)
        if os.environ.get("GITHUB_ACTIONS") == "true":
            from .github import github_annotations

            for line in github_annotations(session.records.values()):
                terminalreporter.write_line(line)


def _isolated_protocol(item: pytest.Item) -> Callable[[], list[pytest.TestReport]] | None:
    """What an isolated test's child runs instead of pytest's protocol: its leak check, if any."""
    plan = item.stash.get(PLAN_KEY, None)
    leak = None if plan is None else plan.leak_check
    if leak is None:
        return None
    return partial(item.config.stash[SESSION_KEY].leak_checked_run, item, None, leak)


class IsolateHooks:
    """Registered when a test is to run in a child process."""

    def __init__(self) -> None:
        self._server: ForkServer | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Before the first test: the process the children are forked from (see ForkServer)."""
        from .isolate import ForkServer, method

        if method() == "fork" and not session.config.option.collectonly:
            self._server = ForkServer(session.items, _isolated_protocol)

    def pytest_sessionfinish(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        """Run a test marked mem_isolate (or every test with --mem-isolate) in a child process
        that starts from the session's post-collection state (forked) or from nothing
        (spawned, where there is no fork), and report what it reported."""
        plan = item.stash.get(PLAN_KEY, None)
        if plan is None or not plan.isolate:
            return None
        from .isolate import method, run_isolated, run_spawned

        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        if method() == "fork":
            reports = run_isolated(item, _isolated_protocol(item), self._server)
        else:
            reports = run_spawned(item)
        for report in reports:
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True


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

        result = LeakRunner(self._engine, settings).run(call, named=True)
        if result.leaked:
            raise AssertionError(result.message(f"{where}:"))
        value = last[0]
        last.clear()
        return value

    def usage(self) -> MemoryUsage:
        from .process import usage

        return usage()

    @staticmethod
    def process(target: object, *, children: bool = False) -> WatchedProcess:
        """Watch another process (a pid, ``Popen``, ``multiprocessing.Process`` or
        ``psutil.Process``): its ``usage()``, ``peak()`` over a block, and ``soak()``."""
        from .other_process import watch

        return watch(target, children=children)

    def survivors(self, *kinds: Kind) -> AbstractContextManager[Survivors]:
        """Watch a block for objects of ``kinds`` it makes that outlive it (see
        ``pytest_memguard.survivors``)."""
        return survivors(*kinds, engine=self._engine)

    @contextmanager
    def measure(self, *, retained: bool = True, private: bool = False) -> Iterator[Measurement]:
        with measure(retained=retained, private=private) as result:
            yield result


@pytest.fixture
def memguard(request: pytest.FixtureRequest) -> MemguardFixture:
    """Measure memory, check for leaks and run long soaks from inside a test."""
    session = request.config.stash.get(SESSION_KEY, None)
    if session is None:  # pragma: no cover - the fixture comes with the plugin
        return MemguardFixture(get_engine())
    return MemguardFixture(session.engine, session.leak_defaults, request.node)
