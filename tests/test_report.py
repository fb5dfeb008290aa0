"""What the controller makes of a test's reports, and the summary table: pure logic."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_memguard.report import TestRecord, report_json, summary_table

MEASURED = [
    ("memguard.peak", 4096),
    ("memguard.heap_peak", 2048),
    ("memguard.allocations", 12),
    ("memguard.fds", 0),
    ("memguard.baseline.status", "ok"),
    ("memguard.budget.peak", 8192),
    ("someone_else", "kept, not ours"),
]


def passed(nodeid: str, properties: list[Any] = MEASURED) -> TestRecord:
    record = TestRecord(nodeid)
    record.absorb("teardown", "passed", properties)
    return record


def test_teardown_properties_become_metrics_and_extras() -> None:
    record = passed("t.py::test_a")
    assert record.measured
    assert record.metrics == {"peak": 4096, "heap_peak": 2048, "allocations": 12, "fds": 0}
    assert record.extra == {"baseline.status": "ok", "budget.peak": 8192}
    assert record.get("peak") == 4096
    assert record.get("baseline.status") == "ok"
    assert record.get("retained") is None
    assert record.fully_passed


def test_a_record_without_our_metrics_is_not_measured() -> None:
    record = passed("t.py::test_a", [("someone_else", 1)])
    assert not record.measured
    assert record.metrics == {}


def test_properties_that_are_not_pairs_are_skipped_not_fatal() -> None:
    junk: list[Any] = [("memguard.peak", 1), ("no value",), ([], "unhashable"), "text"]
    record = passed("t.py::test_a", junk)
    assert record.metrics == {"peak": 1}


@pytest.mark.parametrize(
    ("reports", "outcome"),
    [
        ([("setup", "failed")], "error"),
        ([("setup", "skipped")], "skipped"),
        ([("call", "failed")], "failed"),
        ([("call", "skipped")], "skipped"),  # pytest.skip inside, or xfail
        ([("teardown", "failed")], "error"),
        ([("call", "failed"), ("teardown", "failed")], "error"),
        ([("call", "skipped"), ("teardown", "failed")], "error"),
    ],
)
def test_outcome_of_the_phases(reports: list[tuple[str, str]], outcome: str) -> None:
    record = TestRecord("t.py::test_a")
    for when, result in reports:
        record.absorb(when, result)
    assert record.outcome == outcome
    assert not record.fully_passed


def test_fully_passed_needs_the_teardown_report() -> None:
    record = TestRecord("t.py::test_a")
    assert not record.fully_passed  # cut short: no teardown report came
    record.absorb("teardown", "passed", MEASURED)
    assert record.fully_passed


def test_summary_table_lists_the_largest_peaks_first_ties_by_name() -> None:
    records = [
        passed("t.py::test_small", [("memguard.peak", 1024)]),
        passed("t.py::test_b_big", [("memguard.peak", 2 * 2**20), ("memguard.allocations", 5)]),
        passed("t.py::test_a_big", [("memguard.peak", 2 * 2**20)]),
        passed("t.py::test_unmeasured", []),
    ]
    tests = [(r.nodeid, r.properties) for r in records]
    lines = summary_table(tests, top=2)
    assert len(lines) == 3
    assert lines[1].endswith("t.py::test_a_big")
    assert lines[2].endswith("t.py::test_b_big")
    assert "2.0 MiB" in lines[2]
    # Columns no listed test measured (heap_peak, retained) are left out.
    assert lines[0].split() == ["peak", "allocations", "test"]
    assert lines[1].split() == ["2.0", "MiB", "n/a", "t.py::test_a_big"]
    assert lines[2].split() == ["2.0", "MiB", "5", "t.py::test_b_big"]
    assert summary_table(tests[:1], top=5)[0].split() == ["peak", "test"]
    assert summary_table(tests, top=0) == []
    assert summary_table(tests[3:], top=5) == []


def test_report_json_splits_budget_baseline_and_other_details() -> None:
    records = [passed("t.py::test_a", [*MEASURED, ("memguard.leak.calls", 3)])]
    records[0].absorb("call", "failed")
    document = json.loads(report_json("cpython-3.11", "header", records))
    (test,) = document["tests"]
    assert test["outcome"] == "failed"
    assert test["metrics"]["peak"] == 4096
    assert test["metrics"]["retained"] is None
    assert test["budget"] == {"peak": 8192}
    assert test["baseline"] == {"status": "ok"}
    assert test["details"] == {"leak.calls": 3}


def test_github_output_is_escaped() -> None:
    """Node ids carry ``::``, ``,``, ``|`` and backticks: none may cut an annotation's
    properties or a summary table's cells."""
    from pytest_memguard.github import github_annotations, step_summary_markdown

    nodeid = "tests/t.py::test_x[a,b|`c`]"
    record = TestRecord(
        nodeid,
        {"memguard.baseline.status": "regressed", "memguard.baseline.changes": "50%\nmore"},
    )
    [line] = github_annotations([record])
    command, _, message = line.partition("::")[2].partition("::")
    assert command == (
        "error file=tests/t.py,title=memory regression tests/t.py%3A%3Atest_x[a%2Cb|`c`]"
    )
    assert message == "50%25%0Amore"
    table_rows = [r for r in step_summary_markdown([record], {}, 0).splitlines() if "test_x" in r]
    assert table_rows == ["| ``tests/t.py::test_x[a,b\\|`c`]`` | 50% more |"]
