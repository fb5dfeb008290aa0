"""Signs that a window paid a first use: work whichever test comes first pays, and whose
cost says what ran before the test, not what the test costs.

A meter reads three: modules imported (the interpreter's table of them grew, ``MODULES``), a
regular expression compiled (``newest_pattern``), and a file read for the first time in the
process (``FileReads``). The last is the data a library loads once and keeps: arrow's first
test to build a pytz zone reads the zone's file (42,186 calls recorded against 3,843 once
warm), parso loads its grammars, ``mimetypes`` reads the system's ``/etc/mime.types``
(jsonschema's CLI tests), a traceback's first formatting of a module fills ``linecache``. None
of these imports or compiles anything.

Files are seen through the ``open`` audit event (every ``open()``, ``os.open``, ``io`` file).
An audit hook cannot be removed, so the plugin alone asks, once per process, and the heap
backend's own hook passes the event on (``HeapBackend.watch_opens``): the C extension's, for
this event only, with the calling thread's allocations left out of every window, so that a
first read changes no figure of the test's; on the tracemalloc fallback, the Python hook that
already watches process starts (its bookkeeping is counted there). A second Python hook would
be called for every audit event, and some are frequent: 1.1 million ``builtins.id`` in a leak
check of toolz made it 1.11x slower.

Only files opened read-only and last modified before the watch began count: a test's
temporary files, and files earlier tests wrote, are new in every run and read again in each;
counting them would only buy warm calls that change nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# The interpreter's own table of modules (the one its C side imports into). A test may rebind
# ``sys.modules`` for its call (structlog's test_no_multiprocessing sets it to ``{}``): what a
# window imported is read from this one, and the plugin imports through it (``real_modules``).
MODULES = sys.modules


def modules_loaded() -> int:
    """How many modules the interpreter holds; more after a window means it imported some."""
    return len(MODULES)


@contextmanager
def real_modules() -> Iterator[None]:
    """``sys.modules`` is the interpreter's own in the block, as the plugin's imports after a
    test's call need (its lazy ones, and the warm call's): with the ``{}`` a test put there,
    importlib fails with a KeyError on the plugin's own package."""
    current = sys.modules
    if current is MODULES:
        yield
        return
    sys.modules = MODULES
    try:
        yield
    finally:
        sys.modules = current


def newest_pattern() -> object:
    """The key ``re`` cached last, or None. Another one after a window means the window
    compiled a pattern (from 3.12 also: it used one from the older part of ``re``'s two-level
    cache, which moves it to the end; a warm call more, nothing wrong)."""
    cache = getattr(MODULES.get("re"), "_cache", None)
    if not isinstance(cache, dict) or not cache:
        return None
    try:
        return next(reversed(cache))
    except (StopIteration, RuntimeError):  # another thread changed it meanwhile
        return None


# The watcher runs inside the test's own open(), so it calls the functions captured here, never
# the module's attributes, which a test may have patched: ``mock.patch("os.stat")`` would
# count the watcher's calls as the code's.
_fspath, _fsencode, _fsdecode, _stat = os.fspath, os.fsencode, os.fsdecode, os.stat
_getcwd, _getcwdb, _isabs, _join = os.getcwd, os.getcwdb, os.path.isabs, os.path.join


class FileReads:
    """Counts files read for the first time since ``watch``."""

    def __init__(self) -> None:
        self.count = 0
        self._seen: set[str | bytes] = set()
        self._since = 0.0

    def watch(self, watch_opens: Callable[[Callable[..., None]], None]) -> None:
        """From now on ``count`` grows with each first read; ``watch_opens`` hands ``opened``
        to an audit hook (``HeapBackend.watch_opens``)."""
        self._since = time.time()
        watch_opens(self.opened)

    def opened(self, path: object, mode: object, flags: object) -> None:
        """An ``open`` audit event's arguments."""
        if not isinstance(flags, int):
            return
        if flags & (os.O_ACCMODE | os.O_CREAT | os.O_TRUNC) != os.O_RDONLY:
            return
        if isinstance(path, os.PathLike):
            path = _fspath(path)
        # The key is a new object: the test's own, kept in the set, would count as retained.
        if isinstance(path, str):
            if not _isabs(path):
                path = _join(_getcwd(), path)
            key: str | bytes = _fsencode(path)
        elif isinstance(path, bytes):
            if not _isabs(path):
                path = _join(_getcwdb(), path)
            key = _fsdecode(path)
        else:
            return  # a file descriptor
        if key in self._seen:
            return
        try:
            modified = _stat(path).st_mtime
        except (OSError, ValueError):
            return
        # Only files older than the watch are kept: a leak check's runs each make new
        # temporary files, and a set of their names would grow run after run.
        if modified < self._since:
            self._seen.add(key)
            self.count += 1
