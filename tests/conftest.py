from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import pytest

from pytest_memguard.heap import ExtBackend
from pytest_memguard.measurement import get_engine
from pytest_memguard.platforms import IS_LINUX

pytest_plugins = ["pytester"]

# The suite runs end to end on each measurement path (docs/configuration.md): the allocator
# hook, the tracemalloc fallback (MEMGUARD_FORCE_TRACEMALLOC=1, or no compiler) and the path
# other platforms take (MEMGUARD_FORCE_PORTABLE=1). Inner runs inherit the environment, so a
# test asserts what its path gives; what only the hook can give is marked.
HOOK = isinstance(get_engine().heap, ExtBackend)
needs_hook = pytest.mark.skipif(
    not HOOK, reason="what only the allocator hook gives (call counts, freed blocks, pausing)"
)
# Before 3.12 tracemalloc cannot find the traceback of an instance of a Python class (its
# attributes sit in front of the object), so the fallback's census and reference paths miss them.
traces_instances = pytest.mark.skipif(
    not HOOK and sys.version_info < (3, 12),
    reason="tracemalloc before 3.12 cannot tell which class instances it traced",
)
# The kernel's exact high-water mark (Linux's clear_refs); elsewhere the peak is sampled.
needs_kernel_peak = pytest.mark.skipif(not IS_LINUX, reason="the kernel's exact peak (Linux)")

HAS_XDIST = True
try:
    import xdist  # noqa: F401
except ImportError:  # pragma: no cover
    HAS_XDIST = False

Runner = Callable[..., pytest.RunResult]

# CPython 3.8-3.10 give a code object its opcache (two blocks) on its 1,024th call; release
# builds only: debug builds turn it off because it confuses refleak hunting (bpo-37146). A test
# repeated through pytest's protocol reaches that call in one function after another for ~250
# runs, so on 3.10 clean tests take more runs and can read as slow leaks (docs/leaks.md). The
# tests that pin those figures are expected to fail there, strictly: they report if it changes.
_OPCACHE = "3.10: code objects get their opcache on their 1,024th call (docs/leaks.md)"
OPCACHE_310 = pytest.mark.xfail(sys.version_info < (3, 11), strict=True, reason=_OPCACHE)
# The same, where whether a function reaches its 1,024th call inside the check depends on what
# ran before it in the worker (passed in one full run on 3.10, failed serially).
OPCACHE_310_AT_TIMES = pytest.mark.xfail(sys.version_info < (3, 11), strict=False, reason=_OPCACHE)


@pytest.fixture(
    params=[
        pytest.param((), id="serial"),
        pytest.param(
            ("-n", "2"),
            id="xdist",
            marks=pytest.mark.skipif(not HAS_XDIST, reason="pytest-xdist not installed"),
        ),
    ]
)
def plugin_args(request: pytest.FixtureRequest) -> Sequence[str]:
    """Run a plugin test once in one process and once under ``-n 2`` (syrupy's pattern)."""
    return tuple(request.param)


# An inner session's limit. The fallback's leak checks explain each leak from tracemalloc's
# records, which trace the census's own work too: the leak corpus, 11 leaks explained, takes
# 250 s alone on 3.11 and 284 s on 3.14.10 there, and went over 300 s in a full run on 2 cores.
INNER_TIMEOUT = 300 if HOOK else 900


@pytest.fixture
def run(pytester: pytest.Pytester) -> Runner:
    """Run an inner pytest session in a subprocess: the allocator hook, the kernel peak and
    tracemalloc are process-wide, so the inner session must not share ours."""

    def runner(*args: str, env: dict[str, str] | None = None) -> pytest.RunResult:
        old = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            return pytester.runpytest_subprocess(
                "-p", "no:cacheprovider", *args, timeout=INNER_TIMEOUT
            )
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    return runner


MiB = 2**20


def python() -> str:
    return sys.executable
