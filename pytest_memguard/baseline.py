"""The baseline store: what each test used when it was last accepted, kept next to the tests.

One JSON file per test module (``<test dir>/__memguard__/<module stem>.json``), entries grouped
by interpreter scope (heap figures are exact for one CPython minor version and differ between
versions), keyed by the test's id within the module, sorted, one entry per line, nothing that
changes by itself (no timestamps, hosts or commits). Review it in a diff like code.

Writes are merges done under a lock: the file is re-read inside the lock, entries are changed,
and the whole is written to a temporary file and renamed, so concurrent runs keep each other's
entries and a reader never sees half a file. An entry is only rewritten when a gated figure
moved beyond tolerance, so an update that changes nothing measurable leaves the file
byte-identical. A file that cannot be read is an error naming it, and is never overwritten.

An update makes, before its first test, the files it will write that do not exist yet (with no
entries): a test that lists the tests' directory (boltons' ``test_iter_find_files`` walks its
whole checkout: 1,867 calls in an update from no baseline files, 2,252 in every check after it)
sees the same files as the checks that follow. A file left with no entries is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from .measurement import format_metric
from .report import atomic_write, create_whole
from .tolerance import Tolerance

SCHEMA_VERSION = 1
DIRNAME = "__memguard__"
STORED = ("allocations", "heap_peak", "retained", "peak", "private")
# An entry's mark (1) that its figures hold a first use that imports nothing (its window
# compiled a regular expression or read a file for the first time, see firstuse) and no warm
# call could measure the test without it (its second call fails, or it is measured over its
# teardown). A check whose window paid such a first use and could not be called warm either
# compares with such an entry as it is: docutils' smartquotes test compiles its patterns in
# every context, and a regression of it is caught. Against an entry without the mark, the
# first use is what ran before the test, not what it costs, and such a figure is ``cold``
# (arrow's test_untranslated_granularity: 291 calls in the full run, 873 as the first test of
# its file to resolve a dotted name, which compiles pkgutil's pattern).
FIRST_USE = "first_use"
COUNTS = frozenset({"allocations"})
# The relative slack at least of the byte figures of a test whose figures depend on more than
# its own code:
# - one that ran threads or processes: its peak depended on how its threads interleaved
#   (idna's thread-pool test: +16% at a random order) and is no longer compared at all (see
#   INTERLEAVED); its retained bytes keep this slack, not yet measured without it;
# - one that reported subtests: what pytest's reports of them keep alive depends on the
#   plugins that handled them (more-itertools' test_all_orderings, 7,776 subtests, retained
#   8.7 MB serially and 7.7 MB in an xdist worker, which serialises each report). Its count
#   does not move, and keeps its tolerance.
CONTEXT_SLACK = 0.25
# How many calls the own thread of a test that ran threads or processes makes depends on the
# scheduler (simplejson's test_tool polled its child's pipes 4 to 39 times: 309 to 670 calls
# on unchanged code), so its count only fails at three times its baseline: a gross change of
# its work (9x, idna's thread test with a regression injected) is still caught.
CONCURRENT_COUNT_SLACK = 2.0
# The peak of a test that ran threads or processes is recorded and reported but not compared:
# it depends on how they interleaved. more-itertools' concurrent_tee test (100 consumer
# threads of one producer) peaked at 20-28 MB in some runs of unchanged code and 57-88 MB in
# others, and on a busy machine at 71-88 MB on each of four calls in a row. A budget on the
# peak still holds such a test.
INTERLEAVED = frozenset({"heap_peak", "peak"})
# A run whose strings hash with a random seed orders each set of strings its own way, and
# code that walks one and stops at a match does a different amount of work in each process.
# sqlglot's type checks walk sets of enum members named by strings: generating one query's
# DuckDB SQL made 704, 768, 800, 880 and 896 calls in five processes, and 896 in every process
# at PYTHONHASHSEED=0 (912 at 1, 704 at 2), whatever tests ran before: its test_safe_div read
# +5.8% in checks of unchanged code, as if the order of the tests moved it. From CPython 3.13
# the compiler too: source with a negative number literal in it costs more calls (attrs'
# generated __hash__ of a cache_hash class: 1,562 against 1,305 with the number positive),
# and attrs writes hash(<a generated file name>) there: test_copy[kwargs16] read 1,818 calls
# at PYTHONHASHSEED 0, 1, 3, 4 and 2,076 at 2 and 5. No process can change its own seed, so a
# run says so where it is random.
RANDOM_HASHES_NOTE = (
    "  (this run hashes strings with a random seed, so a set of strings is walked in a "
    "different order in each process, and code that stops at a match in one (sqlglot's type "
    "checks) or, from CPython 3.13, compiles source with a hash in it (attrs' hashable "
    "classes) makes a different number of calls; record and check baselines with "
    "PYTHONHASHSEED=0)"
)


def random_string_hashes(environ: Mapping[str, str], ignore_environment: bool) -> bool:
    """Whether this interpreter picked its string hash seed at random (see
    ``RANDOM_HASHES_NOTE``): ``PYTHONHASHSEED`` unset, ``random``, or ignored (``-E``, ``-I``)."""
    return ignore_environment or environ.get("PYTHONHASHSEED", "random") in ("random", "")


Entry = dict[str, int]


class BaselineError(Exception):
    """A baseline file that cannot be trusted; the message names the file."""


def location(nodeid: str, rootdir: str) -> tuple[str, str]:
    """(baseline file path, key within it) for a node id such as ``tests/test_x.py::T::t[1]``."""
    module, sep, rest = nodeid.partition("::")
    module_path = os.path.join(rootdir, module)
    directory, filename = os.path.split(module_path)
    stem = filename[:-3] if filename.endswith(".py") else filename
    return os.path.join(directory, DIRNAME, f"{stem}.json"), (rest if sep else module)


def _validate(path: str, document: Any) -> dict[str, dict[str, Entry]]:
    """The document's scopes, checked."""
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
        for key, entry in entries.items():
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
    return parse(path, data)


