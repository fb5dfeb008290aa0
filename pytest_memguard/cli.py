"""The ``memguard`` command: read baselines and compare reports outside pytest.

``memguard show [PATH]`` prints the baselines under PATH as a table. ``memguard diff OLD NEW``
compares two JSON reports or two baseline files and exits 1 when a gated figure regressed
beyond tolerance, so a CI job can gate on reports produced elsewhere (nightly runs, other
machines of the same interpreter version); ``--format=markdown`` writes it as a table for a
pull-request comment. ``memguard html REPORT`` makes the HTML report of a saved JSON report.
``memguard history [PATH]`` shows tests' figures over the git history of their baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from . import __version__
from .baseline import DIRNAME, STORED, BaselineError, compare, load
from .history import HistoryError
from .measurement import format_metric
from .options import DEFAULT_BASELINE_METRICS, DEFAULT_TOLERANCE, GATEABLE
from .tolerance import Tolerance, ToleranceError

Figures = dict[str, dict[str, int]]


def _baseline_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    found: list[str] = []
    for directory, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "node_modules")
        if os.path.basename(directory) == DIRNAME:
            names = sorted(f for f in filenames if f.endswith(".json"))
            found.extend(os.path.join(directory, f) for f in names)
    return found


def _printable(text: str) -> str:
    """``text`` with control characters escaped: a key from a file of unknown origin must not
    move the cursor or recolour the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def show(path: str) -> int:
    if not os.path.exists(path):
        raise BaselineError(f"{path}: no such file or directory")
    files = _baseline_files(path)
    if not files:
        print(f"no baseline files under {path} (they live in {DIRNAME}/ next to the tests)")
        return 0
    columns = ("allocations", "heap_peak", "retained", "peak")
    loaded = [(file, load(file)) for file in files]  # every file readable before any line
    print(f"{'allocations':>12} {'heap_peak':>11} {'retained':>11} {'peak':>11}  test")
    for file, scopes in loaded:
        for scope in sorted(scopes):
            print(f"# {_printable(os.path.relpath(file))} [{_printable(scope)}]")
            for key in sorted(scopes[scope]):
                entry = scopes[scope][key]
                cells = [format_metric(c, entry.get(c)) for c in columns]
                print(
                    f"{cells[0]:>12} {cells[1]:>11} {cells[2]:>11} {cells[3]:>11}  "
                    f"{_printable(key)}"
                )
    return 0


def _figures(path: str) -> Figures:
    """Test -> figures from a JSON report or a baseline file (scope-qualified keys)."""
    try:
        with open(path, encoding="utf-8") as handle:
            document: Any = json.load(handle)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep
        raise BaselineError(f"{path}: not a JSON report or baseline file: {exc}") from None
    if isinstance(document, dict) and "tests" in document:
        return _report_figures(path, document)
    scopes = load(path)
    return {
        f"[{scope}] {key}": {k: v for k, v in entry.items() if k in STORED}
        for scope, entries in scopes.items()
        for key, entry in entries.items()
    }


def _report_figures(path: str, document: dict[str, Any]) -> Figures:
    scope, tests = document.get("scope", ""), document["tests"]
    if not isinstance(scope, str) or not isinstance(tests, list):
        raise BaselineError(f"{path}: expected a report with a scope string and a tests list")
    figures: Figures = {}
    for index, test in enumerate(tests):
        nodeid = test.get("nodeid") if isinstance(test, dict) else None
        metrics = test.get("metrics", {}) if isinstance(test, dict) else None
        if not isinstance(nodeid, str) or not isinstance(metrics, dict):
            raise BaselineError(
                f"{path}: tests[{index}]: expected an object with a nodeid string and a "
                f"metrics object"
            )
        for metric, value in metrics.items():
            if type(value) is int and not 0 <= value < 2**63:
                raise BaselineError(
                    f"{path}: tests[{index}] {_printable(str(metric))}: expected a byte or "
                    f"call count from 0 to 2**63, got {_short(value)}"
                )
        figures[f"[{scope}] {nodeid}"] = {k: v for k, v in metrics.items() if type(v) is int}
    return figures


def _short(value: int) -> str:
    digits = len(str(abs(value)))
    return str(value) if digits <= 24 else f"a {digits}-digit number"


def _scopes(figures: Figures) -> set[str]:
    return {test[1 : test.index("]")] for test in figures if test.startswith("[")}


class Difference(NamedTuple):
    kind: str  # "regressed", "improved", "new", "gone"
    test: str
    what: str  # the change, described; empty for new and gone tests


