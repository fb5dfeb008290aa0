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
    "test_every_connection_is_closed": "PASSED",
    "test_pool_keeps_a_connection_open": "ERROR",  # at teardown, where no_survivors is checked
    "test_worker_shares_the_cache_after_gc_freeze": "PASSED",
    "test_worker_copies_the_cache_when_it_collects": "FAILED",
}
# The C server is built with the system's compiler: skipped, with the reason, where none is.
COMPILED = {
    "test_fixed_server_prunes_across_the_wrap": "PASSED",
    "test_shipped_server_keeps_every_packet_after_the_wrap": "FAILED",
}


def test_examples_pass_and_fail_as_documented(pytester: pytest.Pytester, run: Runner) -> None:
    for path in [*EXAMPLES.glob("*.py"), *EXAMPLES.glob("*.c")]:
        shutil.copy(path, pytester.path / path.name)
    result = run("-rA")
    seen = outcomes(result)
    for name, outcome in EXPECTED.items():
        assert seen.get(name) == outcome, f"{name}: {seen.get(name)}\n{result.stdout.str()}"
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    for name, outcome in COMPILED.items():
        # A skip is summarised without the test's id: not among the outcomes.
        assert seen.get(name) == (outcome if compiler else None), result.stdout.str()
    others = {n: o for n, o in seen.items() if n not in EXPECTED and n not in COMPILED}
    assert len(others) == 7
    assert set(others.values()) == {"PASSED"}
    result.stdout.fnmatch_lines(
        [
            # [[] is fnmatch for [; errors (at teardown) come before failures
            "  test_leaks._POOL[[]0]  (test_leaks.Connection)",
            "*peak * exceeds mem_budget 16.0 MiB by *",
            "*retained * exceeds mem_budget 1.0 MiB by *",
            "  test_budgets.CACHE[[]…]  (12 of 12 bytes)",
            "*memory leaks: blocks*",
            "  test_leaks.SEEN[[]…]  (list, +1.0 entry per run)",
            "*AssertionError: worker * holds * MiB of private memory (budget 16 MiB)*",
            *(["*memory of process * kept growing through a soak of 20,000*"] if compiler else []),
            "*memguard: top 5 tests by peak memory*",
        ]
    )
