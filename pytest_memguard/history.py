"""Memory of tests over a project's history, read from the committed baseline files.

A baseline file changes only when someone ran ``--mem-baseline=update`` and committed it, so
the commits that touched ``__memguard__/*.json`` are the points where the project's recorded
memory moved. ``read_history`` walks them (oldest first) with two git processes: ``git log``
for the commits and one ``git cat-file --batch`` for every file at every commit. Figures are
compared only within one interpreter scope, as everywhere else: heap bytes and allocation
counts differ between Python versions.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from collections.abc import Sequence
from typing import NamedTuple

from .baseline import DIRNAME, BaselineError, parse
from .tolerance import Tolerance


class Commit(NamedTuple):
    sha: str
    when: int  # commit time, seconds since the epoch
    subject: str

    @property
    def day(self) -> str:
        """The commit's date, UTC (``2026-12-05``)."""
        return datetime.datetime.fromtimestamp(self.when, datetime.timezone.utc).strftime(
            "%Y-%m-%d"
        )


class Move(NamedTuple):
    """A commit that moved a test's figure beyond tolerance."""

    commit: Commit
    before: int
    after: int


class TestHistory(NamedTuple):
    nodeid: str
    values: list[int | None]  # one per commit of the history; None where there was no entry
    moves: list[Move]

    @property
    def first(self) -> int | None:
        return next((v for v in self.values if v is not None), None)

    @property
    def last(self) -> int | None:
        return next((v for v in reversed(self.values) if v is not None), None)

    @property
    def change(self) -> float:
        """Relative change from the first recorded value to the last (0 where either is 0)."""
        first, last = self.first, self.last
        if not first or last is None:
            return 0.0
        return (last - first) / first


class History(NamedTuple):
    scope: str
    metric: str
    commits: list[Commit]  # oldest first
    tests: list[TestHistory]
    problems: list[str]  # files that could not be read at a commit (skipped)


class HistoryError(Exception):
    pass


def _git(directory: str, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["git", "-C", directory, *args], input=stdin, capture_output=True, check=False
        )
    except FileNotFoundError:
        raise HistoryError("git is not installed; the history is read from git") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise HistoryError(f"git {args[0]} in {directory}: {message[-1] if message else 'failed'}")
    return done.stdout


def _cat_files(top: str, requests: Sequence[str]) -> list[bytes | None]:
    """The contents of ``commit:path`` objects, in order (None where missing)."""
    if not requests:
        return []
    out = _git(top, "cat-file", "--batch", stdin="".join(f"{r}\n" for r in requests).encode())
    contents: list[bytes | None] = []
    position = 0
    for _ in requests:
        end = out.index(b"\n", position)
        header = out[position:end].split()
        position = end + 1
        if len(header) != 3:  # "<request> missing"
            contents.append(None)
            continue
        size = int(header[2])
        contents.append(out[position : position + size])
        position += size + 1
    return contents


def _nodeid(path: str, key: str) -> str:
    """The test's node id from its baseline file (``tests/__memguard__/test_x.json``) and key."""
    directory, filename = os.path.split(path)
    module = os.path.join(os.path.dirname(directory), filename[: -len(".json")] + ".py")
    return f"{module}::{key}"


def read_history(
    path: str, metric: str, scope: str, tolerance: Tolerance, limit: int = 50
) -> History:
    """The last ``limit`` commits that changed a baseline file under ``path``, and every test's
    ``metric`` in ``scope`` at each of them."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    top = _git(directory, "rev-parse", "--show-toplevel").decode().strip()
    relative = os.path.relpath(os.path.abspath(path), top)
    under = "" if relative == "." else relative.rstrip("/") + "/"
    pathspec = f":(glob){under}**/{DIRNAME}/*.json"
    log = _git(top, "log", f"-n{limit}", "--format=%H%x09%ct%x09%s", "--", pathspec)
    commits = []
    for line in reversed(log.decode(errors="replace").splitlines()):
        sha, when, subject = (line.split("\t", 2) + ["", ""])[:3]
        commits.append(Commit(sha, int(when or 0), subject))
    files_at: list[list[str]] = []
    for commit in commits:
        listing = _git(top, "ls-tree", "-r", "--name-only", commit.sha, "--", under or ".")
        files_at.append(
            [
                name
                for name in listing.decode(errors="replace").splitlines()
                if f"/{DIRNAME}/" in f"/{name}" and name.endswith(".json")
            ]
        )
    requests = [f"{c.sha}:{name}" for c, names in zip(commits, files_at) for name in names]
    contents = iter(_cat_files(top, requests))
    values: dict[str, list[int | None]] = {}
    problems = []
    for index, (commit, names) in enumerate(zip(commits, files_at)):
        for name in names:
            data = next(contents)
            if data is None:
                continue
            try:
                scopes = parse(f"{name} at {commit.sha[:10]}", data)
            except BaselineError as exc:
                problems.append(str(exc))
                continue
            for key, entry in scopes.get(scope, {}).items():
                if metric in entry:
                    series = values.setdefault(_nodeid(name, key), [None] * len(commits))
                    series[index] = entry[metric]
    tests = [
        TestHistory(nodeid, series, _moves(commits, series, metric, tolerance))
        for nodeid, series in sorted(values.items())
    ]
    return History(scope, metric, commits, tests, problems)


def _moves(
    commits: Sequence[Commit], series: Sequence[int | None], metric: str, tolerance: Tolerance
) -> list[Move]:
    moves = []
    previous: int | None = None
    for commit, value in zip(commits, series):
        if value is None:
            continue
        if previous is not None:
            allowance = tolerance.allowance(previous, metric == "allocations")
            if abs(value - previous) > allowance:
                moves.append(Move(commit, previous, value))
        previous = value
    return moves


def scopes_in(path: str) -> list[str]:
    """The interpreter scopes of the baseline files under ``path`` in the working tree, most
    entries first (to choose one when the running interpreter's is not among them)."""
    from .baseline import load

    counts: dict[str, int] = {}
    for directory, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if os.path.basename(directory) != DIRNAME:
            continue
        for filename in filenames:
            if filename.endswith(".json"):
                try:
                    scopes = load(os.path.join(directory, filename))
                except BaselineError:
                    continue
                for scope, entries in scopes.items():
                    counts[scope] = counts.get(scope, 0) + len(entries)
    return sorted(counts, key=lambda s: (-counts[s], s))