def parse(path: str, data: bytes) -> dict[str, dict[str, Entry]]:
    """All scopes of a baseline file's bytes (read from disk or from git); errors name ``path``."""
    return _validate(path, _parse_json(path, data))


def _parse_json(path: str, data: bytes) -> Any:
    """The JSON document in ``data`` as json reads it; errors name the file."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BaselineError(f"{path}: corrupt baseline (not UTF-8: {exc})") from None
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: corrupt baseline (invalid JSON: {exc})") from None


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


LOCK_TIMEOUT = 120.0


def _private_directory(directory: str) -> None:
    """Make ``directory`` for this user alone, or check that it is one: a directory (not a
    symlink) owned by this user that nobody else can write. Anyone can create a name in the
    temporary directory first; a lock there must not be another user's to hold or redirect."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise BaselineError(f"cannot make the lock directory {directory}: {exc}") from None
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise BaselineError(
            f"lock directory {directory} is not a directory (a symlink or a file): remove it"
        )
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        raise BaselineError(
            f"lock directory {directory} belongs to another user or others can write it "
            f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}): remove it"
        )


@contextmanager
def _locked(path: str) -> Iterator[None]:
    from filelock import FileLock, Timeout  # imported when a baseline is written

    lock = lock_path(path)
    _private_directory(os.path.dirname(lock))
    try:
        with FileLock(lock, timeout=LOCK_TIMEOUT):
            yield
    except Timeout:
        raise BaselineError(
            f"{path}: another run held the lock {lock} for {LOCK_TIMEOUT:g} s; "
            "the baseline was not written"
        ) from None


def same_within(
    old: Entry, new: Entry, tolerance: Tolerance, gated: Collection[str] | None = None
) -> bool:
    """True when ``new`` says nothing ``old`` does not: the same metrics, none of the ``gated``
    ones (None: all) moved beyond tolerance in either direction.

    The figures stored for information only (the kernel's ``peak``, ``private``) do not
    rewrite an entry by themselves: they move by whole pages from run to run, and a test whose
    heap peaked at 23 KB read a kernel peak over 70 KB in one update of unchanged code, beyond
    the 48 KiB slack, so its entry changed. They are refreshed whenever the entry is written."""
    if old == new:  # what an update over unchanged code sees for nearly every test
        return True
    if old.keys() - {FIRST_USE} != new.keys() - {FIRST_USE}:
        return False
    return all(
        abs(value - old[metric]) <= tolerance.allowance(old[metric], metric in COUNTS)
        for metric, value in new.items()
        if metric != FIRST_USE and (gated is None or metric in gated)
    )


