"""pytest-memguard: memory as a tested property of a code base.

The package root is the pytest-free API: measure memory from any Python code. The pytest plugin
(``pytest_memguard.plugin``) is loaded by pytest through its entry point.
"""

from __future__ import annotations

from ._version import __version__
from .measurement import AllocationCount, Measurement, count_allocations, measure
from .units import format_size, parse_size
from .usage import MemoryUsage, usage

__all__ = [
    "AllocationCount",
    "Measurement",
    "MemoryUsage",
    "__version__",
    "count_allocations",
    "format_size",
    "measure",
    "parse_size",
    "usage",
]
