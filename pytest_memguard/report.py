"""Rendering: failure messages, the terminal summary, the JSON report, JUnit properties.

Nothing here measures or decides; it turns results into text and files. Files are written to a
temporary file in the same directory and renamed over the target, so a reader (or a crash)
never sees half a report.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .heap import Site, TypeGrowth
from .measurement import METRICS, Measurement, format_metric
from .units import format_size

REPORT_VERSION = 1
PROPERTY_PREFIX = "memguard."


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that it is either the old file or the whole new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".memguard-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def short_path(path: str) -> str:
    """Paths under the working directory print relative to it, as pytest prints node ids."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if relative.startswith("..") else relative


def _frame(frame: Any) -> str:
    return f"{short_path(frame.filename)}:{frame.lineno}"


def render_sites(sites: Sequence[Site], alive_only: bool) -> list[str]:
    if not sites:
        return []
    what = "still alive at the end" if alive_only else "allocated during the test"
    lines = [f"Top allocation sites ({what}; sampled, estimated):"]
    for site in sites:
        amount = site.alive_bytes if alive_only else site.bytes
        blocks = "block" if site.count == 1 else "blocks"
        caller = f"  <- {_frame(site.stack[1])}" if len(site.stack) > 1 else ""
        name = f" in {site.frame.function}" if site.frame.function else ""
        lines.append(
            f"  {format_size(amount):>10}  {site.count:>8,} {blocks:<6}  "
            f"{_frame(site.frame)}{name}{caller}"
        )
    return lines


def render_types(types: Sequence[TypeGrowth], scale: int = 0) -> list[str]:
    """Rows under 1% of ``scale`` (the figure that failed) are noise next to it: dropped."""
    rows = [t for t in types if t.bytes * 100 >= scale]
    if not rows:
        return []
    lines = ["Object types allocated during the test and still alive:"]
    for row in rows:
        lines.append(f"  {format_size(row.bytes):>10}  {row.count:>8,}  {row.name}")
    return lines


def render_measurement(m: Measurement) -> str:
    parts = [
        f"{name} {format_metric(name, value, name in ('private', 'rss', 'fds'))}"
        for name, value in m.metrics().items()
        if value is not None
    ]
    return "measured: " + ", ".join(parts)


def render_failure(
    headlines: Iterable[str], m: Measurement, alive_only: bool, scale: int = 0
) -> str:
    lines = list(headlines)
    if m.kernel_peak is not None and m.heap_peak is not None:
        lines.append(
            f"  (peak is the larger of the kernel high-water mark {format_size(m.kernel_peak)} "
            f"and the Python-heap peak {format_size(m.heap_peak)})"
        )
    lines.append(render_measurement(m))
    lines.extend(render_sites(m.sites, alive_only))
    lines.extend(render_types(m.types, scale))
    return "\n".join(lines)


_METRIC_PROPERTIES = tuple(f"{PROPERTY_PREFIX}{name}" for name in METRICS)
_METRIC_OF_PROPERTY = dict(zip(_METRIC_PROPERTIES, METRICS))
_METRIC_KEYS = frozenset(_METRIC_PROPERTIES)
_PREFIX_LENGTH = len(PROPERTY_PREFIX)
_PEAK = f"{PROPERTY_PREFIX}peak"


def metric_properties(values: tuple[int | None, ...]) -> list[tuple[str, Any]]:
    """The ``memguard.<metric>`` properties of values in the order of ``METRICS`` (extra values
    after them are ignored: ``Meter.read()`` works), made once per test: by the extension where
    it was built (a comprehension cost more than reading the window)."""
    if _present is not None:
        return _present(_METRIC_PROPERTIES, values)
    return [(k, v) for k, v in zip(_METRIC_PROPERTIES, values) if v is not None]


_present: Callable[[tuple[str, ...], tuple[Any, ...]], list[tuple[str, Any]]] | None
try:
    from ._tracemalloc_ext import present as _present  # type: ignore[no-redef]
