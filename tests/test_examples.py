"""The bundled examples behave as the README says: what fails, fails on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import Runner
from .test_plugin_budget import outcomes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "test_parse_fits_in_its_budget": "PASSED",
    "test_report_doubled_its_peak": "FAILED",
    "test_handler_keeps_every_request": "FAILED",
    "test_allocation_budget_is_deterministic": "PASSED",
    "test_json_round_trip_is_clean": "PASSED",
    "test_audit_log_leaks_one_record_per_call": "FAILED",
}


def test_examples_pass_and_fail_as_documented(pytester: pytest.Pytester, run: Runner) -> None:
    for path in EXAMPLES.glob("*.py"):
        shutil.copy(path, pytester.path / path.name)
    result = run("-rA")
    seen = outcomes(result)
    for name, outcome in EXPECTED.items():
        assert seen.get(name) == outcome, f"{name}: {seen.get(name)}\n{result.stdout.str()}"
    others = {n: o for n, o in seen.items() if n not in EXPECTED}
    assert len(others) == 7
    assert set(others.values()) == {"PASSED"}
    result.stdout.fnmatch_lines(
        [
            "*peak * exceeds mem_budget 16.0 MiB by *",
            "*retained * exceeds mem_budget 1.0 MiB by *",
            "*memory leaks: blocks*",
            "*memguard: top 5 tests by peak memory*",
        ]
    )
