"""--mem-isolate: a test's numbers do not depend on the tests that ran before it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import pytest

from .conftest import HOOK, Runner
from .test_plugin_budget import outcomes

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="isolation forks")
# The path taken where there is no fork, forced here to test it.
SPAWN = {"MEMGUARD_ISOLATE_SPAWN": "1"}

SIBLINGS = """
import os
import re

import pytest

HUNGRY = []

def test_a_hungry_sibling():
    HUNGRY.extend(bytearray(1000) for _ in range(20000))
    for i in range(300):
        re.compile(f"p{i}[a-z]+")

def test_b_measured():
    for i in range(300):
        re.compile(f"p{i}[a-z]+")
"""


def measured(pytester: pytest.Pytester) -> tuple[int, int]:
    report = json.loads((pytester.path / "report.json").read_text())
    [test] = [t for t in report["tests"] if t["nodeid"].endswith("test_b_measured")]
    return test["metrics"]["allocations"], test["metrics"]["heap_peak"]


@pytest.mark.parametrize(
    "method", [pytest.param("fork", marks=needs_fork), "spawn"], ids=["fork", "spawn"]
)
def test_numbers_are_identical_alone_and_after_a_hungry_sibling(
    pytester: pytest.Pytester, run: Runner, plugin_args: Sequence[str], method: str
) -> None:
    env = SPAWN if method == "spawn" else None
    pytester.makepyfile(test_iso=SIBLINGS)
    run(*plugin_args, "--mem-isolate", "--mem-report=report.json", env=env).assert_outcomes(
        passed=2
    )
    after_sibling = measured(pytester)
    run("--mem-isolate", "--mem-report=report.json", "-k", "test_b", env=env).assert_outcomes(
        passed=1
    )
    alone = measured(pytester)
    assert after_sibling == alone
    # Without isolation the sibling's warm regex cache makes the same test look far cheaper.
    run("--mem-report=report.json", "-p", "no:randomly").assert_outcomes(passed=2)
    figure = 0 if HOOK else 1  # its count, or its heap peak where calls are not counted
    assert measured(pytester)[figure] < alone[figure] // 2


SETTING = """
import pytest

CACHE = {"size": 8}
KEPT = []

def test_a_shrinks_the_cache():
    CACHE["size"] = 1

@pytest.mark.mem_isolate
def test_b_fills_the_cache():
    for _ in range(20):
        KEPT.append(bytearray(64 * 1024))
        del KEPT[: -CACHE["size"]]
