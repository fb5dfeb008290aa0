"""Running a whole test again for the leak check, the way CPython's ``-R`` re-runs a test case:
each run is the test's setup, call and teardown, so its function-scoped fixtures are fresh every
time (a new ``TestCase`` instance, ``monkeypatch``, ``tmp_path``, ``capsys``, doctest globals),
while fixtures of broader scope stay set up and are shared.

A repeated run reports nothing: pytest's reports are not logged (a subtest reports from inside
the call, so those are dropped too), and what a run leaves on the item for the official run to
report (captured output, user properties) is put back as it was. Memory the framework keeps
for its reports is not the user's leak.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from typing import Any, cast

import pytest
from _pytest.runner import CallInfo, runtestprotocol

_FAILED_SUBTESTS: Any  # pytest 9's stash key of each test's failed-subtest count
try:
    from _pytest.subtests import failed_subtests_key as _FAILED_SUBTESTS
except ImportError:  # pytest 8: no built-in subtests
    _FAILED_SUBTESTS = None


class CannotRepeat(Exception):
    """A run of the test did not pass: ``run`` is its number, counted from 1."""

    def __init__(self, run: int, reason: str) -> None:
        super().__init__(reason)
        self.run = run
        self.reason = reason


class _QuietHooks:
    """The hook relay a run the plugin adds sees (a repetition, the warm second call):
    pytest's own, except that reports are not logged. Failed reports (a subtest's) are kept
    in ``failed``: the run did not pass."""

    def __init__(self, relay: Any, failed: list[pytest.TestReport]) -> None:
        self._relay = relay
        self.failed = failed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._relay, name)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> list[object]:
        if report.failed:
            self.failed.append(report)
        return []


@contextlib.contextmanager
def reports_held(item: pytest.Item) -> Iterator[list[pytest.TestReport]]:
    """While open, what the test reports is not logged: a run the plugin adds is never the
    test's outcome. Reports go through ``item.ihook``, the session's ``gethookproxy``; a
    ``subtests`` fixture value made before (the warm call reuses the first call's) holds the
    relay it was made with, swapped here too. Yields the failed reports it held (a subtest's
    failure raises nothing)."""
    session: Any = item.session
    failed: list[pytest.TestReport] = []
    counts = _failed_subtests(item.config)
    key = item.id if counts is not None else None  # pytest 9 counts by the structured node id
    counted = counts.get(key) if counts is not None else None

    def gethookproxy(fspath: os.PathLike[str]) -> Any:
        return _QuietHooks(type(session).gethookproxy(session, fspath), failed)

    relays = [
        (value, name, relay)
        for value in (getattr(item, "funcargs", None) or {}).values()
        for name in ("_ihook", "ihook")  # pytest 9's Subtests, pytest-subtests' SubTests
        if hasattr(relay := getattr(value, "__dict__", {}).get(name), "pytest_runtest_logreport")
    ]
    session.gethookproxy = gethookproxy
    for value, name, relay in relays:
        setattr(value, name, _QuietHooks(relay, failed))
    try:
        yield failed
    finally:
        del session.gethookproxy
        for value, name, relay in relays:
            setattr(value, name, relay)
        # Put back only where it moved: the dict has an entry for every test that ran (a
        # defaultdict read for each report), and rebuilding it each run read as a leak in
        # every repeated test of soupsieve (a new table of it each run).
        if counts is not None and counts.get(key) != counted:
            if counted is None:
                del counts[key]
            else:
                counts[key] = counted


def _failed_subtests(config: pytest.Config) -> dict[Any, int] | None:
    """pytest's count of each test's failed subtests (``subtests`` fixture, pytest 9), by the
    structured form of its node id, which turns the test's own passed report into a failure;
    None where there is none."""
    return None if _FAILED_SUBTESTS is None else config.stash.get(_FAILED_SUBTESTS, None)


class _Scratch:
    """tmp_path's numbered directories made by one repetition: removed after it, and the
    factory's per-prefix counters put back, so that the next run gets the same names (pytest's
    private structures, read defensively; where they are missing, nothing is done). Only a run
    whose counters moved made directories: the base directory, which holds one per test that
    used tmp_path, is listed only then."""

    def __init__(self, item: pytest.Item) -> None:
        self.factory = getattr(item.config, "_tmp_path_factory", None)
        counters = getattr(self.factory, "_next_number", None)
        self.counters = counters if isinstance(counters, dict) else None
        self.saved = dict(self.counters or {})

    def clear(self) -> None:
        counters = self.counters
        if counters is None or counters == self.saved:
            return
        base = getattr(self.factory, "_basetemp", None)  # made by the first tmp_path
        made = {
            f"{key}{number}"
            for key, end in counters.items()
            for number in range(self.saved.get(key, 0), end)
        }
        counters.clear()
        counters.update(self.saved)
        if base is None:
            return
        try:
            names = os.listdir(base)
        except OSError:
            return
        for name in names:
            if name.lower() in made:  # the counters are kept by prefix.lower()
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _broader_fixtures(item: pytest.Item) -> list[Any]:
    """Fixture definitions of a scope broader than the function: every one visible to the
    item, not only those in its closure, since a test may ask for one by name while it runs
    (pytest-asyncio's items ask for their event loop's runner so, and its session-scoped
    policy fixture gained a finalizer a run: 36 of asgiref's tests read as leaking). pytest's
    private structures, read defensively."""
    manager = getattr(item.session, "_fixturemanager", None)
    visible = getattr(manager, "_get_all_fixture_defs_for_node", None)  # pytest 9
    # pytest 8 has no list per node: every definition of the session, a superset that costs
    # only length reads (a fixture the item cannot see gains no finalizer from its runs).
    by_name = getattr(manager, "_arg2fixturedefs", None)  # {name: [definitions]}
    if callable(visible):
        found: Iterable[Any] = visible(item)
    elif isinstance(by_name, dict):
        found = (fixture for fixtures in by_name.values() for fixture in fixtures)
    else:
        info = getattr(item, "_fixtureinfo", None)
        closure = getattr(info, "name2fixturedefs", None) or {}
        found = (fixture for fixtures in closure.values() for fixture in fixtures)
    return [
        fixture
        for fixture in found
        if getattr(fixture, "scope", "function") != "function"
        and isinstance(getattr(fixture, "_finalizers", None), list)
        and hasattr(fixture, "cached_result")
    ]


def _pristine_params(item: pytest.Item) -> dict[str, Any] | None:
    """A deep copy of the values ``item`` is parametrized with, taken before its official run
    changes them, or None (no parameters, or values that cannot be copied)."""
    params = getattr(getattr(item, "callspec", None), "params", None)
    if not isinstance(params, dict) or not params:
        return None
    try:
        return copy.deepcopy(params)
    except Exception:  # a lock, a generator, a module: copying is for the tests that mutate
        return None


def _rebuild(table: object) -> None:
    """Give a dict a freshly allocated table holding what it holds.

    Refilled pair by pair: a dict copied from a dict with no deleted entries clones its table,
    with the free-slot count that ``popitem`` (the setup stack's) does not give back, so the
    table still filled up every few runs and resized then (every fifth run of a unittest test
    in a nested package: 32 runs to pass a clean test instead of 7). Copied so, the rebuilt
    table also read as one block every run on 3.14 and 3.15."""
    if isinstance(table, dict) and table:
        saved = list(table.items())
        table.clear()
        table.update(saved)


def _spent(finalizer: object) -> bool:
    """A function-scoped fixture's teardown that has run (its value is gone)."""
    if not isinstance(finalizer, functools.partial):
        return False
    owner = getattr(finalizer.func, "__self__", None)
    return (
        getattr(finalizer.func, "__name__", "") == "finish"
        and getattr(owner, "scope", None) == "function"
        and getattr(owner, "cached_result", True) is None
    )


def describe(report: pytest.TestReport) -> str:
    """The first line that says why a report failed: the exception line where there is one."""
    text = report.longreprtext.strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    what = errors[0] if errors else (lines[-1] if lines else report.outcome)
    where = "" if report.when == "call" else f" in {report.when}"
    return f"{report.outcome}{where}: {what}"


# A repetition of a hypothesis test runs at most this many of its examples, the same ones every
# run (the seed is fixed); the official run keeps the test's own settings. attrs' property tests
# take 0.2-0.8 s a run with their 100 examples, so their time budget allowed 3-4 runs, too few to
# judge, at 5-7 times the plain cost; with 10 examples a run they are judged in 7-30 runs.
REPEATED_EXAMPLES = 10


def _repeat_settings(own: object) -> object | None:
    """Settings for repeating a hypothesis test whose own settings are ``own``, or None (not a
    hypothesis test, or nothing to change): at most REPEATED_EXAMPLES examples, and without the
    health check on differing executors. pytest makes a new TestCase instance for every run of
    a unittest method, which that check fails from the second run on: 17 of idna's property
    tests could not be repeated."""
    examples = getattr(own, "max_examples", None)
    hypothesis: Any = sys.modules.get("hypothesis")
    if hypothesis is None or not isinstance(examples, int):
        return None
    changes: dict[str, object] = {}
    if examples > REPEATED_EXAMPLES:
        changes["max_examples"] = REPEATED_EXAMPLES
    check = getattr(getattr(hypothesis, "HealthCheck", None), "differing_executors", None)
    suppressed = list(getattr(own, "suppress_health_check", ()))
    if check is not None and check not in suppressed:
        changes["suppress_health_check"] = [*suppressed, check]
    if not changes:
        return None
    try:
        return cast(object, hypothesis.settings(own, **changes))
    except Exception:  # a hypothesis whose settings take other arguments: its own settings
        return None


class Repetition:
    """One more run of ``item`` each call; raises ``CannotRepeat`` when a run does not pass.
    Made before the official run (a doctest's globals are taken then); ``restore()`` puts back
    what the official run left on the item."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item
        self.runs = 0
        # What the official run left for its reports, as the first repetition finds it.
        self._properties: list[tuple[str, object]] | None = None
        self._sections: list[tuple[str, str, str]] = []
        # Collected doctests hold their module's globals, which a run empties when it ends.
        dtest = getattr(item, "dtest", None)
        globs = getattr(dtest, "globs", None)
        self._globs = dict(globs) if isinstance(globs, dict) else None
        self._broader = _broader_fixtures(item)
        # A parent stands in for the next item: teardown then ends the item's own fixtures
        # and keeps every broader one (SetupState.teardown_exact stops at the shared chain).
        self._next = cast("pytest.Item", item.parent)
        obj = getattr(item, "obj", None)
        self._function = getattr(obj, "__func__", obj)  # a test method's function
        # ``@given`` leaves its settings on the function, where each call reads them:
        # hypothesis' private attribute, feature-detected.
        self._own = getattr(self._function, "_hypothesis_internal_use_settings", None)
        self._repeated = _repeat_settings(self._own)
        self._pristine = _pristine_params(item)
        self._fresh = False  # each run gets a copy of the parameters (see __call__)

    def __call__(self) -> None:
        item = self.item
        if self._properties is None:
            self._properties = list(item.user_properties)
            self._sections = list(item._report_sections)
        self.restore()
        self.runs += 1
        failed = self._run()
        if failed and self.runs == 1 and self._pristine is not None:
            # The official run changed the values it was parametrized with (humanize's
            # test_naturalsize negates its list of arguments to test negative sizes: 77 of its
            # 878 tests could not be repeated). Where a run with them fails, that run and
            # every later one get a copy of them as they were before the official run. Only
            # then: a copy has a new identity, and a test may compare its parameter with ``is``.
            self._fresh = True
            self.restore()
            failed = self._run()
        if failed:
            raise CannotRepeat(self.runs, describe(failed[0]))

    def _run(self) -> list[pytest.TestReport]:
        """One run of the test; its reports that did not pass."""
        item = self.item
        session: Any = item.session
        # Dicts that get a key and lose it again every run (os.environ's PYTEST_CURRENT_TEST,
        # the logging plugin's keys in the item's stash, the item in the setup stack, and the
        # session's own attributes, where ``reports_held`` puts ``gethookproxy``) leave a spent
        # slot each time and resize every few runs: a new block, while the old one, made before
        # the check, was never counted. Rebuilt here, each run, they are always the check's own,
        # and a resize reads as nothing. Without it a resize read as one block of growth in
        # run 3-5 of nearly every test, and the session's every dozen runs or so, in whichever
        # test's screen it fell (a third of a suite's clean tests took 8-9 runs instead of 7).
        # Insertion order, which the setup stack relies on, is kept.
        _rebuild(os.environ.__dict__.get("_data"))
        _rebuild(getattr(item.stash, "_storage", None))
        _rebuild(getattr(getattr(item.session, "_setupstate", None), "stack", None))
        _rebuild(vars(session))
        scratch = _Scratch(item)
        active = [(f, len(f._finalizers)) for f in self._broader if f.cached_result is not None]
        params: dict[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
        pristine = self._pristine if self._fresh else None
        originals = dict(params) if pristine is not None else None
        if pristine is not None:
            params.update(copy.deepcopy(pristine))
        if self._repeated is not None:
            self._function._hypothesis_internal_use_settings = self._repeated  # type: ignore[union-attr]
        try:
            with reports_held(item) as held:
                reports = runtestprotocol(item, log=False, nextitem=self._next)
        finally:
            if originals is not None:
                params.update(originals)
            if self._repeated is not None:
                self._function._hypothesis_internal_use_settings = self._own  # type: ignore[union-attr]
            # Each setup of a function-scoped fixture adds its teardown to the finalizers of
            # the broader fixtures it uses (pytest's bookkeeping: a session fixture's list grows
            # by one per test until the session ends). Spent ones go, or they read as a leak.
            for fixture, count in active:
                added = fixture._finalizers[count:]
                fixture._finalizers[count:] = [f for f in added if not _spent(f)]
            # A repetition's tmp_path is scratch. Each new name was a leak of its own on 3.12,
            # where pathlib interns path parts and interned strings are immortal.
            scratch.clear()
        failed = [r for r in reports if not r.passed]
        failed += held
        return failed

    def restore(self) -> None:
        item = self.item
        if self._properties is not None:
            item._report_sections = list(self._sections)  # captured output
            item.user_properties[:] = self._properties
        dtest = getattr(item, "dtest", None)
        if self._globs is not None and dtest is not None:
            dtest.globs.clear()
            dtest.globs.update(self._globs)


def teardown_rest(item: pytest.Item, nextitem: pytest.Item | None) -> pytest.TestReport:
    """After a test whose own teardown ended its function-scoped fixtures: end the broader ones
    ``nextitem`` does not share (SetupState, as pytest's teardown phase does), with output
    captured, as a teardown report. Not through the teardown hooks: they already ran for this
    test, and some undo what only its setup did (the logging plugin's stash keys)."""
    session = item.session
    if session.shouldfail or session.shouldstop:
        nextitem = None
    capture = item.config.pluginmanager.getplugin("capturemanager")

    def teardown() -> None:
        with capture.item_capture("teardown", item) if capture else contextlib.nullcontext():
            session._setupstate.teardown_exact(nextitem)

    call = CallInfo.from_call(teardown, when="teardown", reraise=(KeyboardInterrupt,))
    return cast("pytest.TestReport", item.ihook.pytest_runtest_makereport(item=item, call=call))
