"""The plugin's frame: header, summary, report, JUnit properties, options, robustness."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from xml.etree import ElementTree

import pytest

from pytest_memguard.platforms import IS_LINUX

from .conftest import HOOK, Runner, needs_kernel_peak
from .test_plugin_budget import outcomes

SIMPLE = """
def test_big():
    b = bytearray(12 * 2**20)
    for i in range(0, len(b), 4096):
        b[i] = 1

def test_small():
    x = [1] * 10
"""


def test_header_says_what_is_measured_and_how(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(SIMPLE)
    result = run()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["memguard *: peak = max(*); heap = *; private = *"])


def test_the_path_other_platforms_take_can_be_forced_and_says_so(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """MEMGUARD_FORCE_PORTABLE=1: psutil's figures and a sampled peak, as on macOS and Windows;
    a budget still sees a Python spike, through the heap peak."""
    pytester.makepyfile(SIMPLE)
    pytester.makepyfile(
        test_spike="""
        import pytest

        @pytest.mark.mem_budget(peak="4MB")
        def test_spike():
            bytes(8 * 2**20)
        """
    )
    result = run("-rA", env={"MEMGUARD_FORCE_PORTABLE": "1"})
    result.stdout.fnmatch_lines(
        [
            "memguard *: peak = max(RSS sampled every 1 ms (*), Python-heap peak); heap = *; "
            "private = resident minus shared memory (psutil) after gc - MEMGUARD_FORCE_PORTABLE "
            "is set",
            "*peak 8.0 MiB exceeds mem_budget 4.0 MiB by 4.0 MiB*",
        ]
    )
    assert outcomes(result) == {
        "test_big": "PASSED",
        "test_small": "PASSED",
        "test_spike": "FAILED",
    }


@needs_kernel_peak  # the table's peaks: a sampled one can miss test_big's
def test_summary_lists_top_tests_by_peak(
    pytester: pytest.Pytester, run: Runner, plugin_args: Sequence[str]
) -> None:
    pytester.makepyfile(SIMPLE)
    result = run(*plugin_args, "--mem-top=1")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*memguard: top 1 tests by peak memory*",
            "      peak  test",
            "*1?.? MiB  test_summary_lists_top_tests_by_peak.py::test_big",
        ]
    )
    table = result.stdout.str().split("top 1 tests")[1]
    assert "::test_small" not in table
    # Nothing read heap figures, so none were measured (the hook is not free) and their
    # columns are left out; a report file asks for them.
    assert "heap_peak" not in table
    reported = run(*plugin_args, "--mem-top=1", "--mem-report=report.json")
    # (The tracemalloc fallback counts no calls: no allocations column there.)
    columns = "   heap_peak  allocations  test" if HOOK else "   heap_peak  test"
    reported.stdout.fnmatch_lines([f"      peak{columns}"])


def test_top_zero_hides_the_summary(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(SIMPLE)
    result = run("--mem-top=0")
    assert "tests by peak memory" not in result.stdout.str()


def test_json_report_covers_every_test(
    pytester: pytest.Pytester, run: Runner, plugin_args: Sequence[str]
) -> None:
    pytester.makepyfile(
        SIMPLE
        + """
import pytest

@pytest.mark.mem_budget("1MB")
def test_over():
    b = bytearray(4 * 2**20)