def _merge(
    stored: Mapping[str, Mapping[str, Entry]],
    scope: str,
    entries: Mapping[str, Entry],
    remove: set[str],
    tolerance: Tolerance,
    gated: Collection[str] | None,
) -> tuple[dict[str, dict[str, Entry]], bool]:
    """The scopes after the update, and whether anything changed."""
    scopes = {s: dict(e) for s, e in stored.items()}
    current = scopes.setdefault(scope, {})
    changed = False
    for key, entry in entries.items():
        old = current.get(key)
        if old is not None and same_within(old, entry, tolerance, gated):
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
    gated: Collection[str] | None = None,
) -> bool:
    """Merge ``entries`` into one scope of the file and drop ``remove``; True if written.
    An entry is rewritten when one of its ``gated`` figures (None: any) moved beyond
    ``tolerance`` (see ``same_within``).

    A first look goes without the lock: an update run over unchanged code changes nothing,
    and deciding that from a whole file (writes are atomic renames) is as good as deciding it
    under the lock, while the lock costs importing filelock (tens of milliseconds)."""
    remove = set(remove)
    if not _merge(load(path), scope, entries, remove, tolerance, gated)[1]:
        return False
    with _locked(path):
        scopes, changed = _merge(load(path), scope, entries, remove, tolerance, gated)
        if not changed:
            return False
        text = dumps(scopes)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                if handle.read() == text:
                    return False
        atomic_write(path, text)
        return True


def discard_empty(path: str) -> None:
    """Remove a baseline file with no entries in any scope (one an update made for tests that
    then recorded nothing), and its directory if that is left empty; re-read under the lock,
    so an entry another run wrote meanwhile is kept."""
    with _locked(path):
        try:
            if any(load(path).values()):
                return
            os.unlink(path)
        except (BaselineError, FileNotFoundError):
            return
    with suppress(OSError):
        os.rmdir(os.path.dirname(path))


@dataclass(frozen=True)
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
        tol = self.tolerance
        slack = (
            f"{tol.relative * 100:g}%+{tol.count_absolute}" if self.metric in COUNTS else str(tol)
        )
        return (
            f"{self.metric}: baseline {format_metric(self.metric, self.base)}, now "
            f"{format_metric(self.metric, self.now)} ({pct}; tolerance {slack})"
        )


@dataclass
class Comparison:
    regressions: list[Change] = field(default_factory=list)
    improvements: list[Change] = field(default_factory=list)


def compare(
    base: Entry,
    now: Mapping[str, int | None],
    gated: Iterable[str],
    tolerance: Tolerance,
    concurrent: bool = False,
    subtests: bool = False,
) -> Comparison:
    """Gate ``gated`` metrics: a regression is ``now > base + abs + rel * base``.
    ``concurrent``: the test ran threads or processes (see ``CONCURRENT_COUNT_SLACK`` and
    ``INTERLEAVED``); ``subtests``: it reported subtests (see ``CONTEXT_SLACK``)."""
    for_bytes = for_counts = tolerance
    if concurrent or subtests:
        for_bytes = replace(tolerance, relative=max(tolerance.relative, CONTEXT_SLACK))
    if concurrent:
        relative = max(tolerance.relative, CONCURRENT_COUNT_SLACK)
        for_counts = replace(tolerance, relative=relative)
    result = Comparison()
    for metric in gated:
        old, new = base.get(metric), now.get(metric)
        if old is None or new is None or old == new:  # the common case, checked first
            continue
        if concurrent and metric in INTERLEAVED:
            continue
        count = metric in COUNTS
        slack = for_counts if count else for_bytes
        side = slack.side(old, new, count)
        if side > 0:
            result.regressions.append(Change(metric, old, new, slack))
        elif side < 0:
            result.improvements.append(Change(metric, old, new, slack))
    return result


def entry_from(metrics: Mapping[str, Any], first_use: bool = False) -> Entry:
    """The entry an update writes; ``first_use``: its figures hold one (``FIRST_USE``)."""
    entry = {m: int(v) for m in STORED if isinstance(v := metrics.get(m), int)}
    if first_use:
        entry[FIRST_USE] = 1
    return entry