"""


@needs_fork
def test_an_isolated_test_does_not_see_what_unisolated_tests_changed(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """Forked from the session, the child inherited the cache size the first test left (as
    python-dateutil's test_gettz_weakref leaves gettz's), and peaked at 2 buffers instead of 9.
    The children are forked from a process made before the first test ran."""
    pytester.makepyfile(test_setting=SETTING)
    peaks = []
    for args in ((), ("-k", "test_b")):
        run("--mem-report=report.json", "-p", "no:randomly", *args).assert_outcomes(
            passed=2 - len(args) // 2
        )
        report = json.loads((pytester.path / "report.json").read_text())
        [test] = [t for t in report["tests"] if t["nodeid"].endswith("test_b_fills_the_cache")]
        peaks.append(test["metrics"]["heap_peak"])
    after_the_change, alone = peaks
    assert 9 * 64 * 1024 <= alone <= 10 * 64 * 1024
    assert abs(after_the_change - alone) <= 4096


@needs_fork
def test_marker_isolates_one_test_and_reports_come_back(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        test_marker="""
        import os
        import pytest

        PARENT = os.getpid()

        @pytest.mark.mem_isolate
        def test_in_child(tmp_path):
            assert os.getpid() != PARENT
            print("hello from the child")
            assert False, "failure travels back"

        def test_in_parent():
            assert os.getpid() == PARENT
        """
    )
    result = run("-rA", "--junitxml=junit.xml")
    assert outcomes(result) == {"test_in_child": "FAILED", "test_in_parent": "PASSED"}
    result.stdout.fnmatch_lines(["*failure travels back*", "*hello from the child*"])
    assert "memguard.peak" in (pytester.path / "junit.xml").read_text()


@needs_fork
def test_forking_with_threads_alive_passes_under_warnings_as_errors(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """3.12+ warns when a process with threads forks; an xdist worker always has one."""
    pytester.makeconftest(
        """
        import threading
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        """
    )
    pytester.makepyfile(test_threads="def test_isolated():\n    assert True\n")
    result = run("-W", "error", "--mem-isolate", "-rA")
    assert outcomes(result) == {"test_isolated": "PASSED"}, result.stdout.str()


@needs_fork
def test_a_crashing_child_is_a_failure_naming_the_signal(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        test_crash="""
        import os
        import signal

        def test_dies():
            os.kill(os.getpid(), signal.SIGKILL)

        def test_after():
            pass
        """
    )
    result = run("--mem-isolate", "-rA")
    assert outcomes(result) == {"test_dies": "FAILED", "test_after": "PASSED"}
    result.stdout.fnmatch_lines(["*killed by signal SIGKILL*"])


@needs_fork
def test_isolated_budgets_and_baselines_work(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(
        test_mix="""
        import pytest

        @pytest.mark.mem_budget("8MB")
        def test_over():
            b = bytearray(20 * 2**20)

        def test_fine():
            x = [str(i) for i in range(100)]
        """
    )
    run("--mem-isolate", "--mem-baseline=update").assert_outcomes(passed=1, failed=1)
    result = run("--mem-isolate")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*peak 20.? MiB exceeds mem_budget 8.0 MiB*"])
    assert (pytester.path / "__memguard__" / "test_mix.json").exists()


def test_a_spawned_child_reports_back_failures_output_and_properties(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        test_marker="""
        import os
        import sys

        import pytest

        @pytest.mark.mem_isolate
        def test_in_child(tmp_path_factory):
            spawned = any(a.startswith("--memguard-child-reports=") for a in sys.argv)
            with open(os.environ["PIDS"], "a") as f:
                f.write(f"child {os.getpid()}\\nspawned {spawned}\\n")
            print("hello from the child")
            assert False, "failure travels back"

        def test_in_parent():
            with open(os.environ["PIDS"], "a") as f:
                f.write(f"parent {os.getpid()}\\n")
        """
    )
    pids = pytester.path / "pids.txt"
    result = run("-rA", "--junitxml=junit.xml", env={**SPAWN, "PIDS": str(pids)})
    assert outcomes(result) == {"test_in_child": "FAILED", "test_in_parent": "PASSED"}
    result.stdout.fnmatch_lines(["*failure travels back*", "*hello from the child*"])
    assert "memguard.peak" in (pytester.path / "junit.xml").read_text()
    seen = dict(line.split() for line in pids.read_text().splitlines())
    assert seen["child"] != seen["parent"]
    assert seen["spawned"] == "True"  # a new interpreter, not a fork


def test_a_spawned_child_that_dies_is_a_failure_with_its_output(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        test_crash="""
        import os
        import sys

        def test_dies():
            print("last words", flush=True)
            sys.stdout.flush()
            os._exit(3)

        def test_after():
            pass
        """
    )
    result = run("--mem-isolate", "-rA", "-s", env=SPAWN)
    assert outcomes(result) == {"test_dies": "FAILED", "test_after": "PASSED"}
    result.stdout.fnmatch_lines(
        ["*exited with status 3 before reporting (mem_isolate); its output ended with:*"]
    )
    assert "last words" in result.stdout.str()


def test_a_spawned_child_gets_its_test_however_the_parent_selected() -> None:
    """The child's command keeps the parent's options but not how it chose its tests (paths,
    -k, -m, --deselect) nor the cache plugin's flags, each with its value, attached or not."""
    from pytest_memguard.isolate import child_args

    args = [
        "-k", "test_b", "-mnot slow", "--deselect", "t.py::a", "--deselect=t.py::b",
        "--lfnf", "none", "--lf", "--last-failed-no-failures=all", "-ktest_c",
        "tests/t.py", "-p", "no:randomly", "--mem-isolate", "--mem-top=3", "-m", "slow",
    ]  # fmt: skip
    assert child_args(args, {"tests/t.py"}) == ["-p", "no:randomly", "--mem-isolate", "--mem-top=3"]


@pytest.mark.parametrize(
    "method", [pytest.param("fork", marks=needs_fork), "spawn"], ids=["fork", "spawn"]
)
@pytest.mark.parametrize(
    ("stop", "code"),
    [("raise KeyboardInterrupt", 2), ("pytest.exit('enough', returncode=3)", 3)],
    ids=["KeyboardInterrupt", "exit"],
)
def test_an_interrupt_in_an_isolated_test_stops_the_session_as_without_isolation(
    pytester: pytest.Pytester, run: Runner, method: str, stop: str, code: int
) -> None:
    pytester.makepyfile(
        test_stop=f"""
        import pytest

        def test_stops():
            {stop}

        def test_never_runs():
            pass
        """
    )
    plain = run("-p", "no:randomly")
    isolated = run("-p", "no:randomly", "--mem-isolate", env=SPAWN if method == "spawn" else None)
    for result in (plain, isolated):
        assert result.ret == code, result.stdout.str()
        result.stdout.fnmatch_lines(["*no tests ran*"])
        assert "test_never_runs" not in result.stdout.str()
    if code == 3:
        isolated.stdout.fnmatch_lines(["*Exit: enough*"])