"""
    )
    result = run(*plugin_args, "--mem-report=out/report.json")
    result.assert_outcomes(passed=2, failed=1)
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert report["version"] == 1
    assert report["scope"].startswith(("cpython-", "pypy-"))
    tests = {t["nodeid"].split("::")[1]: t for t in report["tests"]}
    assert set(tests) == {"test_big", "test_small", "test_over"}
    assert set(tests["test_big"]["metrics"]) == {
        "peak",
        "heap_peak",
        "retained",
        "private",
        "rss",
        "allocations",
        "fds",
    }
    assert tests["test_big"]["metrics"]["peak"] >= 12 * 2**20
    assert tests["test_big"]["metrics"]["private"] is None
    assert tests["test_over"]["outcome"] == "failed"
    assert tests["test_over"]["budget"] == {"peak": 2**20}
    assert tests["test_small"]["outcome"] == "passed"


def test_metrics_reach_junit_xml(pytester: pytest.Pytester, run: Runner) -> None:
    """With nothing that reads heap figures, a test gets the kernel's (the allocator hook
    costs 1.1-1.25x on allocation-heavy suites); a report file asks for the heap's too."""
    pytester.makepyfile(SIMPLE)

    def properties() -> set[str | None]:
        tree = ElementTree.parse(pytester.path / "junit.xml")
        return {p.get("name") for p in tree.iter("property")}

    run("--junitxml=junit.xml").assert_outcomes(passed=2)
    kernel = {"memguard.peak", "memguard.rss", "memguard.fds"}
    heap = {"memguard.heap_peak", "memguard.allocations"} if HOOK else {"memguard.heap_peak"}
    assert kernel <= properties()
    assert not heap & properties()
    run("--junitxml=junit.xml", "--mem-report=report.json").assert_outcomes(passed=2)
    assert kernel | heap <= properties()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--mem-top=-1",), "--mem-top"),
        (("--mem-top=lots",), "--mem-top"),
        (("--mem-baseline=sometimes",), "--mem-baseline"),
        (("--mem-tolerance=lots",), "--mem-tolerance"),
        (("--mem-leak-iterations=0",), "--mem-leak-iterations"),
        (("--mem-leak-warmup=-2",), "--mem-leak-warmup"),
    ],
)
def test_bad_options_are_usage_errors_naming_the_option(
    pytester: pytest.Pytester, run: Runner, args: tuple[str, ...], fragment: str
) -> None:
    pytester.makepyfile(SIMPLE)
    result = run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert fragment in result.stderr.str()


