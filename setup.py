"""Build the optional allocator-hook extension.

The extension is ``optional``: when no compiler is available (or the platform refuses it) the
install still succeeds and pytest-memguard falls back to tracemalloc, saying so in its report
header. Free-threaded builds are refused at import time by the module itself.
"""

from __future__ import annotations

import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pytest_memguard._allochook",
            sources=["pytest_memguard/csrc/allochook.c"],
            depends=sorted(glob.glob("pytest_memguard/csrc/*.h")),
            optional=True,
            extra_compile_args=["-O2"] if __import__("os").name != "nt" else [],
        )
    ]
)
