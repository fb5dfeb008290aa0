"""``memguard history``: tests' figures over the commits that changed their baseline files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_memguard.baseline import dumps
from pytest_memguard.cli import main
from pytest_memguard.history import read_history
from pytest_memguard.tolerance import Tolerance

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

SCOPE = "cpython-3.11"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.org",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.org",
            "GIT_AUTHOR_DATE": "2026-11-01T12:00:00Z",
            "GIT_COMMITTER_DATE": "2026-11-01T12:00:00Z",
            "HOME": str(repo),
        },
    )


def _commit(repo: Path, message: str, entries: dict[str, int], other: int = 100) -> None:
    path = repo / "tests" / "__memguard__" / "test_parse.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    scopes = {SCOPE: {key: {"heap_peak": value} for key, value in entries.items()}}
    scopes["cpython-3.12"] = {"test_a": {"heap_peak": other}}
    path.write_text(dumps(scopes))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    _commit(tmp_path, "record baselines", {"test_a": 100_000, "test_b": 50_000})
    (tmp_path / "README").write_text("no baselines here")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "not about memory")
    _commit(tmp_path, "cache parse results", {"test_a": 400_000, "test_b": 50_500})
    _commit(tmp_path, "trim the cache", {"test_a": 200_000, "test_b": 50_000, "test_c": 1})
    return tmp_path


def test_the_history_lists_each_commit_that_moved_a_test(repo: Path) -> None:
    found = read_history(str(repo), "heap_peak", SCOPE, Tolerance(0.05, 0))
    assert [c.subject for c in found.commits] == [
        "record baselines",
        "cache parse results",
        "trim the cache",
    ]  # the commit that changed no baseline is not a point
    tests = {t.nodeid: t for t in found.tests}
    assert set(tests) == {
        "tests/test_parse.py::test_a",
        "tests/test_parse.py::test_b",
        "tests/test_parse.py::test_c",
    }
    a = tests["tests/test_parse.py::test_a"]
    assert a.values == [100_000, 400_000, 200_000]
    assert [(m.commit.subject, m.before, m.after) for m in a.moves] == [
        ("cache parse results", 100_000, 400_000),
        ("trim the cache", 400_000, 200_000),
    ]
    assert a.change == pytest.approx(1.0)
    assert tests["tests/test_parse.py::test_b"].moves == []  # 1% is within 5%
    assert tests["tests/test_parse.py::test_c"].values == [None, None, 1]


def test_the_command_prints_a_table_and_writes_html(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = repo / "history.html"
    args = ["history", str(repo), "--scope", SCOPE, "--tolerance", "5%", "--html", str(page)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "heap_peak in cpython-3.11 over 3 commits that changed baselines" in out
    assert "1 of 3 tests moved beyond tolerance 5%:" in out
    assert re.search(
        r"▁█▃\s+97\.7 KiB -> 195\.3 KiB \(\+100\.0%\)  tests/test_parse\.py::test_a", out
    )
    assert re.search(r"[0-9a-f]{10} 97\.7 KiB -> 390\.6 KiB  cache parse results", out)
    text = page.read_text()
    assert text.count('data-points="3"') == 1  # test_a's chart, one point a commit
    assert "trim the cache" in text


def test_another_scope_is_shown_only_when_asked(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", str(repo), "--scope", "cpython-3.12"]) == 0
    assert "0 of 1 tests moved beyond tolerance" in capsys.readouterr().out


def test_a_corrupt_file_at_one_commit_is_skipped_and_said(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "tests" / "__memguard__" / "test_parse.json").write_text("{")
    _git(repo, "commit", "-q", "-am", "oops")
    assert main(["history", str(repo), "--scope", SCOPE]) == 0
    out = capsys.readouterr().out
    assert re.search(r"skipped: tests/__memguard__/test_parse\.json at [0-9a-f]{10}: corrupt", out)
    assert "over 4 commits" in out


def test_outside_a_git_checkout_it_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memguard: error: git rev-parse in ")
    assert len(err.splitlines()) == 1
    assert main(["history", str(tmp_path / "missing")]) == 2