@pytest.mark.parametrize(
    ("ini", "fragment"),
    [
        ("mem_top = many", "mem_top"),
        ("mem_scope = module", "mem_scope"),
        ("mem_default_budget = fifty", "mem_default_budget"),
        ("mem_baseline_metrics = peak speed", "mem_baseline_metrics"),
        ("mem_tolerance = 10%%", "mem_tolerance"),
    ],
)
def test_bad_ini_values_are_usage_errors_naming_the_key(
    pytester: pytest.Pytester, run: Runner, ini: str, fragment: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(SIMPLE)
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert fragment in result.stderr.str()


def test_help_and_markers_list_everything(pytester: pytest.Pytester, run: Runner) -> None:
    helptext = run("--help").stdout.str()
    for flag in (
        "--mem-baseline",
        "--mem-tolerance",
        "--mem-leak-check",
        "--mem-report",
        "--mem-isolate",
        "--mem-top",
        "mem_default_budget",
        "mem_scope",
    ):
        assert flag in helptext
    markers = run("--markers").stdout.str()
    for marker in ("mem_budget(limit=None", "mem_leak_check(iterations=None", "mem_isolate"):
        assert marker in markers


def test_works_with_warnings_as_errors_and_without_cacheprovider(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(SIMPLE)
    run("-W", "error", "-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_can_be_disabled(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(SIMPLE)
    result = run("-p", "no:memguard")
    result.assert_outcomes(passed=2)
    assert "memguard" not in result.stdout.str()


def test_fixture_is_documented_and_the_hooks_run(pytester: pytest.Pytester, run: Runner) -> None:
    assert "Measure memory, check for leaks" in run("--fixtures").stdout.str()
    pytester.makepyfile(SIMPLE)
    run().stdout.fnmatch_lines(["memguard *: peak = max(*", "*top 2 tests by peak*"])


LOADED = """
import sys

def pytest_unconfigure(config):
    names = sorted(m for m in sys.modules if m.startswith("pytest_memguard."))
    print("LOADED", " ".join(n.rpartition(".")[2] for n in names))
"""


@pytest.mark.parametrize("report", [False, True], ids=["plain", "mem-report"])
def test_a_plain_run_loads_only_what_it_uses(
    pytester: pytest.Pytester, run: Runner, report: bool
) -> None:
    """Start-up cost: the process module (Linux windows are the extension's), budgets, leaks,
    soaks and isolation stay unimported; a failed test is recorded with its outcome."""
    pytester.makeconftest(LOADED)
    pytester.makepyfile(
        SIMPLE
        + """
def test_fails_after_allocating():
    b = bytearray(30 * 2**20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    assert False
"""
    )
    result = run("-s", "--mem-top=1", *(["--mem-report=r.json"] if report else []))
    result.assert_outcomes(passed=2, failed=1)
    # A failed test is recorded either way: its window closed before the failure was raised.
    result.stdout.fnmatch_lines(["*3?.? MiB*::test_fails_after_allocating"])
    loaded = result.stdout.str().split("LOADED ")[1].split("\n")[0].split()
    for module in ("budget", "leaks", "soak", "isolate", "xdist"):
        assert module not in loaded
    if IS_LINUX and HOOK:
        assert "process" not in loaded
    if report:
        tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
        assert {t["nodeid"].rpartition("::")[2]: t["outcome"] for t in tests} == {
            "test_big": "passed",
            "test_small": "passed",
            "test_fails_after_allocating": "failed",
        }


def test_fixture_usage_and_measure(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(
        """
        def test_it(memguard):
            u = memguard.usage()
            assert u.virtual >= u.physical >= u.private > 0
            print(u.pretty())
            with memguard.measure() as m:
                b = bytearray(6 * 2**20)
                del b
            # Nested in the plugin's window: net heap above the start of this block.
            assert m.heap_peak >= 0.99 * 6 * 2**20
            assert m.peak >= m.heap_peak
        """
    )
    result = run("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*virtual *", "physical *", "private *"])


def test_measures_call_not_fixtures_by_default_and_all_with_scope_test(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def big():
            b = bytearray(40 * 2**20)
            for i in range(0, len(b), 4096):
                b[i] = 1
            yield b
            del b

        @pytest.mark.mem_budget("20MB")
        def test_uses_big(big):
            assert len(big)
        """
    )
    run().assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nmem_scope = test\n")
    result = run()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*peak 4?.? MiB exceeds mem_budget 20.0 MiB*"])


def test_items_that_are_not_test_functions_are_measured(
    pytester: pytest.Pytester, run: Runner, plugin_args: Sequence[str]
) -> None:
    """A plugin's own items (no pytest_pyfunc_call) get the call-phase window and budgets."""
    pytester.makeconftest(
        """
        import pytest

        class MemItem(pytest.Item):
            def __init__(self, *, mib, **kwargs):
                super().__init__(**kwargs)
                self.mib = mib

            def runtest(self):
                kept = bytearray(self.mib * 2**20)
                for i in range(0, len(kept), 4096):
                    kept[i] = 1

            def reportinfo(self):
                return self.path, 0, self.name

        class MemFile(pytest.File):
            def collect(self):
                for line in self.path.read_text().split():
                    name, mib = line.split("=")
                    yield MemItem.from_parent(self, name=name, mib=int(mib))

        def pytest_collect_file(parent, file_path):
            if file_path.suffix == ".mem":
                return MemFile.from_parent(parent, path=file_path)
        """
    )
    pytester.makefile(".mem", cases="small=1 big=24")
    pytester.makeini("[pytest]\nmem_default_budget = 16MB\n")
    result = run(*plugin_args, "--mem-report=report.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*peak 2* MiB exceeds mem_default_budget 16.0 MiB*"])
    report = json.loads((pytester.path / "report.json").read_text())
    peaks = {t["nodeid"].split("::")[1]: t["metrics"]["peak"] for t in report["tests"]}
    assert peaks["big"] >= 24 * 2**20
    assert 2**20 <= peaks["small"] < 4 * 2**20


CALLS = """
import os

def test_counted():
    with open("calls.txt", "a") as out:
        out.write("x")
    kept.append(bytearray(5 * 2**20))

kept = []
"""

OTHER_CALL = """
import pytest

handled = []

@pytest.hookimpl({mark})
def pytest_pyfunc_call(pyfuncitem):
    handled.append(pyfuncitem.name)
    if pyfuncitem.name.startswith("test_handled"):  # what an async plugin does with its tests
        pyfuncitem.obj()
        return True
    return None

def pytest_sessionfinish(session):
    print("HANDLED", ",".join(handled))
"""


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(None, id="pytest-alone"),
        pytest.param("", id="conftest-impl"),
        pytest.param("tryfirst=True", id="conftest-tryfirst"),
        pytest.param("late", id="registered-after-collection"),
    ],
)
def test_every_test_is_called_once_and_measured_whoever_implements_the_call(
    pytester: pytest.Pytester, run: Runner, other: str | None
) -> None:
    """pytest's implementation of pytest_pyfunc_call called from inside the window (no
    wrapper), other implementations (async plugins) called in pluggy's order, and the wrapper
    where another implementation would be called first: each test runs once, measured."""
    if other == "late":  # a plugin registered by a fixture, after collection
        pytester.makeconftest(
            """
            import pytest

            class Late:
                handled = []

                @pytest.hookimpl(tryfirst=True)
                def pytest_pyfunc_call(self, pyfuncitem):
                    self.handled.append(pyfuncitem.name)
                    if pyfuncitem.name.startswith("test_handled"):
                        pyfuncitem.obj()
                        return True
                    return None

            @pytest.fixture(scope="session", autouse=True)
            def late(request):
                request.config.pluginmanager.register(Late(), "late")

            def pytest_sessionfinish(session):
                print("HANDLED", ",".join(Late.handled))
            """
        )
    elif other is not None:
        pytester.makeconftest(OTHER_CALL.format(mark=other))
    pytester.makepyfile(
        CALLS
        + """
def test_handled():
    with open("calls.txt", "a") as out:
        out.write("h")
    kept.append(bytearray(7 * 2**20))
"""
    )
    result = run("-s", "--mem-report=r.json")
    result.assert_outcomes(passed=2)
    assert sorted(pytester.path.joinpath("calls.txt").read_text()) == ["h", "x"]
    tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
    retained = {t["nodeid"].rpartition("::")[2]: t["metrics"]["heap_peak"] for t in tests}
    assert 5 * 2**20 <= retained["test_counted"] < 6 * 2**20
    assert 7 * 2**20 <= retained["test_handled"] < 8 * 2**20
    if other is not None:
        handled = result.stdout.str().split("HANDLED ")[1].split("\n")[0].split(",")
        assert sorted(handled) == ["test_counted", "test_handled"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (".", "is a directory; expected a file name such as memguard.json"),
        ("a_file/r.json", "*a_file is not a directory"),
    ],
)
def test_a_report_path_that_cannot_be_written_is_a_usage_error(
    pytester: pytest.Pytester, run: Runner, target: str, message: str
) -> None:
    pytester.makepyfile(SIMPLE)
    pytester.path.joinpath("a_file").write_text("")
    result = run(f"--mem-report={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--mem-report '{target}': {message}"])
    assert "passed" not in result.stdout.str()


