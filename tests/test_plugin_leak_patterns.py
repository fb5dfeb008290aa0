"""mem_leak_check on what real suites are made of: each repetition is a whole setup, call and
teardown (fresh function-scoped fixtures), the framework's own bookkeeping is not a leak, and
the official run reports exactly what a plain run reports."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Sequence

import pytest

from .conftest import HOOK, OPCACHE_310, OPCACHE_310_AT_TIMES, Runner, needs_hook
from .test_plugin_budget import outcomes

PATTERNS = '''
import itertools
import json
import logging
import sys
import unittest
import warnings

import pytest
from hypothesis import given, strategies as st

CONSTANT = 41


class CaseWithSubtests(unittest.TestCase):
    def setUp(self):
        self.data = list(range(10))

    def tearDown(self):
        del self.data  # a reused instance would fail here on its second run

    def test_subtests(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertIn(i, self.data)

    def test_cleanup(self):
        self.addCleanup(self.data.clear)


@pytest.fixture(scope="session")
def policy():
    return object()


@pytest.fixture
def runner(policy):
    return [policy]


def test_fixture_requested_by_name(request):
    # As pytest-asyncio's items ask for their event loop's runner, in their runtest.
    assert request.getfixturevalue("runner")


def test_pytest_subtests(subtests):
    for i in range(3):
        with subtests.test(i=i):
            assert i < 3


def test_monkeypatch_setattr(monkeypatch):
    monkeypatch.setattr(json, "dumps", lambda *a, **k: "x")
    assert json.dumps(1) == "x"


def test_monkeypatch_delattr(monkeypatch):
    monkeypatch.delattr(sys, "_getframe")  # a second delattr on one monkeypatch would fail
    assert not hasattr(sys, "_getframe")


def test_capsys(capsys):
    print("hello")
    assert capsys.readouterr().out == "hello\\n"


def test_caplog(caplog):
    logging.getLogger("x").warning("logged once")
    assert "logged once" in caplog.text


def test_warns():
    with pytest.warns(UserWarning):
        warnings.warn("expected", UserWarning)


def test_warning_shown_once():
    warnings.warn("shown once", UserWarning)


def test_tmp_path(tmp_path):
    (tmp_path / "f").mkdir()  # the same directory twice would raise FileExistsError


def test_record_property(record_property):
    record_property("key", "value")


def test_fresh_import():
    # dateutil's import tests: the module is imported anew each run and dropped after.
    import importlib
    sys.modules.pop("generated_module", None)
    importlib.import_module("generated_module")
    sys.modules.pop("generated_module")


ARCHIVES = itertools.count()


def test_import_from_a_new_archive():
    # jinja2's ModuleLoader tests: each run imports a module of a new name (the loader's id in
    # it) from an archive in a new temporary folder.
    import importlib
    import shutil
    import tempfile
    import zipfile

    name = f"zipped_module_{next(ARCHIVES)}"
    folder = tempfile.mkdtemp()
    archive = folder + "/templates.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(name + ".py", "VALUE = 1\\n")
    sys.path.insert(0, archive)
    try:
        assert importlib.import_module(name).VALUE == 1
    finally:
        sys.path.remove(archive)
        sys.modules.pop(name, None)
        shutil.rmtree(folder)


@given(st.integers())
def test_hypothesis(x):
    assert x + 1 > x


def answer():
    """
    >>> answer() == CONSTANT + 1
    True
    """
    return 42
'''


@OPCACHE_310
def test_real_suite_patterns_are_each_checked_and_pass(
    pytester: pytest.Pytester, run: Runner, plugin_args: Sequence[str]
) -> None:
    pytester.makepyfile(test_patterns=PATTERNS)
    functions = (f"def f{i}(x):\n    return [x] * {i} + [str(x)]\n" for i in range(200))
    pytester.makepyfile(generated_module="\n".join(functions))
    report = pytester.path / "report.json"
    args = ("-rA", "-v", "-p", "no:randomly", "--doctest-modules")
    # Every warning an error but the test's own: the plugin adds none of its own.
    strict = ("-W", "error", "-W", "default::UserWarning")
    result = run(*plugin_args, *args, *strict, "--mem-leak-check", f"--mem-report={report}")
    plain = run(*plugin_args, *args, "-p", "no:memguard")
    seen = outcomes(result)
    assert len(seen) == 16
    assert set(seen.values()) == {"PASSED"}, result.stdout.str()
    text = result.stdout.str()
    # Subtests report from inside the call: the repeated runs' reports are not shown.
    assert re.search(r"\b6 subtests passed", text), text
    assert re.search(r"\b6 subtests passed", plain.stdout.str())
    assert text.count("logged once") == plain.stdout.str().count("logged once") == 1
    assert text.count("UserWarning: shown once") == 1
    assert "cannot repeat" not in text
    # Repetitions' tmp_path directories are scratch, removed with their names reused (each new
    # name was a leak of its own on 3.12: pathlib interns path parts, immortal there).
    assert len(list(pytester.path.glob("runpytest-0/**/test_tmp_path[0-9]*"))) == 1
    rows = {row["nodeid"].split("::")[-1]: row for row in json.loads(report.read_text())["tests"]}
    for name, row in rows.items():
        details = row["details"]
        assert 2 <= details["leak.calls"] <= 300, name
        assert details["leak.leaked"] is False, name
    # A sample taken while a module is imported must not keep the module's code alive (it
    # held 200 functions' code: hundreds of blocks every few runs).
    assert rows["test_fresh_import"]["details"].get("leak.blocks_per_call", 0) < 5


@OPCACHE_310
def test_a_property_test_repeats_with_few_examples_and_hypothesis_caches_cleared(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """A hypothesis test's repetitions run 10 of its examples (the official run all of them):
    attrs' property tests took 3-4 runs' worth of their budget otherwise, too few to judge.
    Hypothesis' strategy cache, which a test making new strategy arguments per example fills by
    a few entries a run (attrs' make classes), is cleared between runs: its growth is the
    framework's, not the test's."""
    pytester.makepyfile(
        test_property="""
        import itertools

        import pytest
        from hypothesis import given, settings, strategies as st

        CALLS = [0]
        NEW = itertools.count(1000)

        @pytest.mark.mem_leak_check(iterations=30)
        @settings(max_examples=50, database=None)
        @given(st.integers())
        def test_property(x):
            CALLS[0] += 1
            st.integers(min_value=next(NEW))  # a new entry in the strategy cache
        """
    )
    pytester.makeconftest(
        """
        import sys

        def pytest_terminal_summary(terminalreporter):
            calls = sys.modules["test_property"].CALLS[0]
            terminalreporter.write_line(f"examples run: {calls}")
        """
    )
    report = pytester.path / "report.json"
    result = run("-p", "no:randomly", f"--mem-report={report}")
    result.assert_outcomes(passed=1)
    (row,) = json.loads(report.read_text())["tests"]
    runs = row["details"]["leak.calls"]
    # Judged clean by the second or third stage (64 runs on 3.11, 128 on 3.15, as a property
    # test that fills nothing); with the cache left to fill (1,024 entries), its growth stopped
    # only at 256 runs on 3.11, and failed the test on 3.15.
    assert 32 <= runs <= 128
    # Net of the judged runs: a resize here or there (+0.2 a run seen), not the cache's ~30.
    assert abs(row["details"]["leak.blocks_per_call"]) < 1
    # 50 examples in the official run, 10 in each repetition.
    result.stdout.fnmatch_lines([f"examples run: {50 + 10 * runs}"])


def test_a_property_test_on_a_unittest_method_repeats(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """pytest makes a new TestCase instance for every run, and hypothesis fails a @given method
    called from two instances (its differing-executors health check): idna's 17 property tests
    could not be repeated. Repetitions run without that check; the official run keeps it."""
    pytester.makepyfile(
        test_property_case="""
        import unittest

        from hypothesis import given, settings, strategies as st

        class Case(unittest.TestCase):
            @settings(max_examples=5, database=None)
            @given(st.integers())
            def test_property(self, x):
                self.assertEqual(x, x)
        """
    )
    report = pytester.path / "report.json"
    result = run("-rA", "-p", "no:randomly", "--mem-leak-check", f"--mem-report={report}")
    result.assert_outcomes(passed=1)
    assert "cannot repeat" not in result.stdout.str()
    (row,) = json.loads(report.read_text())["tests"]
    assert "leak.cannot_repeat" not in row["details"]
    assert 7 <= row["details"]["leak.calls"] <= 64


def test_a_fixture_that_leaks_is_the_leak_reported(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makeconftest(
        """
        import pytest

        REGISTRY = []

        @pytest.fixture
        def session_like():
            REGISTRY.append(object())  # conftest.py:7
            yield
        """
    )
    pytester.makepyfile(
        test_fixture="""
        import pytest

        @pytest.mark.mem_leak_check
        def test_uses_it(session_like):
            pass
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    # (tracemalloc's frames carry no function names)
    where = "*conftest.py:7 in session_like*" if HOOK else "*conftest.py:7  <- *"
    result.stdout.fnmatch_lines(["*blocks*grew*", where])


def test_a_test_that_cannot_repeat_passes_as_itself_and_is_said_so(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """The official run comes first: a test that cannot run twice (dateutil's import-star test
    pops module globals) passes as it does plainly; the summary says it was not checked, and
    a test whose marker asks for the check fails saying why."""
    pytester.makepyfile(
        test_once="""
        import pytest

        RUNS = []

        def test_only_once():
            RUNS.append(1)
            assert RUNS.count(1) == 1, "ran twice"

        @pytest.mark.mem_leak_check
        def test_marked_only_once():
            RUNS.append(2)
            assert RUNS.count(2) == 1, "ran twice"
        """
    )
    option = run("-rA", "-p", "no:randomly", "--mem-leak-check", "-k", "not marked")
    assert outcomes(option) == {"test_only_once": "PASSED"}
    option.stdout.fnmatch_lines(
        [
            "*memguard: tests that cannot repeat, not checked for leaks*",
            "*test_only_once: its run 2 failed: AssertionError: ran twice*",
        ]
    )
    marked = run("-rA", "-p", "no:randomly", "-k", "marked")
    assert outcomes(marked) == {"test_marked_only_once": "FAILED"}
    marked.stdout.fnmatch_lines(
        [
            "*mem_leak_check on *test_marked_only_once: the test cannot repeat, so it was not "
            "checked for leaks: its run 2 failed: AssertionError: ran twice*"
        ]
    )


def test_a_test_that_changes_its_parameters_repeats_with_a_copy_of_them(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """humanize's test_naturalsize negates the list it is parametrized with to test negative
    sizes, so its second run failed: 77 of the suite's 878 tests were not checked. Where a run
    with the values as the official run left them fails, every run gets a copy of the values as
    they were before it; a test that compares its parameter by identity keeps the original."""
    pytester.makepyfile(
        test_params="""
        import pytest

        MISSING = object()
        KEPT = []

        @pytest.mark.parametrize("args", [[300], [1, 2]])
        def test_negates(args):
            assert args[0] > 0
            args[0] = -args[0]

        @pytest.mark.parametrize("value", [MISSING])
        def test_by_identity(value):
            assert value is MISSING

        @pytest.mark.parametrize("args", [[7]])
        def test_negates_and_leaks(args):
            assert args[0] > 0
            args[0] = -args[0]
            KEPT.append(bytearray(1000))

        @pytest.mark.parametrize("args", [[300]])
        def test_negates_and_counts(args):
            KEPT.append(args)  # a copy each run: the original is never negated twice
            assert sum(1 for kept in KEPT if kept is args) == 1
            args[0] = -args[0]
            KEPT.remove(args)
        """
    )
    report = pytester.path / "report.json"
    result = run("-rA", "-p", "no:randomly", "--mem-leak-check", f"--mem-report={report}")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_params.py::test_negates_and_leaks?args0? - memory*"])
    assert "cannot repeat" not in result.stdout.str()
    rows = {row["nodeid"]: row["details"] for row in json.loads(report.read_text())["tests"]}
    assert len(rows) == 5
    for nodeid, details in rows.items():
        assert "leak.cannot_repeat" not in details, nodeid
    assert 7 <= rows["test_params.py::test_negates[args0]"]["leak.calls"] <= 64
    leaks = rows["test_params.py::test_negates_and_leaks[args0]"]
    assert leaks["leak.leaked"]
    if HOOK:
        assert 900 <= leaks["leak.bytes_per_call"] <= 1200
    else:  # untraced runs (docs/leaks.md, step 5): the interpreter's blocks, glibc's bytes
        assert "leak.bytes_per_call" not in leaks
        assert 0.9 <= leaks["leak.blocks_per_call"] <= 2.1
        if "leak.native_per_call" in leaks:
            assert 900 <= leaks["leak.native_per_call"] <= 1200


def test_a_failing_test_fails_once_as_itself(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(
        test_fails="""
        def test_broken():
            print("printed by the test")
            assert 1 == 2
        """
    )
    result = run("--mem-leak-check")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert result.stdout.lines.count("printed by the test") == 1  # captured once
    assert "assert 1 == 2" in text
    assert "cannot repeat" not in text


def test_a_slow_test_gets_a_few_runs_not_the_full_schedule(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """The time budget: 4 more runs of the test in CPU time (the floor is 0.05 s)."""
    pytester.makepyfile(
        test_slow="""
        import time

        def test_slow():
            end = time.process_time() + 0.05
            while time.process_time() < end:
                pass
        """
    )
    report = pytester.path / "report.json"
    result = run("--mem-leak-check", f"--mem-report={report}")
    result.assert_outcomes(passed=1)
    (row,) = json.loads(report.read_text())["tests"]
    assert 2 <= row["details"]["leak.calls"] <= 6


def test_tests_too_slow_for_a_verdict_are_run_once_more_and_listed(
    pytester: pytest.Pytester, run: Runner, plugin_args: Sequence[str]
) -> None:
    """A run of 0.15 s: the time budget holds no verdict, so the check stops after its first
    run and the summary lists the test (the first TOO_SLOW_LISTED of them), not a pass."""
    pytester.makepyfile(
        test_slow="""
        import time

        import pytest

        @pytest.mark.parametrize("n", range(3))
        def test_slow(n):
            with open("runs.txt", "a") as runs:
                runs.write(f"{n}\\n")
            end = time.process_time() + 0.15
            while time.process_time() < end:
                pass

        def test_fast():
            pass
        """
    )
    pytester.makeconftest(
        """
        import pytest_memguard.session

        pytest_memguard.session.TOO_SLOW_LISTED = 2
        """
    )
    report = pytester.path / "report.json"
    result = run(*plugin_args, "-p", "no:randomly", "--mem-leak-check", f"--mem-report={report}")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*memguard: tests too slow to check for leaks in their time budget*",
            "one run took so long that the time budget holds neither the screen nor*",
            "  test_slow.py::test_slow[[]?]: 1?? ms a run",
            "  test_slow.py::test_slow[[]?]: 1?? ms a run",
            "  and 1 more (leak.too_slow in the JSON report)",
        ]
    )
    # The official run and one repetition each.
    runs = (pytester.path / "runs.txt").read_text().split()
    assert sorted(runs) == ["0", "0", "1", "1", "2", "2"]
    rows = {row["nodeid"]: row["details"] for row in json.loads(report.read_text())["tests"]}
    for n in range(3):
        details = rows[f"test_slow.py::test_slow[{n}]"]
        assert details["leak.calls"] == 1
        assert 0.14 <= details["leak.too_slow"] <= 1.0
        assert details["leak.leaked"] is False
    assert "leak.too_slow" not in rows["test_slow.py::test_fast"]


@OPCACHE_310
def test_a_marked_test_too_slow_for_the_budget_is_checked_in_full(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """A marker asks for the test's check: where the budget holds no verdict, its runs run in
    full (32 for a clean test) and it is not listed as too slow."""
    pytester.makepyfile(
        test_slow="""
        import time

        import pytest

        @pytest.mark.mem_leak_check
        def test_slow_marked():
            end = time.process_time() + 0.08
            while time.process_time() < end:
                pass
        """
    )
    report = pytester.path / "report.json"
    result = run("-p", "no:randomly", f"--mem-report={report}")
    result.assert_outcomes(passed=1)
    assert "too slow" not in result.stdout.str()
    (row,) = json.loads(report.read_text())["tests"]
    assert 32 <= row["details"]["leak.calls"] <= 64
    assert "leak.too_slow" not in row["details"]


def test_an_isolated_test_is_repeated_in_its_child(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(
        test_iso="""
        import pytest

        SINK = []

        @pytest.mark.mem_isolate
        @pytest.mark.mem_leak_check
        def test_leaky():
            SINK.append(object())

        @pytest.mark.mem_isolate
        @pytest.mark.mem_leak_check
        def test_clean():
            sum(range(10))
        """
    )
    result = run("-rA", "-p", "no:randomly")
    assert outcomes(result) == {"test_leaky": "FAILED", "test_clean": "PASSED"}
    result.stdout.fnmatch_lines(["memory leaks: blocks* grew over 30 judged runs*"])


def test_broader_fixtures_are_set_up_once_and_their_teardown_is_reported(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        test_scopes="""
        import pytest

        SETUPS = []

        @pytest.fixture(scope="module")
        def shared():
            SETUPS.append(1)
            yield
            print("module teardown")
            raise RuntimeError("module teardown failed")

        def test_first(shared):
            assert len(SETUPS) == 1

        def test_second(shared):
            assert len(SETUPS) == 1
        """
    )
    result = run("-rA", "-p", "no:randomly", "--mem-leak-check")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_second*",
            "*RuntimeError: module teardown failed*",
            "*Captured stdout teardown*",
            "module teardown",
        ]
    )


def test_growth_the_budget_cannot_judge_is_listed_not_failed(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        test_slow_growth="""
        import time

        SINK = []

        def test_slow_and_growing():
            end = time.process_time() + 0.05
            while time.process_time() < end:
                pass
            SINK.append([object() for _ in range(10)])
        """
    )
    result = run("--mem-leak-check", "-W", "error")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*memguard: leak checks cut short by their time budget (not failed)*",
            # Only the hook's runs are traced for bytes (docs/leaks.md, step 5).
            "*test_slow_growth.py::test_slow_and_growing: blocks +1?.??/run"
            + (", bytes +* B/run*" if HOOK else "")
            + " over ? runs",
        ]
    )


@OPCACHE_310
@pytest.mark.parametrize("folder", ["", "pkg/tests"], ids=["flat", "nested"])
def test_a_clean_test_is_passed_by_the_shortest_screen(
    pytester: pytest.Pytester, folder: str
) -> None:
    """pytest's own per-run bookkeeping (the setup stack, the item's stash, os.environ's
    PYTEST_CURRENT_TEST) empties and refills dicts made before the check; their resizes read as
    a block of growth in run 3-5 and cost every clean test more runs (9-14 instead of 7). In a
    package inside a folder (simplejson's ``simplejson/tests``) the setup stack is one node
    deeper, and it resized every fifth run: a unittest test took 32 runs."""
    where = pytester.path / folder
    where.mkdir(parents=True, exist_ok=True)
    if folder:
        (where / "__init__.py").write_text("")
    (where / "test_clean.py").write_text(
        textwrap.dedent(
            """
            import unittest

            def test_function():
                pass

            class Case(unittest.TestCase):
                def test_method(self):
                    self.assertEqual(1, 1)
            """
        )
    )
    (where / "test_a_checked_first.py").write_text("def test_checked_first():\n    pass\n")
    pytester.makeini("[pytest]\nfilterwarnings =\n    error\n")
    report = pytester.path / "report.json"
    # 2 warm-up runs and 5 quiet ones: the least the screen does (7). A late first use of the
    # check's own code may keep one block once in the first runs of a session (32 bytes on
    # 3.15; 72 on 3.11 under xdist), in whichever test it falls, depending on what the
    # plugin's modules hold: a test in a file of its own is checked first to take most of it
    # (in the same file it moved the unittest test's dict resizes on 3.15: 11-14 runs), and
    # one run more is allowed (a block in the first screened run: 8; 3.11's full suite under
    # xdist read 7 and 8 in all three sessions). What this guards against took 9-14 runs (dicts
    # resized every few runs) and 32 (a nested package's setup stack).
    names = ("test_function", "test_method")
    most = 8
    sessions = []
    # A reading moves on a clean run now and then, which costs that test a few runs. One cause
    # was the check's own: the session's dict resized every dozen runs (see the test after
    # this one), which made the unittest test take 14 runs in one session in five on 3.15.
    # What is left is glibc's figure settling in the first tests of a session on 3.14 and
    # 3.15 (the unittest test took 11 runs in 5 of 25 sessions on 3.15 with a busy loop
    # beside it). The bookkeeping above costs every session, so two in three are given the
    # stray move.
    for _ in range(3):
        result = pytester.runpytest_subprocess(
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "--mem-leak-check",
            f"--mem-report={report}",
        )
        result.assert_outcomes(passed=3)
        rows = json.loads(report.read_text())["tests"]
        calls = {row["nodeid"].rpartition(":")[2]: row["details"]["leak.calls"] for row in rows}
        sessions.append({name: calls[name] for name in names})
        if all(7 <= runs <= most for runs in sessions[-1].values()) or not HOOK:
            break
    if HOOK:
        assert any(all(7 <= runs <= most for runs in s.values()) for s in sessions), sessions
    else:
        # The fallback's block column is the interpreter's count of every block, pytest's
        # resized dicts included (the hook takes those out): 9-13 runs, at times 32.
        assert all(7 <= calls <= 32 for calls in sessions[-1].values()), sessions


@needs_hook
@OPCACHE_310_AT_TIMES
def test_clean_tests_one_after_another_each_pass_the_shortest_screen(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """What a run does to objects that outlive it is the check's own growth. Each run adds a
    key to the session's dict and deletes it again; unless the dict is rebuilt, the spent slots
    make it resize every dozen runs or so, a new block in whichever test's screen that falls:
    12-14 of these 40 tests took 8-9 runs instead of 7, on 3.11 and 3.15 alike."""
    pytester.makepyfile(
        test_many="""
        import pytest

        @pytest.mark.parametrize("i", range(40))
        def test_clean(i):
            pass
        """
    )
    report = pytester.path / "report.json"
    result = run("-p", "no:randomly", "--mem-leak-check", f"--mem-report={report}")
    result.assert_outcomes(passed=40)
    calls = [row["details"]["leak.calls"] for row in json.loads(report.read_text())["tests"]]
    # glibc's figure can still move in the first runs of a session (its per-thread cache
    # filling; seen on 3.14 and 3.15 in one or two of these tests), and the first test may keep
    # the check's own late first use (one run more). On 3.15 one test took 16-17 runs, a
    # different one in each session, with trees that differ only in README.md (the package
    # metadata): a heap-layout effect not yet traced, since a passed test keeps no series.
    assert all(7 <= runs <= 24 for runs in calls), calls
    assert sum(runs > 7 for runs in calls) <= 4, calls


SWINGING = """
import array
import ctypes

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
HELD = array.array("Q", [0])


def test_swings():
    # Holds a C block every other run and frees it the next, as glibc's per-thread cache
    # makes a clean test's native figure swing by a chunk on 3.14: no growth.
    if HELD[0]:
        _libc.free(HELD[0])
        HELD[0] = 0
    else:
        HELD[0] = _libc.malloc(2048)


LEAKED = array.array("Q", [0])


def test_leaks_a_little():
    LEAKED[0] = _libc.malloc(2048)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2")
def test_native_memory_that_swings_without_growing_passes_the_screen(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """A native reading that comes and goes by a chunk is quiet for the screen as long as it
    sets no new high; one that grows a little every run still fails."""
    pytester.makepyfile(test_swing=SWINGING)
    report = pytester.path / "report.json"
    result = run("-rA", "-p", "no:randomly", "--mem-leak-check", f"--mem-report={report}")
    assert outcomes(result) == {"test_swings": "PASSED", "test_leaks_a_little": "FAILED"}
    rows = {t["nodeid"].split("::")[1]: t for t in json.loads(report.read_text())["tests"]}
    # 2 warm-up runs, the swing's first high, then 5 runs that set no new one (32 or more
    # runs when a swing was a move).
    # (On the fallback a clean test's block column moves a few times more: up to 32.)
    assert 7 <= rows["test_swings"]["details"]["leak.calls"] <= (10 if HOOK else 32)
    result.stdout.fnmatch_lines(["*native * grew*"])


def test_a_leak_in_the_suites_harness_is_explained_once_and_recognised_after(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """click's ``CliRunner`` keeps a cache entry per ``invoke``: every test that uses it leaks
    through the same dict. The first such test gets the whole escalation and the explanation;
    the ones after it fail at the screen, naming the first. A test that leaks elsewhere still
    gets the whole check, and a clean one still passes."""
    pytester.makeconftest(
        """
        import pytest

        STREAMS = {}

        class Runner:
            def invoke(self):
                STREAMS[object()] = [0] * 4  # conftest.py:8: the harness's leak

        @pytest.fixture
        def runner():
            return Runner()
        """
    )
    pytester.makepyfile(
        test_harness="""
        OTHER = []

        def test_first(runner):
            runner.invoke()

        def test_second(runner):
            runner.invoke()

        def test_clean(runner):
            assert runner is not None

        def test_leaks_elsewhere():
            OTHER.append(object())

        def test_third(runner):
            runner.invoke()
        """
    )
    report = pytester.path / "report.json"
    result = run("-p", "no:randomly", "--mem-leak-check", f"--mem-report={report}")
    result.assert_outcomes(failed=4, passed=1)
    rows = {
        row["nodeid"].split("::")[-1]: row["details"]
        for row in json.loads(report.read_text())["tests"]
    }
    first = "test_harness.py::test_first"
    # The whole escalation (up to 8 x 32 runs) for the first and for the other leak; the
    # warm-up and the screen (2 + 20 runs at most) for those that leak through the known dict.
    assert 100 <= rows["test_first"]["leak.calls"] <= 256, rows["test_first"]
    assert 100 <= rows["test_leaks_elsewhere"]["leak.calls"] <= 256, rows["test_leaks_elsewhere"]
    for name in ("test_second", "test_third"):
        assert 7 <= rows[name]["leak.calls"] <= 22, rows[name]
        assert rows[name]["leak.known_from"] == first
    assert "leak.known_from" not in rows["test_first"]
    assert "leak.known_from" not in rows["test_leaks_elsewhere"]
    assert 7 <= rows["test_clean"]["leak.calls"] <= 22
    result.stdout.fnmatch_lines(
        [
            "*_ test_first _*",
            "*after warm-up and escalation*",
            "Why it is kept*",
            "  conftest.STREAMS[[]…[]]  (dict, +1.0 entry per run)",
            "*_ test_second _*",
            "*(* runs in all, after warm-up)",
            f"The leak explained under {first}, not explained again*",
            "  conftest.STREAMS[[]…[]]  (dict, +1.0 entry per run)",
        ]
    )
    # Two reports say so (above the short summary, which CI=true prints messages whole in).
    reports = result.stdout.str().partition("short test summary info")[0]
    assert reports.count("\nThe leak explained under") == 2
    result.stdout.fnmatch_lines(
        [
            "*memguard: leaks that failed more tests than the one that explained them*",
            "each test below failed with a leak its check explained*",
            f"  {first}: 2 more tests",
        ]
    )