except ImportError:  # not built, or a stale build: the comprehension
    _present = None


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
    """Everything the controller knows about one test, rebuilt from its reports, or made
    straight from the test's window where a run needs no more than the figures (no outcome,
    no property added after the window: see ``MemguardPlugin._register_per_test_hooks``);
    such a record keeps the default outcome.

    Only reports that say something are absorbed: a failed or skipped one (the outcome), and
    the teardown report, the last of a test, whose ``user_properties`` are the item's final list
    (the measurement is added to it in the call phase, or at teardown with ``mem_scope =
    test``). A passed setup or call report adds nothing. The properties are kept as the dict
    that list makes (built in C); ``metrics`` and ``extra`` are read from it when asked, at the
    end of the session, rather than sorted out for every test as it finishes.
    """

    __slots__ = ("nodeid", "outcome", "teardown_passed", "properties")
    __test__ = False  # not a test class, whatever pytest makes of the name

    def __init__(self, nodeid: str, properties: dict[str, Any] | None = None) -> None:
        self.nodeid = nodeid
        self.outcome = "passed"
        self.teardown_passed = False
        self.properties: dict[str, Any] = {} if properties is None else properties

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


def report_json(
    scope: str,
    header: str,
    records: Iterable[TestRecord],
    stored: Callable[[str], Mapping[str, int] | None] | None = None,
) -> str:
    """``stored``: the baseline entry of a node id. A checked test carries only its status
    (and changes) as properties; the entry's figures are joined here from the file."""
    tests = []
    for record in sorted(records, key=lambda r: r.nodeid):
        if not record.measured:
            continue
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
        others = {k: v for k, v in extra.items() if not k.startswith(("budget.", "baseline."))}
        if others:
            entry["details"] = others
        tests.append(entry)
    document = {"version": REPORT_VERSION, "scope": scope, "measured": header, "tests": tests}
    return json.dumps(document, indent=1, sort_keys=False) + "\n"


