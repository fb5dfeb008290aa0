"""Which way this process reads the operating system: Linux's ``/proc``, or the portable path
other platforms take (psutil's figures, a peak sampled every millisecond). The C library's
features (glibc's ``malloc_trim``, ``mallinfo2``) are used wherever it has them, either way.

A leaf module, so that the measurement engine can choose its path without loading the process
probe, which a plain run on Linux never needs.
"""

from __future__ import annotations

import os
import sys

# Forces the portable path on Linux, so that it can be tested (and compared) there.
FORCE_PORTABLE_ENV = "MEMGUARD_FORCE_PORTABLE"
PORTABLE_FORCED = bool(os.environ.get(FORCE_PORTABLE_ENV))
IS_LINUX = sys.platform.startswith("linux") and not PORTABLE_FORCED
