"""The text of failures: a budget exceeded, a leak found, a soak that kept growing.

Each message says where, not only how much: the top allocation sites (file:line, bytes,
blocks) and the object types that grew, as a heap summary does. Loaded when a test fails, or a
leak check or soak reports; a passing run never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .census import type_name
from .measurement import format_metric
from .retainers import render_retainers
from .units import format_size

if TYPE_CHECKING:
    from .census import Site, TypeGrowth
    from .measurement import Measurement


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


def render_children(m: Measurement) -> list[str]:
    """The processes the test started, with their private memory (watched with
    ``children=True``)."""
    if not m.children:
        return []
    lines = ["Processes the test started (private memory: highest sample, every 5 ms; at the end):"]
    for child in m.children:
        end = "exited" if child.private is None else format_size(child.private)
        lines.append(
            f"  pid {child.pid:<7} peak {format_size(child.peak):>10}  at the end {end:>10}  "
            f"{child.name}"
        )
    return lines


def render_failure(headlines: Iterable[str], m: Measurement, scale: int = 0) -> str:
    lines = list(headlines)
    if m.kernel_peak is not None and m.heap_peak is not None:
        lines.append(
            f"  (peak is the larger of the kernel high-water mark {format_size(m.kernel_peak)} "
            f"and the Python-heap peak {format_size(m.heap_peak)})"
        )
    lines.append(render_measurement(m))
    lines.extend(render_children(m))
    lines.extend(render_sites(m.sites, m.sites_alive))
    lines.extend(render_types(m.types, scale))
    if m.retainers is not None:
        lines.extend(render_retainers(m.retainers))
    return "\n".join(lines)


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


def per_call(metric: str, value: float, unit: str = "call") -> str:
    """Growth of ``metric`` per call (or per ``unit``), signed: ``+16 B/run``, ``-0.50/call``."""
    if metric in ("bytes", "native"):
        return f"{format_size(int(round(value)), signed=True)}/{unit}"
    return f"{value:+.2f}/{unit}"


def render_leak(result: Any, what: str = "memory", unit: str = "call") -> str:
    """The failure of a leak check: growth per call (``unit``: a test's whole repetition is a
    "run"), the judged series, sites and types."""
    names = ", ".join(f.metric for f in result.findings)
    how = "after warm-up and escalation" if result.known is None else "after warm-up"
    lines = [
        f"{what} leaks: {names} grew over {result.judged} judged {unit}s "
        f"({result.calls} {unit}s in all, {how})"
    ]
    for finding in result.findings:
        rate = per_call(finding.metric, finding.per_call, unit)
        lines.append(f"  {finding.metric:<7}{rate:>16}  {finding.reason.replace('call', unit)}")
    growth = ", ".join(
        f"{metric} {per_call(metric, value, unit)}"
        for metric, value in result.growth.items()
        if value
    )
    if growth:
        lines.append(f"  net growth over the judged {unit}s: {growth}")
    for metric in ("blocks", "bytes"):
        series = result.series.get(metric)
        if series:
            lines.append(f"  {metric:<7} {sparkline(series)}")
    if result.known is not None:
        known = result.known
        rate = result.known_entries / max(1, result.judged)
        entries = "entry" if rate == 1 else "entries"
        kind = type_name(type(known.container))
        lines += [
            f"The leak explained under {known.first}, not explained again (its container "
            f"gained an entry a {unit} or more here):",
            f"  {known.path}  ({kind}, {rate:+.1f} {entries} per {unit})",
        ]
    if result.sites:
        lines.append(
            f"Where the growing memory is allocated (every allocation traced over "
            f"{result.explained_calls} more {unit}s; per {unit}):"
        )
        for site in result.sites:
            caller = f"  <- {_frame(site.stack[1])}" if len(site.stack) > 1 else ""
            name = f" in {site.frame.function}" if site.frame.function else ""
            lines.append(
                f"  {format_size(site.alive_bytes):>10}  {site.count:>6,} blocks  "
                f"{_frame(site.frame)}{name}{caller}"
            )
    if result.types:
        lines.append(f"Object types that grew (per {unit}):")
        for row in result.types:
            lines.append(f"  {row.count:>+6,}  {format_size(row.bytes):>10}  {row.name}")
    if result.retainers is not None:
        lines.extend(render_retainers(result.retainers, unit))
    if "native" in {f.metric for f in result.findings} and not result.sites and not result.known:
        lines.append(
            "  (native heap growth: memory allocated by C code outside Python's allocators)"
        )
    if result.threads > 1:
        lines.append(
            f"Note: {result.threads - 1} other thread(s) were alive; readings are process-wide."
        )
    return "\n".join(lines)


def soak_verdict(verdict: Any, iterations: int, whose: str = "memory") -> list[str]:
    """The first lines of a soak that kept growing (of this process, or ``whose``)."""
    per_1000 = int(round(verdict.per_iteration * 1000))
    return [
        f"{whose} kept growing through a soak of {iterations:,} iterations: "
        f"{format_size(int(round(verdict.per_iteration)), signed=True)} per iteration "
        f"({format_size(per_1000, signed=True)} per 1,000) over the second half",
        "  window medians (quarters of the run): "
        + ", ".join(format_size(int(m)) for m in verdict.window_medians),
    ]


def render_soak(result: Any) -> str:
    lines = [
        *soak_verdict(result.verdict, result.iterations),
        f"  heap     {sparkline(result.heap)}",
    ]
    if result.private:
        lines.append(f"  private  {sparkline(result.private)}  (context; not judged)")
    lines.extend(render_sites(result.sites, alive_only=True))
    if result.retainers is not None:
        lines.extend(render_retainers(result.retainers, "iteration"))
    return "\n".join(lines)
