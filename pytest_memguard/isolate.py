"""Run one test in a fresh child process and bring its reports back.

A test's numbers should not depend on which tests ran before it: allocator arenas, warmed
caches, lazily imported modules and settings left behind by a sibling change what the next test
allocates. So the children are not forked from the session, which has run the tests that were
not isolated, but from a server forked before the first test ran (``ForkServer``): each starts
from the state the session had after collection, in any order and subset. The parent freezes
the garbage collector's objects before forking so that a collection in the child does not write
to (and so copy) every inherited page (FIELD-NOTES: 0.4 MB of private memory after fork vs
112 MB once the child touches inherited objects).

Where there is no fork (Windows), the child is a new ``python -m pytest`` run with the same
arguments and the one test as its only selection; it writes its serialised reports to a file
the parent reads. That child also collects and imports afresh, so its numbers are those of the
test alone, at the price of a pytest start-up per test.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, NoReturn

import pytest
from _pytest.runner import runtestprotocol

from .leaks import InterpreterCleanup
from .options import CHILD_OPTION
from .process import trim_malloc

# Forces the spawn path where fork exists, to test it (and to compare the two).
SPAWN_ENV = "MEMGUARD_ISOLATE_SPAWN"
# Flags of pytest's cache plugin, which the child runs without: with --lf, a child would
# otherwise deselect its own test after an earlier child recorded a different failure.
_CACHE_FLAGS = frozenset(
    {
        "--lf",
        "--last-failed",
        "--ff",
        "--failed-first",
        "--nf",
        "--new-first",
        "--sw",
        "--stepwise",
        "--sw-skip",
        "--stepwise-skip",
        "--lfnf",
        "--last-failed-no-failures",
        "--cache-clear",
    }
)
# How the parent chose its tests: the child is given its one test by node id, and must start
# from the same state however the parent was asked. A -k or -m expression is compiled in the
# child before its test runs, and what that leaves behind (not traced; re's cache is likely)
# moved a spawned child's count of the same test by 3 allocations on CPython 3.12.
_SELECTION_FLAGS = frozenset({"-k", "-m", "--deselect"})
# Flags whose value is the next argument unless attached (``-kEXPR``, ``--deselect=ID``).
_VALUE_FLAGS = frozenset({"-k", "-m", "--deselect", "--lfnf", "--last-failed-no-failures"})


def can_fork() -> bool:
    return hasattr(os, "fork")


def method() -> str:
    """'fork' where the platform has it, else 'spawn'."""
    return "fork" if can_fork() and not os.environ.get(SPAWN_ENV) else "spawn"


def _child(
    item: pytest.Item, write_fd: int, protocol: Callable[[], list[pytest.TestReport]] | None
) -> None:
    """In the child: run the whole protocol (setup, call, teardown of every fixture it set up;
    ``protocol`` where it is not pytest's, a leak check's) and write the serialised reports to
    the pipe. Never returns."""
    status = 0
    payload = b""
    try:
        # The parent's caches (re, typing, linecache, the type cache) hold whatever the session
        # did so far; start every child from the same clean slate.
        InterpreterCleanup()()
        gc.collect()
        # Free heap memory the parent left resident would be reused without raising the
        # child's resident set (a copy-on-write page replaces a shared one), hiding a test's
        # peak from the kernel's high-water mark: handed back first.
        trim_malloc()
        if protocol is not None:
            reports = protocol()
        else:
            reports = runtestprotocol(item, log=False, nextitem=None)
        hook = item.config.hook
        data = [hook.pytest_report_to_serializable(config=item.config, report=r) for r in reports]
        payload = json.dumps(data).encode()
    except KeyboardInterrupt:  # pragma: no cover - the parent stops its session too
        payload = json.dumps({"memguard_stop": "KeyboardInterrupt"}).encode()
    except pytest.exit.Exception as exc:  # pragma: no cover - likewise, with its reason
        payload = json.dumps(
            {"memguard_stop": "exit", "reason": exc.msg, "code": exc.returncode}
        ).encode()
    except BaseException:  # pragma: no cover - reported by the parent as a crash
        status = 1
    finally:
        try:
            view = memoryview(payload)
            while view:
                written = os.write(write_fd, view)
                view = view[written:]
        except BaseException:  # pragma: no cover
            status = 1
        os._exit(status)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _fork() -> int:
    """fork() with the session's objects frozen for the child (see the module's docstring)."""
    gc.collect()
    gc.freeze()
    with warnings.catch_warnings():
        # 3.12+ warns that a process with threads forks (an xdist worker always has one), and
        # suites run with warnings as errors. The child does not rely on other threads: it
        # runs the test (or serves), writes to its pipe and leaves through os._exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid != 0:
        gc.unfreeze()
    return pid


# What a test's child runs instead of pytest's protocol (a leak check's), given the test.
ProtocolFor = Callable[[pytest.Item], Callable[[], list[pytest.TestReport]] | None]


class ForkServer:
    """A process forked before the first test runs, which forks each isolated test's child.

    Forked from the session instead, a child inherits what the tests that ran there changed,
    which the interpreter's cleanup cannot undo: python-dateutil's ``test_gettz_weakref``
    leaves gettz's cache at 2 zones instead of 8, and an isolated ``test_every_key_loads``
    peaked at 344 KB after it and 536 KB after ``test_rrule.py``. The parent sends the test's
    index with the write end of a fresh pipe (SCM_RIGHTS); the server forks, and answers with
    the child's wait status once it has exited.
    """

    def __init__(self, items: Sequence[pytest.Item], protocol_for: ProtocolFor) -> None:
        self._index = {id(item): i for i, item in enumerate(items)}
        ours, theirs = socket.socketpair()
        pid = _fork()
        if pid == 0:  # pragma: no cover - the server: serves until the parent hangs up
            ours.close()
            _serve(theirs, items, protocol_for)
        theirs.close()
        self._pid = pid
        self._socket: socket.socket | None = ours

    def run(self, item: pytest.Item) -> tuple[bytes, int] | None:
        """The child's payload and wait status; None where the server cannot run ``item`` (not
        collected in this session, or the server is gone)."""
        index = self._index.get(id(item))
        if index is None or self._socket is None:
            return None
        read_fd, write_fd = os.pipe()
        try:
            socket.send_fds(self._socket, [str(index).encode()], [write_fd])
        except OSError:
            os.close(read_fd)
            self.close()
            return None
        finally:
            os.close(write_fd)
        try:
            payload = _read_all(read_fd)
        finally:
            os.close(read_fd)
        status = self._socket.recv(64)
        if not status:  # the server died with the child
            self.close()
            return None
        return payload, int(status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            os.waitpid(self._pid, 0)


def _serve(
    conn: socket.socket, items: Sequence[pytest.Item], protocol_for: ProtocolFor
) -> NoReturn:  # pragma: no cover - runs in the server
    try:
        # Ctrl-C reaches the whole process group: the running child reports it and the
        # session stops; the server leaves when the session closes its end.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            message, fds, _, _ = socket.recv_fds(conn, 32, 1)
            if not message:
                break
            item = items[int(message)]
            # Not _fork(): a collection here would touch, and so copy, every inherited page;
            # the objects stay frozen for the child as the session froze them.
            pid = os.fork()
            if pid == 0:
                conn.close()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                _child(item, fds[0], protocol_for(item))
            os.close(fds[0])
            _, status = os.waitpid(pid, 0)
            conn.sendall(str(status).encode())
    finally:
        os._exit(0)


def run_isolated(
    item: pytest.Item,
    protocol: Callable[[], list[pytest.TestReport]] | None = None,
    server: ForkServer | None = None,
) -> list[pytest.TestReport]:
    """Run ``item`` in a child forked by ``server``, or from this process where there is none
    (or it cannot)."""
    answer = None if server is None else server.run(item)
    if answer is None:
        answer = _run_forked(item, protocol)
    payload, status = answer
    if payload and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        reports = json.loads(payload)
        if isinstance(reports, dict):
            _stop_as_the_child_did(item, reports)
        hook = item.config.hook
        return [
            hook.pytest_report_from_serializable(config=item.config, data=data) for data in reports
        ]
    return [_crash_report(item, _died(status))]


def _run_forked(
    item: pytest.Item, protocol: Callable[[], list[pytest.TestReport]] | None
) -> tuple[bytes, int]:
    read_fd, write_fd = os.pipe()
    pid = _fork()
    if pid == 0:  # pragma: no cover - runs in the child, which reports through the pipe
        os.close(read_fd)
        _child(item, write_fd, protocol)
    os.close(write_fd)
    try:
        payload = _read_all(read_fd)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    return payload, status


def _stop_as_the_child_did(item: pytest.Item, stop: dict[str, Any]) -> None:
    """A KeyboardInterrupt or ``pytest.exit()`` in an isolated test stops the session, as it
    does without isolation (the child cannot stop its parent by itself)."""
    if stop.get("memguard_stop") == "exit":
        pytest.exit(str(stop.get("reason", "")), returncode=stop.get("code"))
    raise KeyboardInterrupt(f"in {item.nodeid} (mem_isolate)")


def child_command(config: pytest.Config, item: pytest.Item, reports: str) -> list[str]:
    """The parent's own arguments, with its test selection replaced by this one test."""
    args = child_args(map(str, config.invocation_params.args), set(map(str, config.args)))
    _, sep, rest = item.nodeid.partition("::")
    target = f"{item.path}::{rest}" if sep else str(item.path)
    command = [sys.executable, "-m", "pytest", *args, target, "-p", "no:cacheprovider"]
    if config.pluginmanager.hasplugin("xdist"):
        command += ["-n", "0"]  # one test, in this child: no workers of its own
    return [*command, f"{CHILD_OPTION}={reports}"]


