"""The retransmission-buffer bug in a server written in C, tested from Python as such servers
are: the test drives the server and watches the server's memory, not its own.

The test builds the server with the system's C compiler (skipped with the reason where there is
none), sends it packets with a 16-bit sequence number that starts next to the wrap, and soaks
the server's private memory. The server as shipped stops pruning once the sequence number wraps
and keeps every packet after it (fails on purpose); the fixed one stays flat."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_memguard.plugin import MemguardFixture

SOURCE = Path(__file__).with_name("rtp_server.c")


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler (cc, gcc or clang): the C server example needs one")
    directory = tmp_path_factory.mktemp("rtp_server")
    built = {}
    for name, flags in (("shipped", []), ("fixed", ["-DFIXED"])):
        binary = directory / name
        subprocess.run([compiler, "-O2", *flags, "-o", str(binary), str(SOURCE)], check=True)
        built[name] = binary
    return built


@pytest.fixture
def server(
    request: pytest.FixtureRequest, builds: dict[str, Path]
) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [str(builds[request.param])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield process
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.close()
    process.wait(10)
    process.stdout.close()


def send(server: subprocess.Popen[str], seq: int, size: int = 1024) -> None:
    assert server.stdin is not None
    assert server.stdout is not None
    server.stdin.write(f"{seq} {size}\n")
    server.stdin.flush()
    assert server.stdout.readline() == "ok\n"


@pytest.mark.parametrize("server", ["fixed"], indirect=True)
def test_fixed_server_prunes_across_the_wrap(
    memguard: MemguardFixture, server: subprocess.Popen[str]
) -> None:
    watched = memguard.process(server)
    seq = memguard.counter(16)  # starts 100 packets before 65535 wraps to 0
    for _ in watched.soak(20_000):
        send(server, next(seq))


@pytest.mark.parametrize("server", ["shipped"], indirect=True)
def test_shipped_server_keeps_every_packet_after_the_wrap(
    memguard: MemguardFixture, server: subprocess.Popen[str]
) -> None:
    watched = memguard.process(server)
    seq = memguard.counter(16)
    for _ in watched.soak(20_000):  # fails on purpose: ~1 KiB a packet, kept forever
        send(server, next(seq))
