"""Command-line options and ini keys: declared once, in pairs, with one help text each.

Precedence is ini < command line < marker. Values are parsed here, once; a bad value is a usage
error (exit code 4) that names the option or ini key it came from.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .tolerance import Tolerance, ToleranceError

if TYPE_CHECKING:
    from .budget import Budget  # imported by resolve() when a default budget is set

BASELINE_MODES = ("check", "update", "off")
# Internal option of a spawned --mem-isolate child: where to write its reports.
CHILD_OPTION = "--memguard-child-reports"
SCOPES = ("call", "test")
DEFAULT_TOLERANCE = "5%+48KiB"
# Tolerance.parse(DEFAULT_TOLERANCE), written out so that no pattern is compiled at import (a
# test checks that the two agree).
DEFAULT_TOLERANCE_VALUE = Tolerance(relative=0.05, absolute=48 * 1024)
DEFAULT_BASELINE_METRICS = ("allocations", "heap_peak", "retained")
GATEABLE = ("peak", "heap_peak", "retained", "private", "allocations")


class OptionError(ValueError):
    pass


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        text = value.strip().lower()
        if text not in choices:
            raise OptionError(f"{value!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise OptionError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise OptionError(f"{value!r} must be at least {minimum}")
        return number

    return parse


def _bool(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise OptionError(f"{value!r} is not true or false")


def _tolerance(value: str) -> Tolerance:
    try:
        return Tolerance.parse(value, "tolerance")
    except ToleranceError as exc:
        raise OptionError(str(exc).replace("invalid tolerance ", "")) from None


def _metrics(value: str) -> tuple[str, ...]:
    names = tuple(n for n in str(value).replace(",", " ").split() if n)
    bad = [n for n in names if n not in GATEABLE]
    if bad:
        raise OptionError(
            f"unknown metric {', '.join(bad)}; expected some of {', '.join(GATEABLE)}"
        )
    return names


def _path(value: str) -> str:
    if not str(value).strip():
        raise OptionError("an empty path")
    return str(value)


@dataclass(frozen=True)
class Option:
    ini: str
    flag: str | None
    help: str
    parse: Callable[[str], Any]
    default: Any
    metavar: str = ""
    is_flag: bool = False


OPTIONS: tuple[Option, ...] = (
    Option(
        "mem_baseline",
        "--mem-baseline",
        "baselines: 'check' fails tests whose memory regressed beyond tolerance (the default "
        "where baseline files exist), 'update' records the tests that ran and passed, 'off'.",
        _choice(BASELINE_MODES),
        None,
        "{check,update,off}",
    ),
    Option(
        "mem_tolerance",
        "--mem-tolerance",
        f"slack before a baseline regression fails, relative and absolute, e.g. 10%+64KiB "
        f"(default {DEFAULT_TOLERANCE}; the absolute part applies to byte metrics, counts "
        "get 64 calls unless the spec adds e.g. '+100 allocations').",
        _tolerance,
        DEFAULT_TOLERANCE_VALUE,
        "SPEC",
    ),
    Option(
        "mem_leak_check",
        "--mem-leak-check",
        "check every test for memory that grows from run to run (as if marked mem_leak_check): "
        "after its own run, the whole test runs again and again.",
        _bool,
        False,
        is_flag=True,
    ),
    Option(
        "mem_leak_iterations",
        "--mem-leak-iterations",
        "measured runs per leak check (default 30, after a screen that passes a test whose memory "
        "stays still for 5 runs, within a time budget; a number given here is always run in full, "
        "without screen or budget; escalates when growth is suspected).",
        _int_at_least(1),
        None,
        "N",
    ),
    Option(
        "mem_leak_warmup",
        "--mem-leak-warmup",
        "unjudged runs before a leak check measures, after the test's own run (default 2).",
        _int_at_least(0),
        2,
        "N",
    ),
    Option(
        "mem_report",
        "--mem-report",
        "write a JSON report of every measured test to PATH.",
        _path,
        None,
        "PATH",
    ),
    Option(
        "mem_html",
        "--mem-html",
        "write a self-contained HTML report (sortable table, failures, charts) to PATH.",
        _path,
        None,
        "PATH",
    ),
    Option(
        "mem_isolate",
        "--mem-isolate",
        "run each measured test in a fresh child process for numbers that do not depend on "
        "which tests ran before.",
        _bool,
        False,
        is_flag=True,
    ),
    Option(
        "mem_top",
        "--mem-top",
        "rows in the terminal summary of the most memory-hungry tests (default 5; 0 hides it).",
        _int_at_least(0),
        5,
        "N",
    ),
    Option(
        "mem_default_budget",
        None,
        "a mem_budget for every test that has no mem_budget marker, e.g. '200MB' or "
        "'peak=200MB, retained=10MB'.",
        str,
        None,
    ),
    Option(
        "mem_scope",
        None,
        "what a test's window covers: 'call' (the test function; default) or 'test' (setup, "
        "call and teardown, fixtures included).",
        _choice(SCOPES),
        "call",
    ),
    Option(
        "mem_baseline_metrics",
        None,
        "metrics that baselines gate on (default: allocations heap_peak retained; peak and "
        "private are recorded for information unless listed).",
        _metrics,
        DEFAULT_BASELINE_METRICS,
    ),
)


@dataclass(frozen=True)
class Settings:
    mem_baseline: str | None
    mem_tolerance: Tolerance
    mem_leak_check: bool
    mem_leak_iterations: int | None  # None: the default, with the screen
    mem_leak_warmup: int
    mem_report: str | None
    mem_html: str | None
    mem_isolate: bool
    mem_top: int
    mem_default_budget: Budget | None
    mem_scope: str
    mem_baseline_metrics: tuple[str, ...]


def cli_type(option: Option) -> Callable[[str], Any]:
    """argparse ``type=``: argparse turns ArgumentTypeError into a usage error naming the flag."""

    def parse(value: str) -> Any:
        try:
            return option.parse(value)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def resolve(cli: dict[str, Any], ini: dict[str, Any]) -> Settings:
    """Command line over ini over defaults; raises OptionError naming the ini key at fault."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = cli.get(option.ini)
        if value is None:
            raw = ini.get(option.ini)
            if raw in (None, "", [], ()):
                value = option.default
            else:
                text = " ".join(raw) if isinstance(raw, list) else str(raw)
                try:
                    value = option.parse(text)
                except OptionError as exc:
                    raise OptionError(f"invalid ini value for {option.ini}: {exc}") from None
        values[option.ini] = value
    spec = values["mem_default_budget"]
    if isinstance(spec, str):
        from .budget import BudgetError, parse_budget_spec

        try:
            values["mem_default_budget"] = parse_budget_spec(
                spec, "every unmarked test", "mem_default_budget"
            )
        except BudgetError as exc:
            raise OptionError(f"invalid ini value for mem_default_budget: {exc}") from None
    return Settings(**values)