def test_reports_that_cannot_be_written_at_the_end_are_listed_not_tracebacks(
    pytester: pytest.Pytester, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's directory was fine when the run started and is a file when it ends (a full
    disk looks the same): the summary and the final line must still be there."""
    pytester.makepyfile(
        test_remove="""
        import pathlib
        import shutil

        def test_removes_the_report_directory():
            shutil.rmtree("out")
            pathlib.Path("out").write_text("a file where the directory was")
        """
    )
    pytester.mkdir("out")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(pytester.path / "missing" / "summary.md"))
    result = run("--mem-report=out/report.json")
    # The user asked for the report: without it the run is not a success.
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*memguard: reports not written*",
            "--mem-report=out/report.json: File exists",
            f"GITHUB_STEP_SUMMARY={pytester.path}/missing/summary.md: No such file or directory",
            "*= 1 passed in *",
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    # Only the step summary missing (GitHub's file, not the user's): the run stays green.
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(pytester.path / "missing" / "summary.md"))
    assert run("-k", "nothing").ret == pytest.ExitCode.NO_TESTS_COLLECTED
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    ok = run("test_ok.py")
    assert ok.ret == pytest.ExitCode.OK
    ok.stdout.fnmatch_lines(["*memguard: reports not written*", "*= 1 passed in *"])


WITHOUT_RESOURCE = """
import sys