def differences(
    old: str, new: str, tolerance: Tolerance, metrics: Sequence[str]
) -> list[Difference]:
    before, after = _figures(old), _figures(new)
    if before and after and not _scopes(before) & _scopes(after):
        raise BaselineError(
            f"{old} has figures of {', '.join(sorted(_scopes(before)))} and {new} of "
            f"{', '.join(sorted(_scopes(after)))}: heap figures compare only within one "
            "interpreter version"
        )
    found = []
    for test in sorted(set(before) | set(after)):
        if test not in after:
            found.append(Difference("gone", test, ""))
        elif test not in before:
            found.append(Difference("new", test, ""))
        else:
            result = compare(before[test], after[test], metrics, tolerance)
            found += [Difference("regressed", test, c.describe()) for c in result.regressions]
            found += [Difference("improved", test, c.describe()) for c in result.improvements]
    return found


_LABELS = {
    "regressed": "REGRESSED",
    "improved": "improved ",
    "new": "new      ",
    "gone": "gone     ",
}


def diff(
    old: str, new: str, tolerance: Tolerance, metrics: Sequence[str], format: str = "text"
) -> int:
    found = differences(old, new, tolerance, metrics)
    regressions = sum(d.kind == "regressed" for d in found)
    improvements = sum(d.kind == "improved" for d in found)
    if format == "markdown":
        print(markdown(found, tolerance, metrics))
    else:
        for d in found:
            print(f"{_LABELS[d.kind]} {_printable(d.test)}" + (f": {d.what}" if d.what else ""))
        print(
            f"{regressions} regression(s), {improvements} improvement(s) beyond tolerance "
            f"{tolerance} over {', '.join(metrics)}"
        )
    return 1 if regressions else 0


# GitHub refuses a comment over 65,536 characters; the table stops well before.
MARKDOWN_LIMIT = 60_000


