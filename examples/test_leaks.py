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


class Connection:
    """A resource a test must give back: a socket, a database session, a file."""

    def close(self) -> None:
        pass


_POOL: list[Connection] = []


@pytest.mark.mem_budget(no_survivors=Connection)
def test_every_connection_is_closed() -> None:
    connection = Connection()
    connection.close()


@pytest.mark.mem_budget(no_survivors=Connection)
def test_pool_keeps_a_connection_open() -> None:
    _POOL.append(Connection())  # the leak: fails at teardown, naming _POOL[0] as the holder