def render_regression(
    changes: Iterable[Change],
    concurrent: bool = False,
    subtests: bool = False,
    random_hashes: bool = False,
) -> str:
    """``random_hashes``: the run hashes strings with a random seed (see
    ``RANDOM_HASHES_NOTE``)."""
    changes = list(changes)
    lines = ["memory regressed beyond the baseline:"]
    lines.extend(f"  {c.describe()}" for c in changes)
    if concurrent:
        lines.append(
            "  (the test ran threads or processes: its allocation count has at least "
            f"{CONCURRENT_COUNT_SLACK:.0%} slack, its byte figures {CONTEXT_SLACK:.0%}, and "
            "its peak, which depends on how they interleaved, is not compared)"
        )
    if subtests:
        lines.append(
            "  (the test reported subtests, whose reports pytest keeps: byte figures have at "
            f"least {CONTEXT_SLACK:.0%} slack)"
        )
    if random_hashes and any(c.metric in COUNTS for c in changes):
        lines.append(RANDOM_HASHES_NOTE)
    lines.append(
        "  (if this is intended, record it: pytest --mem-baseline=update, and commit the "
        f"{DIRNAME} files)"
    )
    return "\n".join(lines)


class Checked(NamedTuple):
    """How one test's figures compare with its entry: ``status`` is ``ok``, ``new``,
    ``regressed`` or ``improved`` (regressions win over improvements), or ``cold`` (it would
    have regressed, but its figures hold a first use no warm call could take out: not
    compared); ``moved`` the figures beyond tolerance, ``regressions`` those of them that
    should fail the test."""

    status: str
    moved: list[Change]
    regressions: list[Change]

    def unwarmed(self, imported: bool, first_use: bool) -> Checked:
        """This comparison where no warm call measured the test: figures that would fail and
        hold a module's import (``imported``) or another first use its entry's figures did not
        hold (``first_use``, see ``FIRST_USE``) say what ran before the test, not what it
        costs, so it is ``cold`` and fails nothing."""
        if (imported or first_use) and self.status == "regressed":
            return Checked("cold", self.moved, [])
        return self


def _unstable_ids(stale: Sequence[str], new: Sequence[str]) -> list[str]:
    """Test functions of one baseline file that have both stale entries and new tests: their
    parameter ids changed since the entries were written. marshmallow's
    ``test_invalid_datetime_deserialization`` puts the current time into its ids, so no run
    finds the entries an earlier one wrote: its tests are new in every check, never gated."""
    stale_functions = {key.partition("[")[0] for key in stale if "[" in key}
    found: dict[str, int] = {}
    for nodeid in new:
        module, _, key = nodeid.partition("::")
        function = key.partition("[")[0]
        if "[" in key and function in stale_functions:
            found[f"{module}::{function}"] = found.get(f"{module}::{function}", 0) + 1
    return [f"{name} ({count} new ids)" for name, count in sorted(found.items())]


OUTCOME_KEYS = ("regressed", "improved", "cold", "new", "stale", "unstable", "updated", "errors")