def child_args(args: Iterable[str], selection: AbstractSet[str]) -> list[str]:
    """The parent's arguments without its test paths (``selection``), its selection flags and
    the cache plugin's flags, each with its value."""
    kept: list[str] = []
    value_next = False
    for arg in args:
        if value_next:
            value_next = False
            continue
        if arg in selection:
            continue
        flag = arg.split("=", 1)[0]
        attached = arg[:2] in ("-k", "-m") and len(arg) > 2  # -kEXPR
        if flag in _SELECTION_FLAGS or flag in _CACHE_FLAGS or attached:
            value_next = arg in _VALUE_FLAGS
            continue
        kept.append(arg)
    return kept


def run_spawned(item: pytest.Item, env: Mapping[str, str] | None = None) -> list[pytest.TestReport]:
    """``item`` run in a new pytest process (see ``child_command``); ``env``: variables set
    for it besides this process's."""
    config = item.config
    handle, path = tempfile.mkstemp(prefix="memguard-child-", suffix=".jsonl")
    os.close(handle)
    try:
        completed = subprocess.run(
            child_command(config, item, path),
            cwd=str(config.invocation_params.dir),
            env=None if env is None else {**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        with open(path, encoding="utf-8") as stream:
            lines = [line for line in stream if line.strip()]
    finally:
        os.unlink(path)
    hook = config.hook
    rows = [json.loads(line) for line in lines]
    for row in rows:
        if "memguard_stop" in row:
            _stop_as_the_child_did(item, row)
    reports = [hook.pytest_report_from_serializable(config=config, data=row) for row in rows]
    if any(report.when == "teardown" for report in reports):
        return reports
    # The child wrote as it went: whatever it reported before it died, then the death.
    tail = completed.stdout.decode(errors="replace").strip().splitlines()[-15:]
    why = f"the isolated child process exited with status {completed.returncode}"
    return [*reports, _crash_report(item, why, "\n".join(tail))]


class ChildReports:
    """In a spawned child: every report, serialised, one JSON line each, for the parent."""

    def __init__(self, config: pytest.Config, path: str) -> None:
        self.config = config
        self.path = path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self._write(data)

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """A KeyboardInterrupt or ``pytest.exit()`` stopped this run: the parent stops too."""
        exc = excinfo.value
        if isinstance(exc, pytest.exit.Exception):
            self._write({"memguard_stop": "exit", "reason": exc.msg, "code": exc.returncode})
        else:
            self._write({"memguard_stop": "KeyboardInterrupt"})

    def _write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(row) + "\n")


def _died(status: int) -> str:
    """What a waitpid() status says of a forked child that did not report."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:  # pragma: no cover
            name = str(number)
        return f"the isolated child process was killed by signal {name}"
    return f"the isolated child process exited with status {os.WEXITSTATUS(status)}"


def _crash_report(item: pytest.Item, why: str, output: str = "") -> pytest.TestReport:
    fields: dict[str, Any] = {
        "nodeid": item.nodeid,
        "location": item.location,
        "keywords": dict.fromkeys(item.keywords, 1),
        "outcome": "failed",
        "longrepr": f"{item.nodeid}: {why} before reporting (mem_isolate)"
        + (f"; its output ended with:\n{output}" if output else ""),
        "when": "call",
    }
    return pytest.TestReport(**fields)
