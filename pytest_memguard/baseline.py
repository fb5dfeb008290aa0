"""The baseline store: what each test used when it was last accepted, kept next to the tests.

One JSON file per test module (``<test dir>/__memguard__/<module stem>.json``), entries grouped
by interpreter scope (heap figures are exact for one CPython minor version and differ between
versions), keyed by the test's id within the module, sorted, one entry per line, nothing that
changes by itself (no timestamps, hosts or commits). Review it in a diff like code.

Writes are merges done under a lock: the file is re-read inside the lock, entries are changed,
and the whole is written to a temporary file and renamed, so concurrent runs keep each other's
entries and a reader never sees half a file. An entry is only rewritten when a figure moved
beyond tolerance, so an update that changes nothing measurable leaves the file byte-identical.
A file that cannot be read is an error naming it, and is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any

from .measurement import format_metric
from .report import atomic_write
from .tolerance import Tolerance
from .valueclass import field, valueclass

SCHEMA_VERSION = 1
DIRNAME = "__memguard__"
STORED = ("allocations", "heap_peak", "retained", "peak", "private")
COUNTS = frozenset({"allocations"})

Entry = dict[str, int]


_DICT_ONLY = frozenset({dict})
_INT_ONLY = frozenset({int})


class BaselineError(Exception):
    """A baseline file that cannot be trusted; the message names the file."""


def location(nodeid: str, rootdir: str) -> tuple[str, str]:
    """(baseline file path, key within it) for a node id such as ``tests/test_x.py::T::t[1]``."""
    module, sep, rest = nodeid.partition("::")
    module_path = os.path.join(rootdir, module)
    directory, filename = os.path.split(module_path)
    stem = filename[:-3] if filename.endswith(".py") else filename
    return os.path.join(directory, DIRNAME, f"{stem}.json"), (rest if sep else module)


def _validate(path: str, document: Any, deep: bool = True) -> dict[str, dict[str, Entry]]:
    """The document's scopes, checked; ``deep=False`` where every figure is known to be an
    int already (the extension's reader gives nothing else four deep)."""
    if not isinstance(document, dict) or "version" not in document:
        raise BaselineError(f"{path}: not a memguard baseline (no schema version)")
    if document["version"] != SCHEMA_VERSION:
        raise BaselineError(
            f"{path}: baseline schema version {document['version']!r} is not supported by this "
            f"pytest-memguard (it writes version {SCHEMA_VERSION}); upgrade pytest-memguard or "
            "re-record with --mem-baseline=update after moving the file away"
        )
    scopes = document.get("scopes")
    if not isinstance(scopes, dict):
        raise BaselineError(f"{path}: 'scopes' must be an object")
    for scope, entries in scopes.items():
        if not isinstance(entries, dict):
            raise BaselineError(f"{path}: scope {scope!r} must be an object of tests")
        # Every entry a dict of ints (bool is a type of its own): checked in C, without a
        # Python frame per entry (files are read at collection, a few thousand entries each).
        if set(map(type, entries.values())) <= _DICT_ONLY and (
            not deep
            or set(map(type, chain.from_iterable(map(dict.values, entries.values())))) <= _INT_ONLY
        ):
            continue
        for key, entry in entries.items():  # which one is wrong
            if not isinstance(entry, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in entry.values()
            ):
                raise BaselineError(f"{path}: entry {key!r} in {scope!r} must map metrics to ints")
    return scopes


def load(path: str) -> dict[str, dict[str, Entry]]:
    """All scopes of one file; an empty mapping when the file does not exist."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read baseline: {exc}") from None
    # Read by the extension where the file is in the subset this module writes (every file it
    # wrote, unless a test id needed escaping), else by json. A check reads every file at
    # collection: json took ~4 M instructions for ten files of 50 tests, the extension ~1 M.
    document = _read_baseline(data) if _read_baseline is not None else None
    if document is not None:
        return _validate(path, document, deep=False)
    return _validate(path, _parse_json(path, data))


def _parse_json(path: str, data: bytes) -> Any:
    """The JSON document in ``data`` as json reads it; errors name the file."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BaselineError(f"{path}: corrupt baseline (not UTF-8: {exc})") from None
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: corrupt baseline (invalid JSON: {exc})") from None


_read_baseline: Callable[[bytes], Any] | None
try:
    from ._tracemalloc_ext import read_baseline as _read_baseline  # type: ignore[no-redef]
except ImportError:  # not built, or a stale build: json reads every file
    _read_baseline = None


def dumps(scopes: Mapping[str, Mapping[str, Entry]]) -> str:
    """Stable text: sorted scopes and keys, one entry per line, so diffs are one line a test."""
    lines = ["{", f'  "version": {SCHEMA_VERSION},', '  "scopes": {']
    scope_names = sorted(s for s in scopes if scopes[s])
    for i, scope in enumerate(scope_names):
        lines.append(f"    {json.dumps(scope)}: {{")
        keys = sorted(scopes[scope])
        for j, key in enumerate(keys):
            entry = json.dumps(scopes[scope][key], sort_keys=True, separators=(", ", ": "))
            comma = "," if j < len(keys) - 1 else ""
            lines.append(f"      {json.dumps(key)}: {entry}{comma}")
        lines.append("    }" + ("," if i < len(scope_names) - 1 else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def lock_path(path: str) -> str:
    """Where the lock of baseline file ``path`` lives: in a directory of the user's own under
    the temp directory, keyed by the file. Not next to the file (no lock files in the user's
    repository), and not loose in the temp directory, where one lock file per baseline file
    ever written (filelock never deletes them, which would race) piled up."""
    owner = str(os.getuid()) if hasattr(os, "getuid") else "user"
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:20]
    return os.path.join(tempfile.gettempdir(), f"memguard-locks-{owner}", f"{digest}.lock")


def _lock_for(path: str) -> Any:
    from filelock import FileLock  # imported when a baseline is written, not at startup

    lock = lock_path(path)
    os.makedirs(os.path.dirname(lock), mode=0o700, exist_ok=True)
    return FileLock(lock, timeout=120)


def same_within(old: Entry, new: Entry, tolerance: Tolerance) -> bool:
    """True when ``new`` says nothing ``old`` does not: the same metrics, none of them moved
    beyond tolerance in either direction."""
    if old == new:  # what an update over unchanged code sees for nearly every test
        return True
    if old.keys() != new.keys():
        return False
    return all(
        abs(value - old[metric]) <= tolerance.allowance(old[metric], metric in COUNTS)
        for metric, value in new.items()
    )


def _merge(
    stored: Mapping[str, Mapping[str, Entry]],
    scope: str,
    entries: Mapping[str, Entry],
    remove: set[str],
    tolerance: Tolerance,
) -> tuple[dict[str, dict[str, Entry]], bool]:
    """The scopes after the update, and whether anything changed."""
    scopes = {s: dict(e) for s, e in stored.items()}
    current = scopes.setdefault(scope, {})
    changed = False
    for key, entry in entries.items():
        old = current.get(key)
        if old is not None and same_within(old, entry, tolerance):
            continue
        current[key] = dict(entry)
        changed = True
    for key in remove & set(current):
        del current[key]
        changed = True
    return scopes, changed


def update_file(
    path: str,
    scope: str,
    entries: Mapping[str, Entry],
    remove: Iterable[str],
    tolerance: Tolerance,
) -> bool:
    """Merge ``entries`` into one scope of the file and drop ``remove``; True if written.

    A first look goes without the lock: an update run over unchanged code changes nothing,
    and deciding that from a whole file (writes are atomic renames) is as good as deciding it
    under the lock, while the lock costs importing filelock (tens of milliseconds)."""
    remove = set(remove)
    if not _merge(load(path), scope, entries, remove, tolerance)[1]:
        return False
    with _lock_for(path):
        scopes, changed = _merge(load(path), scope, entries, remove, tolerance)
        if not changed:
            return False
        text = dumps(scopes)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                if handle.read() == text:
                    return False
        atomic_write(path, text)
        return True


@valueclass(frozen=True)
class Change:
    metric: str
    base: int
    now: int
    tolerance: Tolerance

    @property
    def percent(self) -> float | None:
        return None if self.base == 0 else 100.0 * (self.now - self.base) / self.base

    def describe(self) -> str:
        pct = "new" if self.percent is None else f"{self.percent:+.1f}%"
        slack = (
            f"{self.tolerance.relative * 100:g}%" if self.metric in COUNTS else str(self.tolerance)
        )
        return (
            f"{self.metric}: baseline {format_metric(self.metric, self.base)}, now "
            f"{format_metric(self.metric, self.now)} ({pct}; tolerance {slack})"
        )


@valueclass
class Comparison:
    regressions: list[Change] = field(default_factory=list)
    improvements: list[Change] = field(default_factory=list)

    def __init__(  # written out: one is made per test with a baseline
        self, regressions: list[Change] | None = None, improvements: list[Change] | None = None
    ) -> None:
        self.regressions = [] if regressions is None else regressions
        self.improvements = [] if improvements is None else improvements


def compare(
    base: Entry, now: Mapping[str, int | None], gated: Iterable[str], tolerance: Tolerance
) -> Comparison:
    """Gate ``gated`` metrics: a regression is ``now > base + abs + rel * base``."""
    result = Comparison()
    for metric in gated:
        old, new = base.get(metric), now.get(metric)
        if old is None or new is None or old == new:  # the common case, checked first
            continue
        side = tolerance.side(old, new, metric in COUNTS)
        if side > 0:
            result.regressions.append(Change(metric, old, new, tolerance))
        elif side < 0:
            result.improvements.append(Change(metric, old, new, tolerance))
    return result


def entry_from(metrics: Mapping[str, Any]) -> Entry:
    return {m: int(v) for m in STORED if isinstance(v := metrics.get(m), int)}


def render_regression(changes: Iterable[Change]) -> str:
    lines = ["memory regressed beyond the baseline:"]
    lines.extend(f"  {c.describe()}" for c in changes)
    lines.append(
        "  (if this is intended, record it: pytest --mem-baseline=update, and commit the "
        f"{DIRNAME} files)"
    )
    return "\n".join(lines)
