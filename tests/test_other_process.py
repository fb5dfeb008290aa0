"""Another process's memory: usage, the peak over a block, a soak driven by the test's loop."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_memguard.other_process import ProcessGone, WatchedProcess, watch
from pytest_memguard.platforms import IS_LINUX

from .conftest import Runner

CHILD = Path(__file__).with_name("memory_child.py")
MiB = 2**20
linux_only = pytest.mark.skipif(not IS_LINUX, reason="exact peaks of another process need /proc")


class Server:
    """The child, driven a command at a time."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, command: str) -> str:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        self.send("quit")
        self.process.wait(10)
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        self.process.stdout.close()


@pytest.fixture
def server() -> Iterator[Server]:
    child = Server()
    assert child.send("drop") == "ok"  # started and answering
    yield child
    child.close()


def test_usage_sees_what_the_other_process_holds(server: Server) -> None:
    watched = watch(server.process)
    before = watched.usage()
    assert server.send(f"hold {32 * MiB}") == "ok"
    after = watched.usage()
    assert before.private is not None
    assert after.private is not None
    assert 30 * MiB <= after.private - before.private <= 40 * MiB
    assert after.physical is not None
    assert after.physical >= after.private
    assert "private" in after.pretty()


@linux_only
def test_peak_over_a_block_sees_a_spike_that_was_freed(server: Server) -> None:
    server.send(f"hold {8 * MiB}")
    watched = watch(server.process.pid)
    with watched.peak() as reading:
        assert server.send(f"spike {48 * MiB}") == "ok"
    assert reading.method == "clear_refs"
    assert reading.peak is not None
    assert reading.start is not None
    assert 46 * MiB <= reading.peak - reading.start <= 60 * MiB
    # The limit is on the peak itself (the process's own ~10 MiB included), not on its growth.
    exceeded = r"process \d+: peak .* exceeds 40.0 MiB by .* \(clear_refs\)"
    with pytest.raises(AssertionError, match=exceeded), watched.peak(limit="40MB"):
        server.send(f"spike {48 * MiB}")
    with watched.peak(limit="40MB") as quiet:
        server.send("drop")
    assert quiet.peak is not None


def test_a_soak_fails_a_process_that_keeps_growing(server: Server) -> None:
    watched = watch(server.process)

    def leak_through_a_soak() -> None:
        for _ in watched.soak(200, samples=20):
            server.send(f"hold {64 * 1024}")

    with pytest.raises(AssertionError) as failure:
        leak_through_a_soak()
    text = str(failure.value)
    assert text.startswith(f"memory of process {server.process.pid} kept growing")
    assert re.search(r"\+6[345]\.\d KiB per iteration", text), text


def test_a_soak_passes_a_process_that_frees_what_it_uses(server: Server) -> None:
    watched = watch(server.process)
    for _ in watched.soak(200, samples=20):
        server.send(f"spike {64 * 1024}")


def test_children_add_the_processes_it_started(server: Server) -> None:
    reply = server.send(f"spawn {24 * MiB}")
    assert reply.startswith("ok ")
    alone = watch(server.process).usage()
    group = watch(server.process, children=True)
    assert int(reply.split()[1]) in group.pids()
    together = group.usage()
    assert alone.private is not None
    assert together.private is not None
    assert together.private - alone.private >= 22 * MiB


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        (True, TypeError, "expected a pid or a process"),
        (0, ValueError, "a pid is a positive number"),
        ("1234", TypeError, "expected a pid, a subprocess.Popen"),
    ],
)
def test_bad_targets_are_named(target: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        watch(target)


def test_a_process_that_is_gone_is_said_to_be() -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    with pytest.raises(ProcessGone, match=f"no process with pid {finished.pid}"):
        WatchedProcess(finished.pid)


def test_a_target_that_exits_mid_soak_is_a_clear_error_not_a_hang() -> None:
    server = Server()
    assert server.send("drop") == "ok"
    watched = watch(server.process)
    pid = server.process.pid
    assert server.process.stdin is not None
    stdin = server.process.stdin

    def soak_while_the_server_quits() -> None:
        for i in watched.soak(200, samples=20):
            if i == 50:  # the server goes away in the middle of the soak
                stdin.write("quit\n")
                stdin.flush()
                server.process.wait(10)

    with pytest.raises(ProcessGone, match=f"process {pid} has exited"):
        soak_while_the_server_quits()
    server.process.stdin.close()
    assert server.process.stdout is not None
    server.process.stdout.close()


def test_the_fixture_watches_a_server_from_a_test(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(
        test_server=f"""
        import subprocess
        import sys

        CHILD = {str(CHILD)!r}


        def test_server_stays_flat(memguard):
            server = subprocess.Popen(
                [sys.executable, CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            try:
                watched = memguard.process(server)
                for _ in watched.soak(100, samples=10):
                    server.stdin.write("hold 65536\\n")
                    server.stdin.flush()
                    server.stdout.readline()
            finally:
                server.kill()
                server.wait()
                server.stdin.close()
                server.stdout.close()
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*memory of process * kept growing through a soak of 100 *"])
    assert os.getpid() > 0


def _fork_worker(data: list[str], touch: bool) -> tuple[int, int, int]:
    """A forked worker that walks ``data`` (touching every object's reference count) or not,
    says it is ready, and waits to be told to exit: (pid, its read end, our write end)."""
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads alive (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            if touch:
                for item in data:
                    len(item)
            os.write(ready_write, b"r")
            os.read(go_read, 1)
        finally:
            os._exit(0)
    os.close(ready_write)
    os.close(go_read)
    return pid, ready_read, go_write


@linux_only
def test_a_forked_worker_that_touches_shared_objects_stops_sharing_them() -> None:
    """Copy-on-write: a worker that only reads Python objects still writes their reference
    counts, and every page it writes becomes its own (its USS grows by the data's size)."""
    data = [f"{n:032d}" for n in range(300_000)]  # ~25 MiB of str objects, made before fork
    workers = {touch: _fork_worker(data, touch) for touch in (False, True)}
    try:
        private = {}
        for touch, (pid, ready, _) in workers.items():
            assert os.read(ready, 1) == b"r"
            private[touch] = watch(pid).usage().private
    finally:
        for pid, ready, go in workers.values():
            os.write(go, b"q")
            os.waitpid(pid, 0)
            os.close(ready)
            os.close(go)
    idle, walked = private[False], private[True]
    assert idle is not None
    assert walked is not None
    assert walked - idle >= 15 * MiB
    assert idle <= 12 * MiB


def test_where_the_peak_cannot_be_reset_it_is_sampled_and_says_so(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(WatchedProcess, "_reset_peak", lambda self: False)
    watched = watch(server.process)
    with watched.peak() as reading:
        server.send(f"hold {32 * MiB}")
        time.sleep(0.05)  # held for 50 samples: a sampler can miss only a spike shorter than 1
        server.send("drop")
    assert reading.method == "sampled every 1 ms (no clear_refs)"
    assert reading.peak is not None
    assert reading.start is not None
    assert 30 * MiB <= reading.peak - reading.start <= 40 * MiB
