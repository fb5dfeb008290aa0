"""Golden tests: what users and their tools read, pinned whole.

The JSON report, the JUnit properties, the terminal summary and the bytes of a baseline file are
interfaces: CI scripts parse them and reviewers diff them. Each is compared in full with its
figures normalised (``N``; sizes with their unit as ``SIZE``), so a change of layout, order,
wording or key fails here even where the behaviour tests still pass. An intended change updates
the golden text in the same commit.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from pytest_memguard import baseline as b
from pytest_memguard.platforms import IS_LINUX
from pytest_memguard.tolerance import Tolerance

from .conftest import Runner

SUITE = """
import os
import unittest

import pytest

SIZE = int(os.environ.get("MEMGUARD_TEST_SIZE", "1000"))


@pytest.mark.mem_budget(peak="10MB", allocations=100000)
def test_within():
    data = [str(i) for i in range(SIZE)]


@pytest.mark.mem_budget(peak="100KB")
def test_over():
    data = bytearray(1_000_000)


def test_plain():
    pass


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass


class TestCase(unittest.TestCase):
    def test_case(self):
        self.assertEqual([1] * 10, [1] * 10)
"""

linux_only = pytest.mark.skipif(not IS_LINUX, reason="the golden texts are those of Linux")

SIZE = re.compile(r"(?:(?<!\w)[+-])?\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)\b")
NUMBER = re.compile(r"(?:(?<!\w)[+-])?\d+(?:,\d{3})*(?:\.\d+)?")


def normal(text: str) -> str:
    """Figures out, layout kept: sizes become SIZE, other numbers N, column padding one space."""
    text = NUMBER.sub("N", SIZE.sub("SIZE", text))
    return re.sub(r" {2,}", " ", text).strip()


def shape(value: Any) -> Any:
    """A JSON value with every int replaced by "int" and every string normalised."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return normal(value)
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    raise AssertionError(f"unexpected JSON value {value!r}")


def test_baseline_file_bytes_are_pinned(tmp_path: Any) -> None:
    path = tmp_path / "__memguard__" / "test_mod.json"
    entries = {
        "test_b": {"peak": 2048, "allocations": 12, "heap_peak": 2048, "retained": 0},
        "T::test_a[x-1]": {"heap_peak": 100, "peak": 100, "retained": 8, "allocations": 3},
    }
    b.update_file(str(path), "cpython-3.11", entries, (), Tolerance(relative=0.05, absolute=1024))
    assert path.read_bytes() == (
        b"{\n"
        b'  "version": 1,\n'
        b'  "scopes": {\n'
        b'    "cpython-3.11": {\n'
        b'      "T::test_a[x-1]": {"allocations": 3, "heap_peak": 100, "peak": 100, '
        b'"retained": 8},\n'
        b'      "test_b": {"allocations": 12, "heap_peak": 2048, "peak": 2048, "retained": 0}\n'
        b"    }\n"
        b"  }\n"
        b"}\n"
    )


EXPECTED_BASELINE = """{
"version": N,
"scopes": {
"cpython-N": {
"TestCase::test_case": {"allocations": N, "heap_peak": N, "peak": N, "retained": N},
"test_plain": {"allocations": N, "heap_peak": N, "peak": N, "retained": N},
"test_within": {"allocations": N, "heap_peak": N, "peak": N, "retained": N}
}
}
}"""

MEASURED = (
    "peak = max(kernel high-water mark (clear_refs), Python-heap peak); "
    "heap = allocator hook (_allochook); private = anonymous memory after gc and malloc_trim"
)


def row(nodeid: str, outcome: str, **extra: Any) -> dict[str, Any]:
    measured = "unmeasured" not in extra
    metrics: dict[str, str | None] = dict.fromkeys(
        ("peak", "heap_peak", "retained", "private", "rss"), "int"
    )
    metrics["private"] = None
    metrics.update(allocations="int", fds="int")
    if not measured:
        metrics = dict.fromkeys(metrics)
    unmeasured = extra.pop("unmeasured", None)
    document: dict[str, Any] = {
        "nodeid": nodeid,
        "outcome": outcome,
        "metrics": metrics,
        "budget": {},
        "baseline": {},
    }
    document.update(extra)
    if unmeasured:
        document["unmeasured"] = unmeasured
    return document


CHANGES = (
    "allocations: baseline N, now N (N%; tolerance N%N); "
    "heap_peak: baseline SIZE, now SIZE (N%; tolerance N%SIZE)"
)
STORED = dict.fromkeys(("allocations", "heap_peak", "peak", "retained"), "int")

EXPECTED_REPORT = {
    "version": "int",
    "scope": "cpython-N",
    "measured": MEASURED,
    "tests": [
        row("test_mod.py::TestCase::test_case", "passed", baseline={"status": "ok", **STORED}),
        row(
            "test_mod.py::test_over",
            "failed",
            budget={"peak": "int"},
            baseline={"status": "new"},
        ),
        row("test_mod.py::test_plain", "passed", baseline={"status": "ok", **STORED}),
        row(
            "test_mod.py::test_skipped",
            "skipped",
            unmeasured="its call did not run (skipped before it)",
        ),
        row(
            "test_mod.py::test_within",
            "failed",
            budget={"peak": "int", "allocations": "int"},
            baseline={
                "status": "regressed",
                **STORED,
                "changes": CHANGES,
            },
        ),
    ],
}

