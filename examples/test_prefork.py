"""A pre-fork worker pool: the parent loads a cache, then forks workers that share its pages.

A worker's garbage collector sooner or later walks every object it can reach, the parent's
cache included, and writes to each object's header as it goes: the kernel copies every page it
writes, so the worker's private memory grows by the size of the cache while its resident
memory (RSS) does not move at all. ``gc.freeze()`` in the parent before the fork moves the cache
out of the collector's reach: the worker shares it for as long as it lives.

The test reads the worker's private memory (``memguard.process``) after the worker collected
once; the first test fails on purpose (~40-49 MiB copied), the second passes (6-8 MiB: what
the worker's own collection and start-up write; CPython 3.11, Linux)."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from pytest_memguard.plugin import MemguardFixture

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="a pre-fork pool needs os.fork")

MiB = 2**20
WORKER_BUDGET = 16 * MiB


def load_cache() -> list[dict[str, object]]:
    """What a server loads before it forks: 200,000 small records."""
    return [{"id": i, "name": f"user-{i}", "tags": [i, i + 1]} for i in range(200_000)]


class Worker:
    """A forked worker that has run one full garbage collection and then waits."""

    def __init__(self) -> None:
        ready, self._done = os.pipe()
        self._ready_r, ready_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the worker
            gc.collect()  # what a long-running worker's collector does sooner or later
            os.write(ready_w, b"x")
            os.read(ready, 1)  # wait until the parent has read its memory
            os._exit(0)
        os.close(ready)
        os.close(ready_w)
        os.read(self._ready_r, 1)

    def stop(self) -> None:
        os.write(self._done, b"x")
        os.waitpid(self.pid, 0)
        os.close(self._done)
        os.close(self._ready_r)


@pytest.fixture
def worker(request: pytest.FixtureRequest) -> Iterator[Worker]:
    cache = load_cache()
    gc.collect()
    if request.param == "frozen":
        gc.freeze()  # the fix: the cache is out of every collector's reach, in the parent too
    started = Worker()
    yield started
    started.stop()
    gc.unfreeze()
    del cache


def check_worker(memguard: MemguardFixture, worker: Worker) -> None:
    usage = memguard.process(worker.pid).usage()
    assert usage.private is not None, "private memory cannot be read on this platform"
    assert usage.private < WORKER_BUDGET, (
        f"worker {worker.pid} holds {usage.private / MiB:.1f} MiB of private memory (budget "
        f"{WORKER_BUDGET / MiB:.0f} MiB): its garbage collector wrote to the shared cache's "
        f"pages and the kernel copied them (its RSS, {(usage.physical or 0) / MiB:.1f} MiB, "
        "reads the same with or without the copies)"
    )


@pytest.mark.parametrize("worker", ["frozen"], indirect=True)
def test_worker_shares_the_cache_after_gc_freeze(memguard: MemguardFixture, worker: Worker) -> None:
    check_worker(memguard, worker)


@pytest.mark.parametrize("worker", ["plain"], indirect=True)
def test_worker_copies_the_cache_when_it_collects(
    memguard: MemguardFixture, worker: Worker
) -> None:
    check_worker(memguard, worker)  # fails on purpose: ~40 MiB of the cache copied