def markdown(found: Sequence[Difference], tolerance: Tolerance, metrics: Sequence[str]) -> str:
    """A pull-request comment: a line of counts, then a table, regressions first; rows that
    would pass ``MARKDOWN_LIMIT`` are counted instead."""
    from .github import code_cell, text_cell

    counts = {kind: sum(d.kind == kind for d in found) for kind in _LABELS}
    head = [
        "### memguard: memory against the baseline",
        "",
        f"**{counts['regressed']} regressed**, {counts['improved']} improved beyond tolerance "
        f"{tolerance} over {', '.join(metrics)}; {counts['new']} new, {counts['gone']} gone.",
    ]
    rank = {"regressed": 0, "improved": 1, "new": 2, "gone": 3}
    rows = sorted(found, key=lambda d: rank[d.kind])
    if not rows:
        return "\n".join(head)
    lines = [*head, "", "| | test | change |", "|---|---|---|"]
    size = sum(len(line) + 1 for line in lines)
    for index, d in enumerate(rows):
        mark = {"regressed": ":x:", "improved": ":white_check_mark:"}.get(d.kind, d.kind)
        line = f"| {mark} | {code_cell(d.test)} | {text_cell(d.what)} |"
        if size + len(line) + 1 > MARKDOWN_LIMIT - 100:  # room for the line that counts
            lines.append(f"\n... and {len(rows) - index} more (see the job's log)")
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def html_page(report: str, output: str) -> int:
    """``memguard html REPORT.json -o PAGE.html``: the HTML report of a saved JSON report."""
    from .html_report import render_html
    from .report import atomic_write

    try:
        with open(report, encoding="utf-8") as handle:
            document: Any = json.load(handle)
    except (ValueError, RecursionError) as exc:
        raise BaselineError(f"{report}: not a JSON report: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("tests"), list):
        raise BaselineError(f"{report}: expected a JSON report (an object with a tests list)")
    atomic_write(output, render_html(document))
    print(f"wrote {output}")
    return 0


def history(
    path: str,
    metric: str,
    scope: str | None,
    tolerance: Tolerance,
    limit: int,
    top: int,
    html: str | None,
) -> int:
    """``memguard history``: each test's figure over the commits that changed its baseline."""
    from .history import read_history, scopes_in
    from .measurement import interpreter_scope
    from .messages import sparkline

    if not os.path.exists(path):
        raise BaselineError(f"{path}: no such file or directory")
    if scope is None:
        found = scopes_in(path)
        scope = interpreter_scope()
        if found and scope not in found:
            print(f"(no {scope} figures in the working tree's baselines: showing {found[0]})")
            scope = found[0]
    found_history = read_history(path, metric, scope, tolerance, limit)
    commits = found_history.commits
    for problem in found_history.problems:
        print(f"skipped: {_printable(problem)}")
    if not commits:
        print(f"no commits changed a baseline file under {path}")
        return 0

    print(
        f"{metric} in {scope} over {len(commits)} commits that changed baselines "
        f"({commits[0].sha[:10]} {commits[0].day} .. {commits[-1].sha[:10]} "
        f"{commits[-1].day})"
    )
    moved = [t for t in found_history.tests if t.moves]
    moved.sort(key=lambda t: (-abs(t.change), t.nodeid))
    print(
        f"{len(moved)} of {len(found_history.tests)} tests moved beyond tolerance {tolerance}"
        + (":" if moved else ".")
    )
    for test in moved[:top]:
        values = [v for v in test.values if v is not None]
        first = format_metric(metric, test.first)
        last = format_metric(metric, test.last)
        print(
            f"  {sparkline(values, width=24):<24}  {first} -> {last} ({test.change:+.1%})  "
            f"{_printable(test.nodeid)}"
        )
        for move in test.moves:
            print(
                f"      {move.commit.sha[:10]} {format_metric(metric, move.before)} -> "
                f"{format_metric(metric, move.after)}  {_printable(move.commit.subject)}"
            )
    if len(moved) > top:
        print(f"  ... and {len(moved) - top} more (--top)")
    if html is not None:
        from .html_report import render_history_html
        from .report import atomic_write

        atomic_write(html, render_history_html(found_history))
        print(f"wrote {html}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memguard", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    show_cmd = commands.add_parser("show", help="print baselines as a table")
    show_cmd.add_argument("path", nargs="?", default=".", help="a baseline file or a directory")
    diff_cmd = commands.add_parser(
        "diff", help="compare two reports or baseline files; exit 1 on regressions"
    )
    diff_cmd.add_argument("old")
    diff_cmd.add_argument("new")
    diff_cmd.add_argument(
        "--tolerance",
        default=DEFAULT_TOLERANCE,
        help=f"default {DEFAULT_TOLERANCE}".replace("%", "%%"),  # argparse %-formats help
    )
    diff_cmd.add_argument(
        "--metrics",
        default=" ".join(DEFAULT_BASELINE_METRICS),
        help=f"metrics to gate on (of: {', '.join(GATEABLE)})",
    )
    diff_cmd.add_argument(
        "--format",
        choices=("text", "markdown"),
        default="text",
        help="markdown: a table for a pull-request comment, regressions first",
    )
    html_cmd = commands.add_parser("html", help="make the HTML report of a saved JSON report")
    html_cmd.add_argument("report", help="a JSON report written by --mem-report")
    html_cmd.add_argument("-o", "--output", default="memguard.html", help="default memguard.html")
    history_cmd = commands.add_parser(
        "history", help="tests' figures over the git history of their baseline files"
    )
    history_cmd.add_argument("path", nargs="?", default=".", help="a directory in a git checkout")
    history_cmd.add_argument(
        "--metric", default="heap_peak", choices=STORED, help="default heap_peak"
    )
    history_cmd.add_argument(
        "--scope", default=None, help="interpreter scope, e.g. cpython-3.12 (default: this one)"
    )
    history_cmd.add_argument(
        "--tolerance",
        default=DEFAULT_TOLERANCE,
        help=f"a move beyond this is listed; default {DEFAULT_TOLERANCE}".replace("%", "%%"),
    )
    history_cmd.add_argument("--limit", type=int, default=50, help="commits to read (default 50)")
    history_cmd.add_argument("--top", type=int, default=20, help="tests to list (default 20)")
    history_cmd.add_argument("--html", default=None, help="also write the history as HTML here")
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            return show(args.path)
        if args.command == "html":
            return html_page(args.report, args.output)
        if args.command == "history":
            try:
                history_tolerance = Tolerance.parse(args.tolerance, "--tolerance")
            except ToleranceError as exc:
                parser.error(str(exc))
            if args.limit < 1 or args.top < 1:
                parser.error("--limit and --top: expected a number of at least 1")
            return history(
                args.path,
                args.metric,
                args.scope,
                history_tolerance,
                args.limit,
                args.top,
                args.html,
            )
        try:
            tolerance = Tolerance.parse(args.tolerance, "--tolerance")
        except ToleranceError as exc:
            parser.error(str(exc))
        metrics = tuple(args.metrics.replace(",", " ").split())
        unknown = [m for m in metrics if m not in GATEABLE]
        if unknown:
            parser.error(f"--metrics: unknown {', '.join(unknown)}; expected some of {GATEABLE}")
        return diff(args.old, args.new, tolerance, metrics, args.format)
    except (BaselineError, HistoryError, OSError) as exc:
        print(f"memguard: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