FIGURES = [
    ("memguard.peak", "N"),
    ("memguard.heap_peak", "N"),
    ("memguard.retained", "N"),
    ("memguard.rss", "N"),
    ("memguard.allocations", "N"),
    ("memguard.fds", "N"),
]

EXPECTED_PROPERTIES = {
    "test_within": [
        *FIGURES,
        ("memguard.baseline.status", "regressed"),
        ("memguard.baseline.changes", CHANGES),
        ("memguard.budget.peak", "N"),
        ("memguard.budget.allocations", "N"),
    ],
    "test_over": [
        *FIGURES,
        ("memguard.baseline.status", "new"),
        ("memguard.budget.peak", "N"),
    ],
    "test_plain": [*FIGURES, ("memguard.baseline.status", "ok")],
    "test_skipped": [],
    "test_case": [*FIGURES, ("memguard.baseline.status", "ok")],
}

EXPECTED_SUMMARY = [
    "memguard: top N tests by peak memory",
    "peak heap_peak retained allocations test",
    "SIZE SIZE SIZE N test_mod.py::test_within",
    "SIZE SIZE SIZE N test_mod.py::test_over",
    "SIZE SIZE SIZE N test_mod.py::TestCase::test_case",
    "SIZE SIZE SIZE N test_mod.py::test_plain",
    "memguard: baselines",
    "N regressed beyond tolerance (failed):",
    "test_mod.py::test_within",
]

EXPECTED_FAILURES = {
    "test_within": [
        "memory regressed beyond the baseline:",
        "allocations: baseline N, now N (N%; tolerance N%N)",
        "heap_peak: baseline SIZE, now SIZE (N%; tolerance N%SIZE)",
        "(if this is intended, record it: pytest --mem-baseline=update, "
        "and commit the __memguard__ files)",
        "Where one more call of the test allocates (every allocation traced):",
        # Its rows: the test's own line first; the rest (pytest's) vary by version.
        "SIZE N blocks test_mod.py:N in <listcomp>"
        if sys.version_info < (3, 12)
        else "SIZE N blocks test_mod.py:N in test_within",
    ],
    "test_over": [
        "peak SIZE exceeds mem_budget SIZE by SIZE",
        "measured: peak SIZE, heap_peak SIZE, retained SIZE, rss SIZE, allocations N, fds N",
        "Top allocation sites (allocated during the test; sampled, estimated):",
        "SIZE N block test_mod.py:N in test_over",
    ],
}


def failure_lines(text: str) -> list[str]:
    """A failure's explanation, normalised. The note on which of the two peaks is larger comes
    and goes with the kernel's mark, and a site's caller is a path into pytest: both left out."""
    lines = [normal(line.partition("  <- ")[0]) for line in text.splitlines()]
    return [line for line in lines if not line.startswith("(peak is the larger")]