import psutil  # its Linux backend needs resource; its Windows one does not

sys.modules["resource"] = None  # as on Windows: importing it raises ImportError
import pytest

sys.exit(pytest.main(["-p", "no:cacheprovider", "-p", "no:randomly", "-rA", "test_win.py"]))
"""


def test_runs_where_there_is_no_resource_module(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no ``resource``: the plugin must load and measure with psutil's figures."""
    pytester.makepyfile(
        test_win="""
        import pytest

        @pytest.mark.mem_budget("1MB")
        def test_over():
            b = bytearray(12 * 2**20)
            for i in range(0, len(b), 4096):
                b[i] = 1

        @pytest.mark.mem_budget("64MB")
        def test_under():
            bytearray(2 * 2**20)
        """
    )
    pytester.makepyfile(win_main=WITHOUT_RESOURCE)
    monkeypatch.setenv("MEMGUARD_FORCE_TRACEMALLOC", "1")
    monkeypatch.setenv("MEMGUARD_FORCE_PORTABLE", "1")  # psutil's figures, a sampled peak
    result = pytester.run(sys.executable, "win_main.py")
    assert result.ret == 1, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["peak 12.0 MiB exceeds mem_budget 1.0 MiB by 11.0 MiB"])
    result.stdout.fnmatch_lines(["PASSED test_win.py::test_under"])
    result.stdout.fnmatch_lines(["FAILED test_win.py::test_over*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_under_pytest_memray_baselines_are_neither_checked_nor_updated(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """pytest-memray's tracing allocates inside every test and our windows count it: such
    figures must never be stored or gated, and the header says why. (Its ``--memray`` option
    stands in for the plugin here; the same was checked by hand with pytest-memray 1.11.)"""
    pytester.makeconftest(
        'def pytest_addoption(parser):\n    parser.addoption("--memray", action="store_true")\n'
    )
    pytester.makepyfile(test_grows="def test_grows():\n    x = [str(i) for i in range(5000)]\n")
    assert run("--mem-baseline=update").ret == pytest.ExitCode.OK
    baseline = pytester.path / "__memguard__" / "test_grows.json"
    document = json.loads(baseline.read_text())
    for entries in document["scopes"].values():
        entries["test_grows"]["heap_peak"] = 1  # far below what the test makes
    baseline.write_text(json.dumps(document))
    tiny = baseline.read_text()
    # Without --memray the lowered baseline fails the test ...
    failed = run()
    assert failed.ret == pytest.ExitCode.TESTS_FAILED
    failed.stdout.fnmatch_lines(["*heap_peak: baseline 1 B, now *"])
    # ... with it, nothing is gated and the header says so.
    result = run("--memray")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["memguard: pytest-memray is tracing this run (--memray)*"])
    assert "regressed" not in result.stdout.str()
    for mode in ("update", "check"):
        refused = run("--memray", f"--mem-baseline={mode}")
        assert refused.ret == pytest.ExitCode.USAGE_ERROR
        refused.stderr.fnmatch_lines([f"*--mem-baseline={mode} with --memray: *"])
    assert baseline.read_text() == tiny
