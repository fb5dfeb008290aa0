"""Run one test in a fresh child process and bring its reports back.

A test's numbers should not depend on which tests ran before it: allocator arenas, warmed
caches and lazily imported modules left behind by a sibling change what the next test
allocates. A forked child starts from the state the session had after collection, every time.
The parent freezes the garbage collector's objects before forking so that a collection in the
child does not write to (and so copy) every inherited page (FIELD-NOTES: 0.4 MB of private
memory after fork vs 112 MB once the child touches inherited objects).
"""

from __future__ import annotations

import gc
import json
import os
import signal
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

from .leaks import InterpreterCleanup


def can_fork() -> bool:
    return hasattr(os, "fork")


def _child(item: pytest.Item, write_fd: int) -> None:
    """In the child: run the whole protocol (setup, call, teardown of every fixture it set up)
    and write the serialised reports to the pipe. Never returns."""
    status = 0
    try:
        # The parent's caches (re, typing, linecache, the type cache) hold whatever the session
        # did so far; start every child from the same clean slate.
        InterpreterCleanup()()
        gc.collect()
        reports = runtestprotocol(item, log=False, nextitem=None)
        hook = item.config.hook
        data = [hook.pytest_report_to_serializable(config=item.config, report=r) for r in reports]
        payload = json.dumps(data).encode()
        view = memoryview(payload)
        while view:
            written = os.write(write_fd, view)
            view = view[written:]
    except BaseException:  # pragma: no cover - reported by the parent as a crash
        status = 1
    finally:
        os._exit(status)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run_isolated(item: pytest.Item) -> list[pytest.TestReport]:
    read_fd, write_fd = os.pipe()
    gc.collect()
    gc.freeze()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which reports through the pipe
        os.close(read_fd)
        _child(item, write_fd)
    gc.unfreeze()
    os.close(write_fd)
    try:
        payload = _read_all(read_fd)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if payload and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        hook = item.config.hook
        return [
            hook.pytest_report_from_serializable(config=item.config, data=data)
            for data in json.loads(payload)
        ]
    return [_crash_report(item, status)]


def _crash_report(item: pytest.Item, status: int) -> pytest.TestReport:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:  # pragma: no cover
            name = str(number)
        why = f"the isolated child process was killed by signal {name}"
    else:
        why = f"the isolated child process exited with status {os.WEXITSTATUS(status)}"
    fields: dict[str, Any] = {
        "nodeid": item.nodeid,
        "location": item.location,
        "keywords": dict.fromkeys(item.keywords, 1),
        "outcome": "failed",
        "longrepr": f"{item.nodeid}: {why} before reporting (mem_isolate)",
        "when": "call",
    }
    return pytest.TestReport(**fields)
