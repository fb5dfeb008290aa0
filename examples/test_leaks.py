"""Leak checks: the same test body run many times; growth per call fails it."""

from __future__ import annotations

import json
import logging

import pytest

SEEN: list[dict[str, object]] = []


@pytest.mark.mem_leak_check
def test_json_round_trip_is_clean() -> None:
    assert json.loads(json.dumps({"a": [1, 2, 3]})) == {"a": [1, 2, 3]}


@pytest.mark.mem_leak_check
def test_audit_log_leaks_one_record_per_call() -> None:
    record = {"event": "login", "user": "alice"}
    SEEN.append(record)  # the leak: a module-level list nobody trims
    logging.getLogger("audit").debug("%s", record)
