"""The allocator hook's instructions on a slice of real work, for cachegrind.

Runs a slice of python-dateutil 4.0.0's ``test_ambiguous_and_imaginary`` (the first N zones)
twice: once to warm imports and caches, then again under the hook (``MODE=hook``) or not
(``MODE=none``); ``ONCE=1`` stops after the warm-up, so that the second slice's cost is the
difference of two runs. ``SI`` is the sampling interval in bytes (0: no sampled sites).
``DATEUTIL_TESTS`` is the suite's ``tests`` folder, as ``realsuite prepare python-dateutil``
unpacks it (its venv has this project installed). Instructions and simulated cache misses are
the same on a busy machine::

    export DATEUTIL_TESTS=~/.cache/memguard-realsuites/python-dateutil-4.0.0/src/tests
    PY=~/.cache/memguard-realsuites/python-dateutil-4.0.0/venv/bin/python
    for mode in "ONCE=1 MODE=none" "MODE=none" "MODE=hook" "MODE=hook SI=524288"; do
        env $mode valgrind --tool=cachegrind --cache-sim=yes $PY benchmarks/hook_slice.py
    done
"""

from __future__ import annotations

import gc
import os
import sys
from datetime import timedelta

sys.path.insert(0, os.path.expanduser(os.environ["DATEUTIL_TESTS"]))

import test_tzpath_data  # type: ignore[import-not-found]  # noqa: E402
from dateutil import tz  # type: ignore[import-untyped]  # noqa: E402

from pytest_memguard import _allochook  # noqa: E402

KEYS = sorted(tz.available_iana_timezones())[: int(os.environ.get("N", "40"))]


def body() -> None:
    for key in KEYS:
        zone = tz.gettz(key)
        for dt_utc in test_tzpath_data._probe_instants(zone):
            local = dt_utc.astimezone(zone).replace(tzinfo=None)
            for wall in (local - timedelta(hours=1), local, local + timedelta(hours=1)):
                dt = wall.replace(tzinfo=zone)
                tz.enfold(dt, fold=0).utcoffset()
                tz.enfold(dt, fold=1).utcoffset()
                tz.datetime_ambiguous(dt)
                tz.datetime_exists(dt)


def main() -> None:
    body()  # imports, caches
    if os.environ.get("ONCE"):
        return
    gc.collect()
    hooked = os.environ.get("MODE") == "hook"
    if hooked:
        _allochook.enable(int(os.environ.get("SI", "0")), 4)
    body()
    if hooked:
        _allochook.disable()


if __name__ == "__main__":
    main()