def memguard_lines(stdout: str) -> list[str]:
    """The plugin's terminal summary: its sections, up to pytest's short summary."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "memguard: top" in line)
    end = next(i for i, line in enumerate(lines) if "short test summary info" in line)
    return [normal(line.strip("= -")) for line in lines[start:end] if line.strip()]


@linux_only
def test_report_properties_summary_and_baseline_are_pinned(
    pytester: pytest.Pytester, run: Runner
) -> None:
    from pytest_memguard.measurement import load_backend

    if not load_backend().counts_calls:
        pytest.skip("the allocator hook is not built here")
    pytester.makepyfile(test_mod=SUITE)
    # A fixed hash seed, as the docs advise: on 3.13+ a count regression under a random one
    # carries a line that says so.
    recorded = run("--mem-baseline=update", env={"PYTHONHASHSEED": "0"})
    recorded.assert_outcomes(passed=3, failed=1, skipped=1)
    text = (pytester.path / "__memguard__" / "test_mod.json").read_text()
    assert "\n".join(normal(line) for line in text.splitlines()) == EXPECTED_BASELINE

    checked = run(
        "--mem-report=report.json",
        "--junitxml=junit.xml",
        env={"MEMGUARD_TEST_SIZE": "30000", "PYTHONHASHSEED": "0"},
    )
    checked.assert_outcomes(passed=2, failed=2, skipped=1)
    report = json.loads((pytester.path / "report.json").read_text())
    assert shape(report) == EXPECTED_REPORT

    cases = ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    properties = {
        case.get("name"): [
            (p.get("name"), normal(p.get("value", ""))) for p in case.iter("property")
        ]
        for case in cases
    }
    assert properties == EXPECTED_PROPERTIES
    failures = {
        case.get("name"): failure_lines(failure.text or "")
        for case in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
        for failure in case.iter("failure")
    }
    # The regression's site rows after the first are pytest's own frames: not pinned.
    within = len(EXPECTED_FAILURES["test_within"])
    assert {**failures, "test_within": failures["test_within"][:within]} == EXPECTED_FAILURES

    assert memguard_lines(checked.stdout.str()) == EXPECTED_SUMMARY


EXPECTED_FALLBACK_BASELINE = """{
"version": N,
"scopes": {
"cpython-N": {
"TestCase::test_case": {"heap_peak": N, "peak": N, "retained": N},
"test_plain": {"heap_peak": N, "peak": N, "retained": N},
"test_within": {"heap_peak": N, "peak": N, "retained": N}
}
}
}"""


@linux_only
def test_the_plugin_end_to_end_on_the_tracemalloc_fallback(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """What a user without a compiler gets: the same gates on heap figures, an allocations
    budget that says it cannot be checked, and sites that say they are the live ones."""
    pytester.makepyfile(test_mod=SUITE)
    fallback = {"MEMGUARD_FORCE_TRACEMALLOC": "1"}
    recorded = run("--mem-baseline=update", "-W", "default", env=fallback)
    recorded.assert_outcomes(passed=3, failed=1, skipped=1)
    recorded.stdout.fnmatch_lines(
        [
            "memguard *heap = tracemalloc (fallback: allocator hook unavailable)*",
            "*MemguardWarning: mem_budget allocations on test_mod.py::test_within cannot be "
            "checked: allocation counts need the allocator hook*",
        ]
    )
    text = (pytester.path / "__memguard__" / "test_mod.json").read_text()
    assert "\n".join(normal(line) for line in text.splitlines()) == EXPECTED_FALLBACK_BASELINE

    checked = run("--junitxml=junit.xml", env={**fallback, "MEMGUARD_TEST_SIZE": "30000"})
    checked.assert_outcomes(passed=2, failed=2, skipped=1)
    failures = {
        case.get("name"): failure_lines(failure.text or "")
        for case in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
        for failure in case.iter("failure")
    }
    assert failures["test_within"] == [
        "memory regressed beyond the baseline:",
        "heap_peak: baseline SIZE, now SIZE (N%; tolerance N%SIZE)",
        "(if this is intended, record it: pytest --mem-baseline=update, "
        "and commit the __memguard__ files)",
    ]
    # No allocation count to show, and the big block was freed before the end: tracemalloc
    # cannot show where it came from, and the heading says which blocks it does show.
    assert failures["test_over"][:3] == [
        "peak SIZE exceeds mem_budget SIZE by SIZE",
        "measured: peak SIZE, heap_peak SIZE, retained SIZE, rss SIZE, fds N",
        "Top allocation sites (still alive at the end; sampled, estimated):",
    ]


# What a free-threaded build (3.13t and later) reports of itself; no such interpreter is
# installed here, so the inner run's start-up says so for it.
FREE_THREADED_SITE = """
import sysconfig

_get_config_var = sysconfig.get_config_var


def get_config_var(name):
    return 1 if name == "Py_GIL_DISABLED" else _get_config_var(name)


sysconfig.get_config_var = get_config_var
"""


@linux_only
def test_a_free_threaded_build_says_so_and_gates_on_tracemalloc_figures(
    pytester: pytest.Pytester, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook is not used without the GIL: the header says why, the same gates hold on
    tracemalloc's figures, and baselines go to a scope of their own (objects are laid out
    differently there, so the default build's figures would not compare)."""
    # The inner run's reason for the fallback is the build, even where the suite runs forced.
    monkeypatch.delenv("MEMGUARD_FORCE_TRACEMALLOC", raising=False)
    pytester.makepyfile(test_mod=SUITE, sitecustomize=FREE_THREADED_SITE)
    recorded = run("--mem-baseline=update", "-W", "default")
    recorded.assert_outcomes(passed=3, failed=1, skipped=1)
    recorded.stdout.fnmatch_lines(
        [
            "memguard *heap = tracemalloc (fallback: allocator hook unavailable) - "
            "free-threaded build: the allocator hook needs the GIL; *",
            "*MemguardWarning: mem_budget allocations on test_mod.py::test_within cannot be "
            "checked: allocation counts need the allocator hook*",
        ]
    )
    scopes = json.loads((pytester.path / "__memguard__" / "test_mod.json").read_text())["scopes"]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert list(scopes) == [f"cpython-{version}t"]
    assert sorted(scopes[f"cpython-{version}t"]) == [
        "TestCase::test_case",
        "test_plain",
        "test_within",
    ]

    grown = run(env={"MEMGUARD_TEST_SIZE": "30000"})
    grown.assert_outcomes(passed=2, failed=2, skipped=1)
    grown.stdout.fnmatch_lines(
        [
            "FAILED test_mod.py::test_within - Failed: memory regressed beyond the baseline:*",
            "FAILED test_mod.py::test_over - Failed: peak * exceeds mem_budget *",
        ]
    )
