"""What a run reports: the per-test properties (JUnit, xdist), the records made from them, the
terminal summary and the JSON report.

Nothing here measures or decides; it turns results into text and files. Files are written to a
temporary file in the same directory and renamed over the target (or, where the file must not
exist yet, linked into place), so a reader (or a crash) never sees half a file. Every run
loads this module: the text of failures is in ``messages`` and the GitHub Actions output in
``github``, loaded only when needed.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .measurement import METRICS, format_metric

REPORT_VERSION = 1
PROPERTY_PREFIX = "memguard."


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that it is either the old file or the whole new one."""
    tmp = _written_beside(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_whole(path: str, text: str) -> bool:
    """Make ``path`` with ``text`` unless it exists (False then), so that a reader never sees
    it empty or half written: the text is written beside it and hard-linked into place, which
    fails, unlike a rename, where another process made the file first."""
    tmp = _written_beside(path, text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return True


def _written_beside(path: str, text: str) -> str:
    """A temporary file holding ``text`` in ``path``'s directory (made if missing), with the
    mode ``path`` has or a new file would get."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".memguard-", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes the file 0600: give it the mode the file had, or the one the user's
        # umask gives a new file, as any other writer of the repository would.
        os.chmod(tmp, _mode_for(path))
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _mode_for(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)  # read it (there is no other way), then put it back
        os.umask(umask)
        return 0o666 & ~umask


def report_path_problem(path: str) -> str | None:
    """Why a report cannot be written to ``path`` (checked before any test runs), or None.
    Missing directories are made when the report is written, where their parent allows."""
    if os.path.isdir(path):
        return "is a directory; expected a file name such as memguard.json"
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(directory):
        directory = os.path.dirname(directory)
    if not os.path.isdir(directory):
        return f"{directory} is not a directory"
    if not os.access(directory, os.W_OK):
        return f"the directory {directory} is not writable"
    return None


_METRIC_PROPERTIES = tuple(f"{PROPERTY_PREFIX}{name}" for name in METRICS)
_METRIC_OF_PROPERTY = dict(zip(_METRIC_PROPERTIES, METRICS))
_METRIC_KEYS = frozenset(_METRIC_PROPERTIES)
_PREFIX_LENGTH = len(PROPERTY_PREFIX)
_PEAK = f"{PROPERTY_PREFIX}peak"


def to_properties(
    metrics: Mapping[str, int | None],
    extra: Mapping[str, Any] = (),  # type: ignore[assignment]
) -> list[tuple[str, Any]]:
    """Flat ``memguard.<metric>`` properties: they reach JUnit XML and travel from xdist workers
    to the controller with the report."""
    props: list[tuple[str, Any]] = [
        (f"{PROPERTY_PREFIX}{name}", value) for name, value in metrics.items() if value is not None
    ]
    props.extend((f"{PROPERTY_PREFIX}{k}", v) for k, v in dict(extra).items())
    return props


class TestRecord:
    """Everything the process that runs the session knows about one test, made from its
    reports (its own, an xdist worker's or an isolated child's).

    Only reports that say something are absorbed: a failed or skipped one (the outcome), and
    the teardown report, the last of a test, whose ``user_properties`` are the item's final list
    (the measurement is added to it in the call phase, or at teardown with ``mem_scope =
    test``). A passed setup or call report adds nothing. The properties are kept as the dict
    that list makes (built in C); ``metrics`` and ``extra`` are read from it when asked, at the
    end of the session, rather than sorted out for every test as it finishes.
    """

    __slots__ = ("nodeid", "outcome", "teardown_passed", "properties", "explanation", "xfailed")
    __test__ = False  # not a test class, whatever pytest makes of the name

    def __init__(self, nodeid: str, properties: dict[str, Any] | None = None) -> None:
        self.nodeid = nodeid
        self.outcome = "passed"
        self.teardown_passed = False
        self.properties: dict[str, Any] = {} if properties is None else properties
        self.explanation: str | None = None  # the first failure's text, kept for --mem-html
        self.xfailed = False  # its call failed as an xfail expected (outcome "skipped")

    def __repr__(self) -> str:
        return f"TestRecord({self.nodeid!r}, outcome={self.outcome!r}, metrics={self.metrics!r})"

    def absorb(self, when: str, outcome: str, properties: Sequence[Any] = ()) -> None:
        """One report of the test; ``properties`` only from the teardown report."""
        if outcome == "passed":
            if when == "teardown":
                self.teardown_passed = True
        elif outcome == "failed" or (outcome == "skipped" and self.outcome == "passed"):
            self.outcome = "error" if (outcome == "failed" and when != "call") else outcome
        if properties:
            try:
                self.properties.update(properties)
            except (TypeError, ValueError):  # someone's property that is not a (name, value)
                for entry in properties:
                    if isinstance(entry, (tuple, list)) and len(entry) == 2:
                        with contextlib.suppress(TypeError):
                            self.properties[entry[0]] = entry[1]

    def get(self, name: str) -> Any:
        """One of our properties (a metric or an extra) by its name without the prefix."""
        return self.properties.get(PROPERTY_PREFIX + name)

    @property
    def measured(self) -> bool:
        return not _METRIC_KEYS.isdisjoint(self.properties)

    @property
    def metrics(self) -> dict[str, int | None]:
        found = self.properties
        return {m: found[k] for k, m in _METRIC_OF_PROPERTY.items() if k in found}

    @property
    def extra(self) -> dict[str, Any]:
        """Our properties other than metrics (budget, baseline, leak, soak), unprefixed."""
        return {
            key[_PREFIX_LENGTH:]: value
            for key, value in self.properties.items()
            if isinstance(key, str)
            and key.startswith(PROPERTY_PREFIX)
            and key not in _METRIC_OF_PROPERTY
        }

    @property
    def fully_passed(self) -> bool:
        """Setup, call and teardown all passed. A failed or skipped (xfailed) phase changed
        the outcome; a teardown report means setup and call were over; and a test whose
        setup passed has had its call run (the plugin measures nothing under
        ``--setup-only``, the one mode that skips it). A test cut short before teardown
        (``pytest.exit``, Ctrl-C) has no teardown report."""
        return self.outcome == "passed" and self.teardown_passed

    @property
    def recordable(self) -> bool:
        """Its figures may be a baseline: it fully passed, or its call failed as an xfail
        expected (the figures up to the expected error repeat) and its teardown passed."""
        return self.fully_passed or (
            self.teardown_passed and self.outcome == "skipped" and self.xfailed
        )


def report_json(
    scope: str,
    header: str,
    records: Iterable[TestRecord],
    stored: Callable[[str], Mapping[str, int] | None] | None = None,
) -> str:
    document = report_document(scope, header, records, stored)
    return json.dumps(document, indent=1, sort_keys=False) + "\n"


def report_document(
    scope: str,
    header: str,
    records: Iterable[TestRecord],
    stored: Callable[[str], Mapping[str, int] | None] | None = None,
) -> dict[str, Any]:
    """The JSON report's document. ``stored``: the baseline entry of a node id. A checked test
    carries only its status (and changes) as properties; the entry's figures are joined here
    from the file."""
    tests = []
    for record in sorted(records, key=lambda r: r.nodeid):
        extra = record.extra  # worked out from the properties on each access: once here
        baseline = _section(extra, "baseline.")
        if stored is not None and baseline.get("status") not in (None, "new"):
            baseline = {**(stored(record.nodeid) or {}), **baseline}
        entry: dict[str, Any] = {
            "nodeid": record.nodeid,
            "outcome": record.outcome,
            "metrics": {name: record.get(name) for name in METRICS},
            "budget": _section(extra, "budget."),
            "baseline": baseline,
        }
        if not record.measured:
            entry["unmeasured"] = _why_unmeasured(record)
        others = {k: v for k, v in extra.items() if not k.startswith(("budget.", "baseline."))}
        if others:
            entry["details"] = others
        tests.append(entry)
    return {"version": REPORT_VERSION, "scope": scope, "measured": header, "tests": tests}


def _why_unmeasured(record: TestRecord) -> str:
    if record.outcome in ("skipped", "error"):
        return f"its call did not run ({record.outcome} before it)"
    return "no measurement reached the report (an isolated child that died, or --setup-only)"


def _section(extra: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The extras under ``prefix`` (``budget.``, ``baseline.``), without it."""
    return {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}


def summary_table(tests: Iterable[tuple[str, Mapping[str, Any]]], top: int) -> list[str]:
    """The ``top`` tests by peak, from (node id, properties) pairs: a record's
    ``(nodeid, properties)``, or the properties the plugin keeps for a test whose record was
    never needed (see ``MemguardPlugin.records``)."""
    if top <= 0:
        return []
    # Compared as tuples, in C: a key function called for every test cost ~4k instructions a
    # test, and a run's peaks tie often (the kernel's are whole pages), so names break ties.
    ranked = [
        (-peak, nodeid, found) for nodeid, found in tests if (peak := found.get(_PEAK)) is not None
    ]
    if not ranked:
        return []
    rows = heapq.nsmallest(top, ranked)
    # A column none of these tests measured is left out (heap figures where nothing read them).
    columns = [
        c
        for c in _SUMMARY_COLUMNS
        if c == "peak" or any(found.get(PROPERTY_PREFIX + c) is not None for *_, found in rows)
    ]
    widths = [max(len(c), 10) for c in columns]
    lines = ["  ".join(f"{c:>{w}}" for c, w in zip(columns, widths)) + "  test"]
    for _, nodeid, found in rows:
        cells = [format_metric(c, found.get(PROPERTY_PREFIX + c)) for c in columns]
        lines.append("  ".join(f"{v:>{w}}" for v, w in zip(cells, widths)) + f"  {nodeid}")
    return lines


_SUMMARY_COLUMNS = ("peak", "heap_peak", "retained", "allocations")


def render_baseline_summary(
    outcome: Mapping[str, Sequence[str]], mode: str, random_hashes: bool = False
) -> list[str]:
    """``random_hashes``: the run hashed strings with a random seed (see the baseline module's
    ``RANDOM_HASHES_NOTE``); an update that wrote files under one says so."""
    if not outcome or not any(outcome.values()):
        return []
    lines = []
    labels = (
        ("errors", "baseline files that could not be read or written (never half-written)"),
        ("regressed", "regressed beyond tolerance (failed)"),
        ("improved", "improved beyond tolerance (lower the baseline: --mem-baseline=update)"),
        (
            "cold",
            "not compared: their figures hold a first use (a module imported in the test) "
            "that no second call could take out (it failed, or the test cannot be called twice)",
        ),
        (
            "new",
            "new, not in the baseline yet"
            + ("" if mode == "update" else " (recorded by --mem-baseline=update)"),
        ),
        (
            "stale",
            "stale entries (tests that no longer exist)"
            + ("" if mode == "update" else "; removed by a full --mem-baseline=update run"),
        ),
        (
            "unstable",
            "test functions whose parameter ids changed since their entries were written (an "
            "id made of a time, a random number or an address changes every run, and so does "
            "one numbered in the order of a set, which follows PYTHONHASHSEED; such a test is "
            "never gated: give it stable ids, pytest.param(..., id=...))",
        ),
        ("updated", "baseline files written"),
    )
    for key, label in labels:
        names = outcome.get(key, ())
        if names:
            lines.append(f"{len(names)} {label}:")
            lines.extend(f"  {name}" for name in names[:20])
            if len(names) > 20:
                lines.append(f"  ... and {len(names) - 20} more")
    if random_hashes and outcome.get("updated"):
        lines.append(
            "recorded under a random string hash seed: a count that follows the order of a "
            "set of strings moves in the next process; record and check with PYTHONHASHSEED=0"
        )
    return lines
