"""GitHub Actions output: the job's step summary (Markdown) and ``::error`` annotations on the
tests that regressed. Loaded only in a workflow (``GITHUB_STEP_SUMMARY``, ``GITHUB_ACTIONS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .report import TestRecord, summary_table

STEP_SUMMARY_LIMIT = 1024 * 1024


def escape_data(text: str) -> str:
    """A workflow command's message (GitHub's own escaping of ``%``, CR and LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: ``:`` and ``,`` would end it."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def code_cell(text: str) -> str:
    """Text as inline code in a Markdown table cell: a longer fence than any run of
    backticks in it, and ``|`` escaped (it would end the cell even inside code)."""
    text = text.replace("\n", " ").replace("|", "\\|")
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def text_cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")


def step_summary_markdown(
    records: Iterable[TestRecord], outcome: Mapping[str, Sequence[str]], top: int
) -> str:
    records = list(records)
    parts = ["## pytest-memguard", ""]
    regressed = [r for r in records if r.get("baseline.status") == "regressed"]
    if regressed:
        parts += ["### Regressions", "", "| test | change |", "|---|---|"]
        parts += [
            f"| {code_cell(r.nodeid)} | {text_cell(str(r.get('baseline.changes') or ''))} |"
            for r in regressed
        ]
        parts.append("")
    for key, title in (
        ("cold", "Not compared (first use in the test, no warm call)"),
        ("new", "New (not in the baseline)"),
        ("stale", "Stale baseline entries"),
        ("unstable", "Test functions whose parameter ids changed (never gated if every run)"),
    ):
        names = outcome.get(key, ())
        if names:
            parts += [f"### {title}", ""] + [f"- {code_cell(n)}" for n in names] + [""]
    table = summary_table(((r.nodeid, r.properties) for r in records), top)
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
            path = escape_property(record.nodeid.partition("::")[0])
            title = escape_property(f"memory regression {record.nodeid}")
            message = escape_data(str(record.get("baseline.changes") or ""))
            lines.append(f"::error file={path},title={title}::{message}")
        if len(lines) >= MAX_ANNOTATIONS:
            break
    return lines