class BaselineCheck:
    """The baselines of one run: which tests are tracked, how each compares with its entry,
    which entries are stale, and the update written at the end.

    Files are read once per run, before an update writes them, so the JSON report finds the
    entries the check used. ``mode``: ``check``, ``update``, ``off``, or ``auto`` (check where
    a test module's baseline file exists).
    """

    def __init__(
        self,
        rootdir: str,
        scope: str,
        mode: str,
        gated: Sequence[str],
        tolerance: Tolerance,
    ) -> None:
        self.rootdir = rootdir
        self.scope = scope
        self.mode = mode
        self.gated = tuple(gated)
        self.tolerance = tolerance
        self._files: dict[str, dict[str, dict[str, Entry]] | str] = {}
        self._paths: dict[str, str] = {}  # test module (as in node ids) -> baseline file

    @property
    def judging(self) -> bool:
        """A check fails regressed tests; an update records them instead."""
        return self.mode != "update"

    def locate(self, nodeid: str) -> tuple[str, str]:
        """(baseline file, key in it) of a test."""
        module, sep, rest = nodeid.partition("::")
        path = self._paths.get(module)
        if path is None:
            path = self._paths[module] = location(module, self.rootdir)[0]
        return path, (rest if sep else module)

    def _read(self, path: str) -> dict[str, dict[str, Entry]] | str:
        """A file's scopes, or why it cannot be used."""
        found = self._files.get(path)
        if found is None:
            try:
                found = load(path)
            except BaselineError as exc:
                found = str(exc)
            self._files[path] = found
        return found

    def reserve(self, nodeids: Iterable[str]) -> None:
        """On update, make the missing files of these tests' modules, with no entries, before
        the first test runs (see the module's text). Another process making one first (an xdist
        worker) is fine; where a file cannot be made (a read-only tree, a file system without
        hard links), the tests run without it, and writing the entries at the end reports any
        error as before."""
        if self.mode != "update":
            return
        for path in sorted({self.locate(nodeid)[0] for nodeid in nodeids}):
            if not os.path.exists(path):
                with suppress(OSError):
                    create_whole(path, dumps({}))

    def tracks(self, nodeid: str) -> bool:
        if self.mode == "off":
            return False
        return self.mode != "auto" or os.path.exists(self.locate(nodeid)[0])

    def problem(self, nodeid: str) -> str | None:
        """Why a tracked test's baseline file cannot be used (it is never overwritten)."""
        found = self._read(self.locate(nodeid)[0])
        return found if isinstance(found, str) else None

    def entry(self, nodeid: str) -> Entry | None:
        path, key = self.locate(nodeid)
        found = self._read(path)
        return None if isinstance(found, str) else found.get(self.scope, {}).get(key)

    def recorded_first_use(self, nodeid: str) -> bool:
        """Whether the test's entry holds a first use (``FIRST_USE``)."""
        return bool((self.entry(nodeid) or {}).get(FIRST_USE))

    def compare(
        self,
        nodeid: str,
        metrics: Mapping[str, int | None],
        tolerance: Tolerance | None = None,
        concurrent: bool = False,
        subtests: bool = False,
    ) -> Checked:
        """``tolerance``: the test's own (a marker's), else the run's. ``concurrent`` and
        ``subtests``: see ``compare``."""
        base = self.entry(nodeid)
        if base is None:
            return Checked("new", [], [])
        tolerance = tolerance or self.tolerance
        result = compare(base, metrics, self.gated, tolerance, concurrent, subtests)
        moved = result.regressions or result.improvements
        status = "regressed" if result.regressions else "improved" if moved else "ok"
        return Checked(status, moved, result.regressions if self.judging else [])

    def settle(
        self,
        statuses: Iterable[tuple[str, str]],
        passed: Iterable[tuple[str, Mapping[str, Any], bool]],
        collected: Iterable[str],
        full_run: bool,
    ) -> dict[str, list[str]]:
        """The run's outcome by kind (``OUTCOME_KEYS``); an update writes each file once,
        under its lock. ``statuses``: (node id, baseline status) of the tests compared;
        ``passed``: (node id, metrics, whether they hold a first use, ``FIRST_USE``) of the
        tests that passed whole (what an update records); ``collected``: every collected node
        id. Only a run that saw every test (``full_run``) can tell a removed test from one not
        run this time: only it lists stale entries, and only its update removes them."""
        outcome: dict[str, list[str]] = {key: [] for key in OUTCOME_KEYS}
        if self.mode == "off":
            return outcome
        new_by_file: dict[str, list[str]] = {}
        for nodeid, status in statuses:
            if status in ("regressed", "improved", "cold", "new"):
                outcome[status].append(nodeid)
            if status == "new":
                new_by_file.setdefault(self.locate(nodeid)[0], []).append(nodeid)
        keys_by_file: dict[str, set[str]] = {}
        for nodeid in collected:
            path, key = self.locate(nodeid)
            keys_by_file.setdefault(path, set()).add(key)
        updates: dict[str, dict[str, Entry]] = {}
        if self.mode == "update":
            for nodeid, metrics, first_use in passed:
                path, key = self.locate(nodeid)
                updates.setdefault(path, {})[key] = entry_from(metrics, first_use)
        for path in sorted(set(updates) | set(keys_by_file)):
            if self.mode == "auto" and not os.path.exists(path):
                continue
            found = self._read(path)
            if isinstance(found, str):
                outcome["errors"].append(found)
                continue
            stored = found.get(self.scope, {})
            stale = sorted(set(stored) - keys_by_file.get(path, set())) if full_run else []
            where = os.path.relpath(path, self.rootdir)
            outcome["stale"].extend(f"{where}: {key}" for key in stale)
            outcome["unstable"].extend(_unstable_ids(stale, new_by_file.get(path, [])))
            entries = updates.get(path, {})
            if self.mode != "update":
                continue
            if not (entries or stale):
                if not any(found.values()) and os.path.exists(path):
                    try:
                        discard_empty(path)
                    except BaselineError as exc:
                        outcome["errors"].append(str(exc))
                continue
            try:
                if update_file(path, self.scope, entries, stale, self.tolerance, self.gated):
                    outcome["updated"].append(where)
            except BaselineError as exc:
                outcome["errors"].append(str(exc))
            except OSError as exc:  # a read-only directory, a full disk
                outcome["errors"].append(f"{path}: cannot write the baseline: {exc}")
        return outcome
