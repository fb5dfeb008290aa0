"""A CI-sized real suite: two of toolz's own test files (toolz ships them in its wheel), copied
into an inner run. Baselines recorded once must hold however the check runs, and a real
regression must still be caught, and a leak check must fail only the real leak.
``../shared/realsuites/realsuite`` runs the full matrix on
whole suites; this keeps the property from rotting between such runs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import pytest

from .conftest import HAS_XDIST, OPCACHE_310_AT_TIMES, Runner

toolz_tests = pytest.importorskip("toolz.tests")

FILES = ("test_dicttoolz.py", "test_itertoolz.py")

# A regression injected into a function many of the tests call: every call also makes 2,000
# small objects and keeps 64 KiB until the test ends.
INJECT = """
import os

import pytest
import toolz.dicttoolz

KEPT = []
CURRENT = [""]
CALLERS = set()

if os.path.exists("inject.flag"):  # a file, not a variable: test_environ reads os.environ
    original = toolz.dicttoolz.merge

    def merge(*args, **kwargs):
        KEPT.append([object() for _ in range(2000)])
        KEPT.append(bytearray(64 * 1024))
        CALLERS.add(CURRENT[0])
        return original(*args, **kwargs)

    toolz.dicttoolz.merge = merge


@pytest.fixture(autouse=True)
def _drop_kept(request):
    CURRENT[0] = request.node.nodeid
    yield
    KEPT.clear()
    if CURRENT[0] in CALLERS:
        with open("callers.txt", "a") as out:
            out.write(CURRENT[0] + "\\n")
"""

REVERSE = "def pytest_collection_modifyitems(items):\n    items.reverse()\n"


def _statuses(pytester: pytest.Pytester) -> dict[str, str]:
    tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
    return {t["nodeid"]: t["baseline"].get("status", "") for t in tests}


@pytest.fixture
def toolz_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    source = os.path.dirname(toolz_tests.__file__)
    for name in FILES:
        with open(os.path.join(source, name), encoding="utf-8") as handle:
            pytester.path.joinpath(name).write_text(handle.read(), encoding="utf-8")
    pytester.makeconftest(INJECT)
    return pytester


def _check(run: Runner, *args: str) -> None:
    result = run("--mem-baseline=check", "--mem-report=r.json", "-p", "no:randomly", *args)
    assert result.ret in (0, 1), result.stdout.str()


CONTEXTS: list[Sequence[str]] = [(), ("-k", "merge or groupby"), ("test_itertoolz.py",)]
if HAS_XDIST:
    CONTEXTS.append(("-n", "2"))


def test_toolz_baselines_hold_in_every_context_and_catch_a_regression(
    toolz_suite: pytest.Pytester, run: Runner
) -> None:
    run("--mem-baseline=update", "-p", "no:randomly").assert_outcomes(passed=102)
    for args in CONTEXTS:
        _check(run, *args)
        unchanged = [k for k, v in _statuses(toolz_suite).items() if v == "regressed"]
        assert unchanged == [], (args, unchanged)
    toolz_suite.makeconftest(INJECT + REVERSE)  # reversed order
    _check(run)
    assert "regressed" not in _statuses(toolz_suite).values()
    # The injected regression: every test that calls merge regresses, in file order and
    # under xdist alike, and nothing else does.
    toolz_suite.makeconftest(INJECT)
    callers_file = toolz_suite.path / "callers.txt"
    for args in [(), ("-n", "2")] if HAS_XDIST else [()]:
        callers_file.write_text("")
        (toolz_suite.path / "inject.flag").write_text("")
        _check(run, *args)
        callers = set(callers_file.read_text().split())
        regressed = {k for k, v in _statuses(toolz_suite).items() if v == "regressed"}
        assert len(callers) >= 8, callers
        assert regressed == callers, args


@OPCACHE_310_AT_TIMES
def test_leak_check_on_real_tests_fails_only_the_known_leak(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """toolz's own tests under --mem-leak-check, every warning an error (as toolz configures
    itself): no clean test fails, and the one real leak, ``toolz._signatures.signatures``
    gaining an entry per call of test_inspect_wrapped_property on CPython 3.11, is caught."""
    source = os.path.dirname(toolz_tests.__file__)
    for name in ("test_inspect_args.py", "test_dicttoolz.py"):
        with open(os.path.join(source, name), encoding="utf-8") as handle:
            pytester.path.joinpath(name).write_text(handle.read(), encoding="utf-8")
    result = run(
        "--mem-leak-check", "-W", "error", "-rf", "-p", "no:randomly", "--mem-report=r.json"
    )
    tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
    failed = {t["nodeid"] for t in tests if t["outcome"] == "failed"}
    known = "test_inspect_args.py::test_inspect_wrapped_property"
    assert failed <= {known}, result.stdout.str()
    if sys.version_info[:2] == (3, 11):
        assert failed == {known}
        result.stdout.fnmatch_lines(["*memory leaks: blocks*grew*"])
    checked = [t for t in tests if "leak.calls" in t["details"]]
    assert len(checked) >= 60  # every test was checked (a few are skipped by toolz)
