"""Every kind of test item is measured: functions, unittest cases (setUp and tearDown in the
window, subTest), doctests; and other plugins' work in the call phase stays out of the window."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from .conftest import HAS_XDIST, HOOK, MiB, Runner, needs_hook

UNITTEST = """
import unittest

KEEP = []


class Cases(unittest.TestCase):
    def setUp(self):
        self.buffer = bytearray(3 * 2**20)  # in the window: setUp runs inside the case

    def tearDown(self):
        del self.buffer

    def test_small(self):
        sum(range(10))

    def test_keeps_two_mib(self):
        KEEP.append(bytearray(2 * 2**20))

    def test_subtests(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertLess(i, 3)

    def test_fails(self):
        self.fail("on purpose")


def add(a, b):
    '''
    >>> add(2, 3)
    5
    '''
    return a + b
"""

CONFTEST = """
import pytest

KEEP = []


@pytest.hookimpl
def pytest_runtest_call(item):
    # Another plugin's work in the call phase (pytest-randomly reseeds there): not the test's.
    KEEP.append([object() for _ in range(5000)])


def pytest_collection_modifyitems(items):
    for item in items:
        if item.name == "test_keeps_two_mib":
            item.add_marker(pytest.mark.mem_budget(retained="1MB"))
"""

FUNCTIONS = """
def test_function():
    sum(range(10))
"""


def test_every_kind_of_item_is_measured(
    pytester: pytest.Pytester, run: Runner, plugin_args: Sequence[str]
) -> None:
    pytester.makepyfile(test_cases=UNITTEST, test_functions=FUNCTIONS)
    pytester.makeconftest(CONFTEST)
    result = run("--doctest-modules", "--mem-report=r.json", "-rA", *plugin_args)
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(
        ["*retained 2.0 MiB exceeds mem_budget 1.0 MiB*", "*test_keeps_two_mib*"]
    )
    tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
    by_name = {t["nodeid"].rpartition("::")[2].rpartition(".")[2]: t for t in tests}
    assert set(by_name) == {
        "test_small",
        "test_keeps_two_mib",
        "test_subtests",
        "test_fails",
        "add",
        "test_function",
    }
    # setUp's 3 MiB are in the case's window; the conftest's 5,000 objects are in no window.
    small = by_name["test_small"]["metrics"]
    assert 3 * MiB <= small["peak"] < 4 * MiB
    assert 3 * MiB <= small["heap_peak"] < 3.2 * MiB
    if HOOK:  # (the tracemalloc fallback counts no calls)
        for name in ("test_small", "test_function"):  # > 5000 if the conftest's work counted
            assert 0 < by_name[name]["metrics"]["allocations"] < 400, name
        # A doctest's window is its ``runtest``: the doctest runner's work, not other plugins'
        # implementations of the call hook.
        assert 100 < by_name["add"]["metrics"]["allocations"] < 2000
    assert by_name["test_fails"]["outcome"] == "failed"
    assert by_name["test_keeps_two_mib"]["outcome"] == "failed"


SUBTESTS = """
import unittest


class Cases(unittest.TestCase):
    def test_many_subtests(self):
        for i in range(20):
            with self.subTest(i=i):
                self.assertEqual(str(i), f"{i}")


def test_pytest_subtests(subtests):
    for i in range(20):
        with subtests.test(i=i):
            assert str(i) == f"{i}"
"""


@pytest.mark.skipif(not HAS_XDIST, reason="pytest-xdist not installed")
@pytest.mark.skipif(int(pytest.__version__.split(".")[0]) < 9, reason="subtests: pytest 9")
@needs_hook  # the hook leaves the reporting out; tracemalloc cannot
def test_subtest_reporting_is_not_the_tests(pytester: pytest.Pytester, run: Runner) -> None:
    """Subtests are reported from inside the test's call; what that costs depends on who
    listens (the terminal, or xdist's serialisation), so it is left out of the figures: a
    baseline recorded serially holds under xdist and the reverse."""
    pytester.makepyfile(test_subs=SUBTESTS)
    counts: dict[str, list[int]] = {}
    for args in (("-p", "no:xdist"), ("-n", "2")):
        run(*args, "--mem-report=r.json").assert_outcomes(passed=2)
        for test in json.loads(pytester.path.joinpath("r.json").read_text())["tests"]:
            counts.setdefault(test["nodeid"], []).append(test["metrics"]["allocations"])
    for nodeid, (serial, xdist) in counts.items():  # reported: ~1,000 and ~5,000 apart
        assert abs(serial - xdist) <= 0.03 * serial, (nodeid, serial, xdist)
    run("--mem-baseline=update").assert_outcomes(passed=2)
    checked = run("-n", "2", "--mem-report=r.json")
    checked.assert_outcomes(passed=2)
    tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
    assert [t["baseline"]["status"] for t in tests] == ["ok", "ok"]


NOT_RUN = """
import pytest


@pytest.fixture
def broken():
    raise RuntimeError("setup fails")


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass


def test_setup_error(broken):
    pass


def test_runs():
    pass
"""


def test_every_test_that_ran_has_a_report_row(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(test_not_run=NOT_RUN)
    run("--mem-report=r.json").assert_outcomes(passed=1, skipped=1, errors=1)
    tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
    rows = {t["nodeid"].rpartition("::")[2]: t for t in tests}
    assert set(rows) == {"test_skipped", "test_setup_error", "test_runs"}
    assert rows["test_skipped"]["unmeasured"] == "its call did not run (skipped before it)"
    assert rows["test_setup_error"]["unmeasured"] == "its call did not run (error before it)"
    assert set(rows["test_skipped"]["metrics"].values()) == {None}
    assert "unmeasured" not in rows["test_runs"]
    assert rows["test_runs"]["metrics"]["allocations" if HOOK else "heap_peak"] > 0


SECOND_CALL = """
import os
import unittest

CALLS = []


def parts(check, skip, fail):
    CALLS.append(1)
    for i in range(3):
        with check(i):
            if i == 1:
                skip("an optional part")  # the test passed; this subtest was skipped
            # docutils' directive test fails its second call after a cache filled in some orders
            if i == 2 and os.environ.get("SECOND_CALL_FAILS") and len(CALLS) % 2 == 0:
                fail("only the second call fails")


class Cases(unittest.TestCase):
    def test_case(self):
        import helper_case  # a first use in the window: the plugin calls the test again warm

        parts(lambda i: self.subTest(i=i), self.skipTest, self.fail)
"""

SECOND_CALL_FIXTURE = """
import pytest
from test_second import parts


def test_function(subtests):
    import helper_function

    parts(lambda i: subtests.test(i=i), pytest.skip, pytest.fail)
"""

# A module whose import makes some 20,000 allocations (a test's own work makes a few hundred).
HELPER = "TABLE = {str(i): [i, str(i)] for i in range(10000)}\n"


@pytest.mark.skipif(int(pytest.__version__.split(".")[0]) < 9, reason="subtests: pytest 9")
@needs_hook  # counts: the hook's
def test_the_second_call_of_a_test_with_subtests_reports_nothing(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """The plugin's warm second call is never the test's: its subtests are not reported (nor
    counted), a subtest it fails fails nothing, and a skipped subtest leaves the test passed
    and recorded. Where the second call fails, a check's figures still hold the module the
    first call imported: not compared ("cold"), rather than a regression of what ran before."""
    pytester.makepyfile(
        test_second=SECOND_CALL,
        test_second_fixture=SECOND_CALL_FIXTURE,
        helper_case=HELPER,
        helper_function=HELPER,
    )
    # -v: pytest's summary counts subtests (a skipped one as "skipped") at every verbosity
    plain = run("-v", "-p", "no:memguard").parseoutcomes()
    assert plain == {"passed": 2, "skipped": 2, "subtests": 4}, plain
    update = run("-v", "--mem-baseline=update", "--mem-report=r.json")
    assert update.parseoutcomes() == plain
    tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
    assert [t["outcome"] for t in tests] == ["passed", "passed"]
    for name in ("test_second", "test_second_fixture"):
        entries = json.loads(pytester.path.joinpath(f"__memguard__/{name}.json").read_text())
        (entry,) = next(iter(entries["scopes"].values())).values()
        assert 0 < entry["allocations"] < 5_000, (name, entry)  # the warm call's, no import

    check = run("-v", "--mem-report=r.json")
    assert check.parseoutcomes() == plain
    tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
    assert [t["baseline"]["status"] for t in tests] == ["ok", "ok"]

    cold = run("-v", "--mem-report=r.json", env={"SECOND_CALL_FAILS": "1"})
    assert cold.parseoutcomes() == plain
    assert "SUBFAIL" not in cold.stdout.str()
    tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
    assert [t["baseline"]["status"] for t in tests] == ["cold", "cold"]
    for test in tests:  # the first call's figures, import included
        assert 30_000 < test["metrics"]["allocations"] < 150_000, test
    cold.stdout.fnmatch_lines(["2 not compared: their figures hold a first use*", "  test_*"])


FAILS_A_SUBTEST = """
import os
import unittest

KEEP = []


class Cases(unittest.TestCase):
    def test_parts(self):
        if os.environ.get("BROKEN"):
            KEEP.append(bytearray(512 * 1024))
        for i in range(2):
            with self.subTest(i=i):
                self.assertFalse(os.environ.get("BROKEN") and i == 1)
"""


@pytest.mark.skipif(int(pytest.__version__.split(".")[0]) < 9, reason="subtests: pytest 9")
def test_a_test_whose_subtest_failed_is_not_compared(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """A failed subtest fails its test though the body goes on: like any failed test, its
    figures are of a run that did not pass, so it is neither compared nor recorded (sqlglot's
    order-dependent `test_time_slice_origin_roundtrip` also read as regressed)."""
    pytester.makepyfile(test_parts=FAILS_A_SUBTEST)
    run("--mem-baseline=update").assert_outcomes(passed=1)
    before = (pytester.path / "__memguard__" / "test_parts.json").read_bytes()
    broken = run("--mem-report=r.json", env={"BROKEN": "1"})
    broken.assert_outcomes(failed=1, passed=1)  # pytest 9: the subtest failed, its case passed
    assert "regressed" not in broken.stdout.str()
    (test,) = json.loads((pytester.path / "r.json").read_text())["tests"]
    assert test["outcome"] == "failed"
    assert "status" not in test["baseline"], test
    if HOOK:
        assert 512 * 1024 <= test["metrics"]["retained"] < 640 * 1024
    else:  # tracemalloc's peak also holds the failed subtest's report (its traceback's text)
        assert 512 * 1024 <= test["metrics"]["heap_peak"] < 1024 * 1024
    run("--mem-baseline=update", env={"BROKEN": "1"}).assert_outcomes(failed=1, passed=1)
    assert (pytester.path / "__memguard__" / "test_parts.json").read_bytes() == before


# A plugin's items (pygments' lexer items collect its example files): each item's first use of
# a "lexer" builds and caches its rules without importing anything.
CACHING_ITEMS = """
import os

import pytest

RULES = {}


def rules(name):
    if name not in RULES:
        RULES[name] = [str(i) for i in range(10000)]  # under 1 MiB: not called warm for it
    return RULES[name]


class LexItem(pytest.Item):
    def runtest(self):
        with open("calls.txt", "a") as out:
            out.write(self.name + "\\n")
        if os.environ.get("FAIL_AGAIN") and "calls" in self.stash:
            raise RuntimeError("cannot run twice")
        self.stash.setdefault("calls", 0)
        rules(self.parent.path.stem)
        data = [str(i) for i in range(int(os.environ.get("GROW", "300")))]

    def reportinfo(self):
        return self.path, 0, self.name


class LexFile(pytest.File):
    def collect(self):
        for name in self.path.read_text().split():
            yield LexItem.from_parent(self, name=name)


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".lex":
        return LexFile.from_parent(parent, path=file_path)
"""


@needs_hook  # counts
def test_a_plugin_item_that_paid_a_first_use_is_measured_again_warm(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """Recorded where ``first`` paid for building the rules, ``second`` pays for them when it
    runs alone (or first, at a random order): its call is repeated, as a test function's is,
    and the warm figure holds. A regression is still caught, and a second call that raises
    leaves the first figures standing."""
    pytester.makeconftest(CACHING_ITEMS)
    pytester.makefile(".lex", python="first second")
    calls = pytester.path / "calls.txt"

    def called() -> list[str]:
        names = calls.read_text().split()
        calls.unlink()
        return names

    run("--mem-baseline=update", "--mem-report=r.json").assert_outcomes(passed=2)
    assert called() == ["first", "second"]  # nothing imported, nothing looked regressed
    entries = json.loads((pytester.path / "r.json").read_text())["tests"]
    counts = {t["nodeid"].split("::")[1]: t["metrics"]["allocations"] for t in entries}
    assert 300 <= counts["second"] < 1_000
    # The rules: 10,000 strings and the numbers they were made from (ints' frees and reuse
    # vary with the version).
    assert counts["second"] + 10_000 <= counts["first"] < counts["second"] + 40_000
    alone = run("-k", "second", "--mem-report=r.json")
    alone.assert_outcomes(passed=1, deselected=1)
    assert called() == ["second", "second"]  # it paid for the rules, and was called warm
    (entry,) = json.loads((pytester.path / "r.json").read_text())["tests"]
    assert entry["baseline"]["status"] == "ok"
    assert abs(entry["metrics"]["allocations"] - counts["second"]) <= 64
    grown = run("-k", "second", env={"GROW": "3000"})
    grown.assert_outcomes(failed=1, deselected=1)
    grown.stdout.fnmatch_lines(["*allocations: baseline *, now *"])
    called()
    once = run("-k", "second", env={"FAIL_AGAIN": "1"})
    once.assert_outcomes(failed=1, deselected=1)  # its first figures stand, and regressed
    assert called() == ["second", "second"]