def _section(extra: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The extras under ``prefix`` (``budget.``, ``baseline.``), without it."""
    return {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}


def summary_table(records: Iterable[TestRecord], top: int) -> list[str]:
    if top <= 0:
        return []
    # Compared as tuples, in C: a key function called for every test cost ~4k instructions a
    # test, and a run's peaks tie often (the kernel's are whole pages), so names break ties.
    ranked = [
        (-peak, r.nodeid, r) for r in records if (peak := r.properties.get(_PEAK)) is not None
    ]
    if not ranked:
        return []
    cols = ("peak", "heap_peak", "retained", "allocations")
    shown = [r for _, _, r in heapq.nsmallest(top, ranked)]
    widths = [max(len(c), 10) for c in cols]
    lines = [
        "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths)) + "  test",
    ]
    for record in shown:
        cells = [format_metric(c, record.get(c)) for c in cols]
        lines.append("  ".join(f"{v:>{w}}" for v, w in zip(cells, widths)) + f"  {record.nodeid}")
    return lines


_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 50) -> str:
    """A compact picture of a series: does it climb, level off or saw up and down?"""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [values[int(i * step)] for i in range(width)]
    low, high = min(values), max(values)
    if high == low:
        return _SPARKS[0] * len(values)
    scale = (len(_SPARKS) - 1) / (high - low)
    return "".join(_SPARKS[int((v - low) * scale)] for v in values)


_LEAK_UNITS = {"blocks": "blocks", "bytes": "B", "native": "B", "fds": "fds"}


def _per_call(metric: str, value: float) -> str:
    if metric in ("bytes", "native"):
        return f"{format_size(int(round(value)), signed=True)}/call"
    return f"{value:+.2f}/call"


def render_leak(result: Any, what: str = "memory") -> str:
    """The failure of a leak check: growth per call, the judged series, sites and types."""
    names = ", ".join(f.metric for f in result.findings)
    lines = [
        f"{what} leaks: {names} grew over {result.judged} judged calls "
        f"({result.calls} calls in all, after warm-up and escalation)"
    ]
    for finding in result.findings:
        per_call = _per_call(finding.metric, finding.per_call)
        lines.append(f"  {finding.metric:<7}{per_call:>16}  {finding.reason}")
    growth = ", ".join(
        f"{metric} {_per_call(metric, value)}" for metric, value in result.growth.items() if value
    )
    if growth:
        lines.append(f"  net growth over the judged calls: {growth}")
    for metric in ("blocks", "bytes"):
        series = result.series.get(metric)
        if series:
            lines.append(f"  {metric:<7} {sparkline(series)}")
    if result.sites:
        lines.append(
            f"Where the growing memory is allocated (every allocation traced over "
            f"{result.explained_calls} more calls; per call):"
        )
        for site in result.sites:
            caller = f"  <- {_frame(site.stack[1])}" if len(site.stack) > 1 else ""
            name = f" in {site.frame.function}" if site.frame.function else ""
            lines.append(
                f"  {format_size(site.alive_bytes):>10}  {site.count:>6,} blocks  "
                f"{_frame(site.frame)}{name}{caller}"
            )
    if result.types:
        lines.append("Object types that grew (per call):")
        for row in result.types:
            lines.append(f"  {row.count:>+6,}  {format_size(row.bytes):>10}  {row.name}")
    if "native" in {f.metric for f in result.findings} and not result.sites:
        lines.append(
            "  (native heap growth: memory allocated by C code outside Python's allocators)"
        )
    if result.threads > 1:
        lines.append(
            f"Note: {result.threads - 1} other thread(s) were alive; readings are process-wide."
        )
    return "\n".join(lines)


def render_baseline_summary(outcome: Mapping[str, Sequence[str]], mode: str) -> list[str]:
    if not outcome or not any(outcome.values()):
        return []
    lines = []
    labels = (
        ("errors", "unreadable baseline files (never overwritten)"),
        ("regressed", "regressed beyond tolerance (failed)"),
        ("improved", "improved beyond tolerance (lower the baseline: --mem-baseline=update)"),
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
        ("updated", "baseline files written"),
    )
    for key, label in labels:
        names = outcome.get(key, ())
        if names:
            lines.append(f"{len(names)} {label}:")
            lines.extend(f"  {name}" for name in names[:20])
            if len(names) > 20:
                lines.append(f"  ... and {len(names) - 20} more")
    return lines


STEP_SUMMARY_LIMIT = 1024 * 1024


def step_summary_markdown(
    records: Iterable[TestRecord], outcome: Mapping[str, Sequence[str]], top: int
) -> str:
    records = list(records)
    parts = ["## pytest-memguard", ""]
    regressed = [r for r in records if r.get("baseline.status") == "regressed"]
    if regressed:
        parts += ["### Regressions", "", "| test | change |", "|---|---|"]
        parts += [f"| `{r.nodeid}` | {r.get('baseline.changes') or ''} |" for r in regressed]
        parts.append("")
    for key, title in (("new", "New (not in the baseline)"), ("stale", "Stale baseline entries")):
        names = outcome.get(key, ())
        if names:
            parts += [f"### {title}", ""] + [f"- `{n}`" for n in names] + [""]
    table = summary_table(records, top)
    if table:
        parts += ["### Top tests by peak memory", "", "```", *table, "```", ""]
    return "\n".join(parts) + "\n"


def append_step_summary(
    path: str, records: Iterable[TestRecord], outcome: Mapping[str, Sequence[str]], top: int
) -> None:
    """Append to GitHub's job summary, kept under its 1 MiB limit."""
    text = step_summary_markdown(records, outcome, top)
    encoded = text.encode("utf-8")
    if len(encoded) > STEP_SUMMARY_LIMIT - 1024:
        text = encoded[: STEP_SUMMARY_LIMIT - 1024].decode("utf-8", "ignore") + "\n\n(truncated)\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


MAX_ANNOTATIONS = 10


def github_annotations(records: Iterable[TestRecord]) -> list[str]:
    """At most ten ``::error`` workflow commands, one per regressed test."""
    lines = []
    for record in sorted(records, key=lambda r: r.nodeid):
        if record.get("baseline.status") == "regressed":
            path = record.nodeid.partition("::")[0]
            message = str(record.get("baseline.changes") or "").replace("\n", " ")
            lines.append(f"::error file={path},title=memory regression {record.nodeid}::{message}")
        if len(lines) >= MAX_ANNOTATIONS:
            break
    return lines


def render_soak(result: Any) -> str:
    verdict = result.verdict
    per_1000 = int(round(verdict.per_iteration * 1000))
    lines = [
        f"memory kept growing through a soak of {result.iterations:,} iterations: "
        f"{format_size(int(round(verdict.per_iteration)), signed=True)} per iteration "
        f"({format_size(per_1000, signed=True)} per 1,000) over the second half",
        "  window medians (quarters of the run): "
        + ", ".join(format_size(int(m)) for m in verdict.window_medians),
        f"  heap     {sparkline(result.heap)}",
    ]
    if result.private:
        lines.append(f"  private  {sparkline(result.private)}  (context; not judged)")
    lines.extend(render_sites(result.sites, alive_only=True))
    return "\n".join(lines)
