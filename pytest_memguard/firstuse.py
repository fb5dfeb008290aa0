"""Signs that a window paid a first use: work whichever test comes first pays, and whose
cost says what ran before the test, not what the test costs.

Three are read: modules imported (``sys.modules`` grew), a regular expression compiled (``re``
cached a pattern it had not), and a file read for the first time in the process. The last is
the data a library loads once and keeps: arrow's first test to build a pytz zone reads the
zone's file (42,186 calls recorded against 3,843 once warm), parso loads its grammars, a
traceback's first formatting of a module fills ``linecache``. None of these imports or
compiles anything.

Files are seen through the ``open`` audit event (every ``open()``, ``os.open``, ``io`` file),
which a hook cannot stop watching once added: it is added once per process, by the plugin,
and costs a call per audit event (about 426,000 in python-dateutil's whole suite). Only
files opened read-only and last modified before the hook was added count: a test's
temporary files, and files earlier tests wrote, are new in every run and read again in each;
counting them would only buy warm calls that change nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any


def newest_pattern() -> object:
    """The key ``re`` cached last, or None. Another one after a window means the window
    compiled a pattern (from 3.12 also: it used one from the older part of ``re``'s two-level
    cache, which moves it to the end; a warm call more, nothing wrong)."""
    cache = getattr(sys.modules.get("re"), "_cache", None)
    if not isinstance(cache, dict) or not cache:
        return None
    try:
        return next(reversed(cache))
    except (StopIteration, RuntimeError):  # another thread changed it meanwhile
        return None


class FileReads:
    """Counts files read for the first time since ``watch``. ``pause`` leaves the hook's own
    allocations (the set of names, the ``stat``) out of the window it runs in, so that a
    first read changes no figure of the test's."""

    def __init__(self, pause: Callable[[bool], bool]) -> None:
        self.count = 0
        self._pause = pause
        self._seen: set[str | bytes] = set()
        self._since = 0.0

    def watch(self) -> None:
        """Adds the audit hook; from now on ``count`` grows with each first read."""
        self._since = time.time()
        sys.addaudithook(self._event)

    def _event(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or len(args) != 3:
            return
        path, _, flags = args
        if not isinstance(flags, int):
            return
        if flags & (os.O_ACCMODE | os.O_CREAT | os.O_TRUNC) != os.O_RDONLY:
            return
        if not isinstance(path, (str, bytes)):
            if not isinstance(path, os.PathLike):
                return  # a file descriptor
            path = os.fspath(path)
        was = self._pause(True)
        try:
            if not os.path.isabs(path):
                path = os.path.join(os.getcwd() if isinstance(path, str) else os.getcwdb(), path)
            # A key of our own: the test's string, kept in the set, would count as retained.
            key = os.fsencode(path) if isinstance(path, str) else os.fsdecode(path)
            if key in self._seen:
                return
            self._seen.add(key)
            try:
                modified = os.stat(path).st_mtime
            except (OSError, ValueError):
                return
            if modified < self._since:
                self.count += 1
        finally:
            self._pause(was)
