from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import pytest

pytest_plugins = ["pytester"]

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


@pytest.fixture
def run(pytester: pytest.Pytester) -> Runner:
    """Run an inner pytest session in a subprocess: the allocator hook, the kernel peak and
    tracemalloc are process-wide, so the inner session must not share ours."""

    def runner(*args: str, env: dict[str, str] | None = None) -> pytest.RunResult:
        old = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)
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
