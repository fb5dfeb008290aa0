"""Budgets: one passes, one fails, and the failure says where the memory went."""

from __future__ import annotations

import pytest

MiB = 2**20


@pytest.mark.mem_budget("50MB")
def test_parse_fits_in_its_budget() -> None:
    rows = [bytes(1024) for _ in range(20_000)]  # ~20 MiB
    assert len(rows) == 20_000


@pytest.mark.mem_budget("16MB")
def test_report_doubled_its_peak() -> None:
    # A refactor kept two copies of the data alive at once: the peak doubled.
    rows = [bytes(1024) for _ in range(12_000)]  # ~12 MiB
    copy = [bytearray(r) for r in rows]  # ...and a second copy alive at the same time
    assert len(copy) == len(rows)


CACHE: list[bytes] = []


@pytest.mark.mem_budget(retained="1MB")
def test_handler_keeps_every_request() -> None:
    for _ in range(2_000):
        CACHE.append(bytes(1024))  # forgotten debugging aid: never cleared


@pytest.mark.mem_budget(allocations=50_000)
def test_allocation_budget_is_deterministic() -> None:
    assert sum(int(str(i)) for i in range(10_000)) > 0
