"""The ``memguard`` command: read baselines and compare reports outside pytest.

``memguard show [PATH]`` prints the baselines under PATH as a table. ``memguard diff OLD NEW``
compares two JSON reports or two baseline files and exits 1 when a gated figure regressed
beyond tolerance, so a CI job can gate on reports produced elsewhere (nightly runs, other
machines of the same interpreter version).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .baseline import DIRNAME, STORED, BaselineError, compare, load
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


def show(path: str) -> int:
    files = _baseline_files(path)
    if not files:
        print(f"no baseline files under {path} (they live in {DIRNAME}/ next to the tests)")
        return 0
    columns = ("allocations", "heap_peak", "retained", "peak")
    print(f"{'allocations':>12} {'heap_peak':>11} {'retained':>11} {'peak':>11}  test")
    for file in files:
        scopes = load(file)
        for scope in sorted(scopes):
            print(f"# {os.path.relpath(file)} [{scope}]")
            for key in sorted(scopes[scope]):
                entry = scopes[scope][key]
                cells = [format_metric(c, entry.get(c)) for c in columns]
                print(f"{cells[0]:>12} {cells[1]:>11} {cells[2]:>11} {cells[3]:>11}  {key}")
    return 0


def _figures(path: str) -> Figures:
    """Test -> figures from a JSON report or a baseline file (scope-qualified keys)."""
    with open(path, encoding="utf-8") as handle:
        try:
            document: Any = json.load(handle)
        except json.JSONDecodeError as exc:
            raise BaselineError(f"{path}: not JSON: {exc}") from None
    if isinstance(document, dict) and isinstance(document.get("tests"), list):
        scope = document.get("scope", "")
        return {
            f"[{scope}] {t['nodeid']}": {
                k: v for k, v in t.get("metrics", {}).items() if isinstance(v, int)
            }
            for t in document["tests"]
        }
    scopes = load(path)
    return {
        f"[{scope}] {key}": {k: v for k, v in entry.items() if k in STORED}
        for scope, entries in scopes.items()
        for key, entry in entries.items()
    }


def diff(old: str, new: str, tolerance: Tolerance, metrics: Sequence[str]) -> int:
    before, after = _figures(old), _figures(new)
    regressions = improvements = 0
    for test in sorted(set(before) | set(after)):
        if test not in after:
            print(f"gone      {test}")
            continue
        if test not in before:
            print(f"new       {test}")
            continue
        result = compare(before[test], after[test], metrics, tolerance)
        for change in result.regressions:
            regressions += 1
            print(f"REGRESSED {test}: {change.describe()}")
        for change in result.improvements:
            improvements += 1
            print(f"improved  {test}: {change.describe()}")
    print(
        f"{regressions} regression(s), {improvements} improvement(s) beyond tolerance "
        f"{tolerance} over {', '.join(metrics)}"
    )
    return 1 if regressions else 0


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
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            return show(args.path)
        try:
            tolerance = Tolerance.parse(args.tolerance, "--tolerance")
        except ToleranceError as exc:
            parser.error(str(exc))
        metrics = tuple(args.metrics.replace(",", " ").split())
        unknown = [m for m in metrics if m not in GATEABLE]
        if unknown:
            parser.error(f"--metrics: unknown {', '.join(unknown)}; expected some of {GATEABLE}")
        return diff(args.old, args.new, tolerance, metrics)
    except (BaselineError, OSError) as exc:
        print(f"memguard: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
