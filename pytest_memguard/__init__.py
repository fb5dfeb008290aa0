"""pytest-memguard: memory as a tested property of a code base.

The package root is the pytest-free API: measure memory from any Python code. The pytest plugin
(``pytest_memguard.plugin``) is loaded by pytest through its entry point.

The names below are imported on first use (PEP 562): every pytest run imports this package,
because the plugin lives in it, and the plugin itself needs only part of what the API offers
(``process``, for one, is never loaded by a run on Linux whose windows are the extension's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # read by setuptools (pyproject.toml), without importing the package

if TYPE_CHECKING:
    from .measurement import AllocationCount, Measurement, count_allocations, measure, survivors
    from .other_process import WatchedProcess, watch
    from .process import MemoryUsage, usage
    from .retainers import Survivors
    from .units import format_size, parse_size

_HOMES = {
    "AllocationCount": "measurement",
    "Measurement": "measurement",
    "count_allocations": "measurement",
    "measure": "measurement",
    "format_size": "units",
    "parse_size": "units",
    "MemoryUsage": "process",
    "usage": "process",
    "Survivors": "retainers",
    "survivors": "measurement",
    "watch": "other_process",
    "WatchedProcess": "other_process",
}

__all__ = [
    "AllocationCount",
    "Measurement",
    "MemoryUsage",
    "Survivors",
    "WatchedProcess",
    "__version__",
    "count_allocations",
    "format_size",
    "measure",
    "parse_size",
    "survivors",
    "usage",
    "watch",
]


if not TYPE_CHECKING:  # type checkers see the imports above (and no catch-all __getattr__)

    def __getattr__(name: str) -> Any:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
        globals()[name] = value  # once: the next lookup is an ordinary global
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
