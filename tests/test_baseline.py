"""The baseline store (pure) and the memguard command."""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from pytest_memguard import baseline as b
from pytest_memguard import cli
from pytest_memguard.cli import main
from pytest_memguard.report import render_baseline_summary
from pytest_memguard.tolerance import Tolerance

TOL = Tolerance(relative=0.05, absolute=1024)


def test_location() -> None:
    path, key = b.location("tests/unit/test_x.py::TestA::test_b[1-2]", "/repo")
    assert path == os.path.join("/repo", "tests", "unit", "__memguard__", "test_x.json")
    assert key == "TestA::test_b[1-2]"


def test_dumps_is_sorted_one_entry_per_line_and_round_trips(tmp_path: Path) -> None:
    scopes = {
        "cpython-3.12": {"b": {"retained": 2, "allocations": 1}},
        "cpython-3.11": {"z": {"heap_peak": 3}, "a": {"heap_peak": 4}},
        "empty": {},
    }
    text = b.dumps(scopes)
    lines = text.splitlines()
    assert lines[0] == "{"
    assert '"version": 1' in lines[1]
    assert lines.index('      "a": {"heap_peak": 4},') < lines.index('      "z": {"heap_peak": 3}')
    assert '      "b": {"allocations": 1, "retained": 2}' in lines
    assert "empty" not in text
    path = tmp_path / "x.json"
    path.write_text(text)
    assert b.load(str(path)) == {k: v for k, v in scopes.items() if v}
    assert b.dumps(b.load(str(path))) == text


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "no schema version"),
        ('{"version": 99, "scopes": {}}', "schema version 99"),
        ('{"version": 1, "scopes": []}', "'scopes' must be an object"),
        ('{"version": 1, "scopes": {"s": {"t": {"peak": "big"}}}}', "must map metrics to ints"),
        ('{"version": 1, "scopes": {"s": {"t": {"peak": true}}}}', "entry 't' in 's' must map"),
        ('{"version": 1, "scopes": {"s": {"t": {"peak": 1.5}}}}', "must map metrics to ints"),
        ('{"version": 1, "scopes": {"s": {"a": {"peak": 1}, "t": [1]}}}', "entry 't' in 's'"),
        ('{"version": 1, "scopes": {"s": []}}', "scope 's' must be an object of tests"),
        ('{"version": 1, "scopes": {"s": 3}}', "scope 's' must be an object of tests"),
        ('{"version": 1, "scopes": {"s": {"t": 5}}}', "entry 't' in 's' must map"),
        ('{"version": 1, "scopes": {"s": {"t": {"peak": {"x": 1}}}}}', "must map metrics"),
        ('{"version": "1", "scopes": {}}', "schema version '1'"),
    ],
)
def test_bad_files_are_errors_naming_the_file(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(b.BaselineError) as info:
        b.load(str(path))
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_a_file_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"version": 1, "scopes": {"s\xff": {}}}')
    with pytest.raises(b.BaselineError, match="not UTF-8") as info:
        b.load(str(path))
    assert str(path) in str(info.value)


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert b.load(str(tmp_path / "nope.json")) == {}


def test_update_merges_keeps_unchanged_and_removes(tmp_path: Path) -> None:
    path = str(tmp_path / "__memguard__" / "t.json")
    assert b.update_file(path, "s", {"a": {"heap_peak": 1000}, "b": {"heap_peak": 5}}, (), TOL)
    first = Path(path).read_bytes()
    # Within tolerance: nothing measurable changed, the file stays byte-identical.
    assert not b.update_file(path, "s", {"a": {"heap_peak": 1500}}, (), TOL)
    assert Path(path).read_bytes() == first
    assert b.update_file(path, "s", {"a": {"heap_peak": 100_000}}, ["b"], TOL)
    assert b.load(path) == {"s": {"a": {"heap_peak": 100_000}}}
    assert b.update_file(path, "other", {"c": {"allocations": 3}}, (), TOL)
    assert set(b.load(path)) == {"s", "other"}


def test_informational_figures_alone_do_not_rewrite_an_entry(tmp_path: Path) -> None:
    """The kernel's peak moves by pages from run to run: a move of it alone, even beyond
    tolerance, leaves the entry (and the file) as it was; it is refreshed with the rest when a
    gated figure moves."""
    path = str(tmp_path / "t.json")
    gated = ("allocations", "heap_peak", "retained")
    first = {"allocations": 434, "heap_peak": 23_294, "peak": 23_294, "retained": 216}
    assert b.update_file(path, "s", {"a": first}, (), TOL, gated)
    written = Path(path).read_bytes()
    noisy = {**first, "peak": 73_728}
    assert not b.update_file(path, "s", {"a": noisy}, (), TOL, gated)
    assert Path(path).read_bytes() == written
    # Gated on it (mem_baseline_metrics lists it), the same move rewrites the entry.
    assert b.update_file(path, "s", {"a": noisy}, (), TOL, (*gated, "peak"))
    assert b.load(path)["s"]["a"]["peak"] == 73_728
    moved = {**first, "heap_peak": 200_000, "peak": 200_000}
    assert b.update_file(path, "s", {"a": moved}, (), TOL, gated)
    assert b.load(path)["s"]["a"] == moved
    assert b.same_within(first, noisy, TOL, gated)
    assert not b.same_within(first, noisy, TOL)


def test_an_update_that_changes_nothing_takes_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "__memguard__" / "t.json")
    assert b.update_file(path, "s", {"a": {"heap_peak": 1000}}, (), TOL)

    def no_lock(path: str) -> None:
        raise AssertionError("locked although nothing changed")

    monkeypatch.setattr(b, "_locked", no_lock)
    assert not b.update_file(path, "s", {"a": {"heap_peak": 1000}}, (), TOL)
    with pytest.raises(AssertionError, match="locked"):
        b.update_file(path, "s", {"a": {"heap_peak": 9_000_000}}, (), TOL)


def test_corrupt_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text("{broken")
    with pytest.raises(b.BaselineError):
        b.update_file(str(path), "s", {"a": {"heap_peak": 1}}, (), TOL)
    assert path.read_text() == "{broken"


def test_concurrent_updates_keep_every_entry(tmp_path: Path) -> None:
    path = str(tmp_path / "t.json")

    def writer(worker: int) -> None:
        for i in range(20):
            b.update_file(path, "s", {f"w{worker}-{i}": {"allocations": i}}, (), TOL)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(b.load(path)["s"]) == 80


def test_an_update_makes_the_files_it_will_write_first_and_removes_those_left_empty(
    tmp_path: Path,
) -> None:
    root = str(tmp_path)
    kept = tmp_path / "tests" / "__memguard__" / "test_kept.json"
    kept.parent.mkdir(parents=True)
    kept.write_text(b.dumps({"other-interpreter": {"t": {"heap_peak": 7}}}))
    before = kept.read_bytes()
    ids = ["tests/test_a.py::t", "tests/test_a.py::u", "tests/test_b.py::t"]
    ids.append("tests/test_kept.py::t")

    b.BaselineCheck(root, "s", "check", ["heap_peak"], TOL).reserve(ids)
    assert sorted(p.name for p in kept.parent.iterdir()) == ["test_kept.json"]

    update = b.BaselineCheck(root, "s", "update", ["heap_peak"], TOL)
    update.reserve(ids)
    made = kept.parent / "test_a.json"
    assert made.read_text() == b.dumps({})  # whole and valid from the start: no entries
    assert b.load(str(made)) == {}
    assert (kept.parent / "test_b.json").exists()
    assert kept.read_bytes() == before  # an existing file is never touched
    update.reserve(ids)  # again (another xdist worker): nothing changes
    assert made.read_text() == b.dumps({})
    assert update.compare("tests/test_a.py::t", {"heap_peak": 5}).status == "new"

    outcome = update.settle(
        statuses=[],
        passed=[("tests/test_a.py::t", {"heap_peak": 5}, False)],
        collected=ids,
        full_run=True,
    )
    assert b.load(str(made)) == {"s": {"t": {"heap_peak": 5}}}
    assert not (kept.parent / "test_b.json").exists()  # its test recorded nothing
    assert kept.read_bytes() == before  # entries of another interpreter: kept
    assert outcome["updated"] == [os.path.join("tests", "__memguard__", "test_a.json")]
    assert outcome["errors"] == []

    # A directory the update made and left without files goes too.
    lone = b.BaselineCheck(root, "s", "update", ["heap_peak"], TOL)
    lone.reserve(["other/test_c.py::t"])
    assert (tmp_path / "other" / "__memguard__" / "test_c.json").exists()
    lone.settle(statuses=[], passed=[], collected=["other/test_c.py::t"], full_run=True)
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == []


def test_unstable_ids_are_functions_with_both_stale_entries_and_new_ids() -> None:
    stale = ["test_parses[1:00]", "test_parses[1:30]", "test_gone", "Case::test_m[a]"]
    new = [
        "tests/test_x.py::test_parses[2:00]",
        "tests/test_x.py::test_parses[2:30]",
        "tests/test_x.py::test_other[1]",  # new, but no stale entry of its function
        "tests/test_x.py::test_gone",  # not parametrized: a renamed test is not this
        "tests/test_x.py::Case::test_m[b]",
    ]
    assert b._unstable_ids(stale, new) == [
        "tests/test_x.py::Case::test_m (1 new ids)",
        "tests/test_x.py::test_parses (2 new ids)",
    ]
    assert b._unstable_ids([], new) == []
    assert b._unstable_ids(stale, []) == []


def test_compare_boundaries_and_count_tolerance() -> None:
    base = {"allocations": 1000, "heap_peak": 10_000, "retained": 0}
    tol = Tolerance(relative=0.10, absolute=1000)
    # Counts: 10% and 64 calls (the default absolute slack of counts); bytes: 10% and 1000 B.
    ok = b.compare(base, {"allocations": 1164, "heap_peak": 12_000, "retained": 1000}, base, tol)
    assert not ok.regressions
    assert not ok.improvements
    bad = b.compare(base, {"allocations": 1165, "heap_peak": 12_001, "retained": 1001}, base, tol)
    assert [c.metric for c in bad.regressions] == ["allocations", "heap_peak", "retained"]
    assert "+16.5%" in bad.regressions[0].describe()
    assert "tolerance 10%+64" in bad.regressions[0].describe()
    better = b.compare(base, {"allocations": 835, "heap_peak": 7999, "retained": None}, base, tol)
    assert [c.metric for c in better.improvements] == ["allocations", "heap_peak"]


def test_a_concurrent_test_is_gated_with_more_slack_and_not_on_its_peak() -> None:
    base = {"allocations": 1000, "heap_peak": 100_000, "retained": 10_000, "peak": 200_000}
    tol = Tolerance(relative=0.05, absolute=1000)
    within = {"allocations": 3064, "heap_peak": 126_000, "retained": 13_500, "peak": 260_000}
    assert [c.metric for c in b.compare(base, within, base, tol).regressions] == list(base)
    assert b.compare(base, within, base, tol, concurrent=True).regressions == []
    # Its peaks are not compared, however far they move; the rest is, beyond the slack.
    beyond = {"allocations": 3065, "heap_peak": 400_000, "retained": 13_501, "peak": 900_000}
    regressed = b.compare(base, beyond, base, tol, concurrent=True).regressions
    assert [c.metric for c in regressed] == ["allocations", "retained"]
    assert "tolerance 200%+64" in regressed[0].describe()
    assert "tolerance 25%+1000 B" in regressed[1].describe()
    lower = {"heap_peak": 10_000, "peak": 20_000}
    assert b.compare(base, lower, base, tol, concurrent=True).improvements == []
    # A marker's looser tolerance stays looser.
    loose = Tolerance(relative=0.5, absolute=1000)
    assert b.compare(base, {"retained": 15_000}, base, loose, concurrent=True).regressions == []
    message = b.render_regression(regressed, concurrent=True)
    assert "ran threads or processes: its allocation count has at least 200% slack" in message
    assert "its byte figures 25%, and its peak, which depends on how they interleaved," in message
    assert "threads" not in b.render_regression(regressed)


def test_a_count_regression_in_a_run_with_random_string_hashes_says_how_to_fix_the_seed() -> None:
    tol = Tolerance(relative=0.05, absolute=1000)
    base = {"allocations": 1000, "retained": 10_000}
    counted = b.compare(base, {"allocations": 2000}, base, tol).regressions
    kept = b.compare(base, {"retained": 20_000}, base, tol).regressions
    assert "PYTHONHASHSEED=0" in b.render_regression(counted, random_hashes=True)
    assert "PYTHONHASHSEED" not in b.render_regression(counted)
    # Only counts follow the seed.
    assert "PYTHONHASHSEED" not in b.render_regression(kept, random_hashes=True)


def test_a_hash_seed_is_random_unless_the_environment_fixes_one_the_interpreter_reads() -> None:
    assert b.random_string_hashes({}, ignore_environment=False)
    assert b.random_string_hashes({"PYTHONHASHSEED": "random"}, ignore_environment=False)
    assert b.random_string_hashes({"PYTHONHASHSEED": ""}, ignore_environment=False)
    assert not b.random_string_hashes({"PYTHONHASHSEED": "0"}, ignore_environment=False)
    assert not b.random_string_hashes({"PYTHONHASHSEED": "4711"}, ignore_environment=False)
    # python -E (or -I) ignores PYTHONHASHSEED and picks a seed.
    assert b.random_string_hashes({"PYTHONHASHSEED": "0"}, ignore_environment=True)


def test_an_update_under_a_random_hash_seed_says_how_to_record_one_that_holds() -> None:
    written = {"updated": ["tests/__memguard__/test_mod.json"]}
    advice = "record and check with PYTHONHASHSEED=0"
    assert advice in render_baseline_summary(written, "update", random_hashes=True)[-1]
    assert advice not in "\n".join(render_baseline_summary(written, "update"))
    # A check writes nothing: its regressions carry the note instead.
    checked = {"regressed": ["test_mod.py::test_grows"]}
    assert advice not in "\n".join(render_baseline_summary(checked, "check", random_hashes=True))


def test_a_test_with_subtests_is_gated_on_its_count_and_on_bytes_with_more_slack() -> None:
    base = {"allocations": 1000, "heap_peak": 100_000}
    tol = Tolerance(relative=0.05, absolute=1000)
    now = {"allocations": 1115, "heap_peak": 126_000}
    regressed = b.compare(base, now, base, tol, subtests=True).regressions
    assert [c.metric for c in regressed] == ["allocations"]
    assert "tolerance 5%+64" in regressed[0].describe()
    beyond = b.compare(base, {"heap_peak": 126_001}, base, tol, subtests=True).regressions
    assert [c.metric for c in beyond] == ["heap_peak"]
    message = b.render_regression(beyond, subtests=True)
    assert "reported subtests, whose reports pytest keeps" in message
    assert "threads" not in message


def test_count_slack_is_part_of_the_spec() -> None:
    assert Tolerance.parse("5%").count_absolute == 64
    spec = Tolerance.parse("5%+1KiB+10 allocations")
    assert (spec.relative, spec.absolute, spec.count_absolute) == (0.05, 1024, 10)
    assert str(spec) == "5%+1.0 KiB+10 allocations"
    base = {"allocations": 100}
    assert b.compare(base, {"allocations": 115}, base, spec).regressions == []
    assert [c.metric for c in b.compare(base, {"allocations": 116}, base, spec).regressions] == [
        "allocations"
    ]
    with pytest.raises(ValueError, match="expected a spec"):
        Tolerance.parse("5%+10 allocations+20 allocations")


def _baseline_tree(root: Path) -> Path:
    path = root / "tests" / "__memguard__" / "test_x.json"
    b.update_file(
        str(path), "cpython-3.11", {"test_a": {"allocations": 100, "heap_peak": 2048}}, (), TOL
    )
    return path


def test_cli_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _baseline_tree(tmp_path)
    assert main(["show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test_a" in out
    assert "2.0 KiB" in out
    assert "cpython-3.11" in out
    (tmp_path / "empty").mkdir()
    assert main(["show", str(tmp_path / "empty")]) == 0
    assert "no baseline files" in capsys.readouterr().out


def _report(path: Path, **metrics: int) -> Path:
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "scope": "cpython-3.11",
                "tests": [{"nodeid": "t.py::test_a", "outcome": "passed", "metrics": metrics}],
            }
        )
    )
    return path


def test_cli_diff_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _report(tmp_path / "old.json", allocations=1000, heap_peak=100_000, retained=0)
    same = _report(tmp_path / "same.json", allocations=1010, heap_peak=101_000, retained=0)
    worse = _report(tmp_path / "worse.json", allocations=3000, heap_peak=100_000, retained=0)
    assert main(["diff", str(old), str(same)]) == 0
    assert main(["diff", str(old), str(worse)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out
    assert "allocations" in out
    assert main(["diff", str(old), str(worse), "--tolerance", "300%"]) == 0
    base = _baseline_tree(tmp_path)
    assert main(["diff", str(base), str(base)]) == 0
    (tmp_path / "bad.json").write_text("{")
    assert main(["diff", str(old), str(tmp_path / "bad.json")]) == 2
    with pytest.raises(SystemExit):
        main(["diff", str(old), str(same), "--tolerance", "lots"])


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("[" * 100_000 + "]" * 100_000, "not a JSON report or baseline file"),
        (b'{"tests": [], "scope": "\xff"}', "can't decode byte 0xff"),
        ({"tests": [{"metrics": {}}]}, "tests[0]: expected an object with a nodeid string"),
        ({"tests": [{"nodeid": "a", "metrics": [1]}]}, "tests[0]: expected an object"),
        ({"tests": 3}, "expected a report with a scope string and a tests list"),
        (
            {"tests": [{"nodeid": "a", "metrics": {"heap_peak": 10**400}}]},
            "tests[0] heap_peak: expected a byte or call count from 0 to 2**63, "
            "got a 401-digit number",
        ),
        ({"tests": [{"nodeid": "a", "metrics": {"heap_peak": -5}}]}, "got -5"),
        ({"version": 1, "scopes": [1]}, "'scopes' must be an object"),
    ],
)
def test_cli_malformed_input_is_one_line_naming_the_file_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, says: str
) -> None:
    bad = tmp_path / "bad.json"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
    good = _report(tmp_path / "good.json", heap_peak=5)
    assert main(["diff", str(bad), str(good)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"memguard: error: {bad}: ")
    assert says in line


def test_cli_missing_paths_and_other_interpreters_are_errors_not_silence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(tmp_path / "missing")]) == 2
    assert "missing: no such file or directory" in capsys.readouterr().err
    old = _report(tmp_path / "old.json", heap_peak=5)
    other = json.loads(old.read_text())
    other["scope"] = "cpython-3.12"
    (tmp_path / "new.json").write_text(json.dumps(other))
    assert main(["diff", str(old), str(tmp_path / "new.json")]) == 2
    err = capsys.readouterr().err
    assert "has figures of cpython-3.11 and" in err
    assert "of cpython-3.12: heap figures compare only within one interpreter version" in err


def test_cli_escapes_control_characters_in_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "__memguard__" / "test_x.json"
    b.update_file(str(path), "cpython-3.11", {"t\x1b[31mred": {"heap_peak": 2048}}, (), TOL)
    assert main(["show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "t\\x1b[31mred" in out
    changed = _report(tmp_path / "a.json", heap_peak=5)
    document = json.loads(changed.read_text())
    document["tests"][0]["nodeid"] = "t\x1b[2Jx"
    (tmp_path / "b.json").write_text(json.dumps(document))
    assert main(["diff", str(changed), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "t\\x1b[2Jx" in out


def test_locks_live_in_one_directory_of_the_users_own(tmp_path: Path) -> None:
    """Lock files are never deleted (deleting them races), so they are kept out of the repository
    and gathered in one private directory instead of loose in the temp directory."""
    path = str(tmp_path / "__memguard__" / "t.json")
    assert b.update_file(path, "s", {"a": {"heap_peak": 1000}}, (), TOL)
    lock = b.lock_path(path)
    assert os.path.exists(lock)
    assert os.path.dirname(os.path.dirname(lock)) == tempfile.gettempdir()
    assert b.lock_path(str(tmp_path / "__memguard__" / "u.json")) != lock
    if hasattr(os, "getuid"):
        assert os.path.basename(os.path.dirname(lock)) == f"memguard-locks-{os.getuid()}"
        assert os.stat(os.path.dirname(lock)).st_mode & 0o077 == 0
    assert not any(tmp_path.rglob("*.lock"))  # nothing beside the baseline file


def test_cli_help_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse %-formats help texts (and 3.14 validates them at parser creation)."""
    for command in (["--help"], ["diff", "--help"], ["show", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 0
    assert "default 5%+48KiB" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(os, "umask") or os.name == "nt", reason="POSIX modes")
def test_files_keep_the_users_umask_and_an_existing_mode(tmp_path: Path) -> None:
    from pytest_memguard.report import atomic_write, create_whole

    old = os.umask(0o022)
    try:
        new_file = tmp_path / "new.json"
        atomic_write(str(new_file), "{}\n")
        assert new_file.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write(str(tmp_path / "private.json"), "{}\n")
        assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
        new_file.chmod(0o664)
        atomic_write(str(new_file), "[]\n")
        assert new_file.stat().st_mode & 0o777 == 0o664
        assert new_file.read_text() == "[]\n"
        os.umask(0o027)
        assert create_whole(str(tmp_path / "made.json"), "{}\n")
        assert (tmp_path / "made.json").stat().st_mode & 0o777 == 0o640
        assert not create_whole(str(new_file), "{}\n")  # never over an existing file
        assert new_file.read_text() == "[]\n"
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["made.json", "new.json", "private.json"]  # no temporary file left
    finally:
        os.umask(old)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and symlinks")
def test_a_lock_directory_that_is_not_the_users_own_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    target = str(tmp_path / "__memguard__" / "t.json")
    lock_dir = os.path.dirname(b.lock_path(target))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, lock_dir)  # planted before the first update
    with pytest.raises(b.BaselineError, match="is not a directory .a symlink or a file.: remove"):
        b.update_file(target, "s", {"a": {"heap_peak": 1}}, (), TOL)
    os.unlink(lock_dir)
    os.mkdir(lock_dir, 0o777)
    os.chmod(lock_dir, 0o777)  # others may write: another user could hold or swap the lock
    with pytest.raises(b.BaselineError, match="others can write it .* mode 777"):
        b.update_file(target, "s", {"a": {"heap_peak": 1}}, (), TOL)
    os.chmod(lock_dir, 0o700)
    assert b.update_file(target, "s", {"a": {"heap_peak": 1}}, (), TOL)
    assert list(elsewhere.iterdir()) == []


def test_a_lock_another_run_holds_too_long_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    path = tmp_path / "__memguard__" / "t.json"
    assert b.update_file(str(path), "s", {"a": {"heap_peak": 1000}}, (), TOL)
    before = path.read_bytes()
    lock = b.lock_path(str(path))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, filelock\n"
            f"with filelock.FileLock({lock!r}):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(b, "LOCK_TIMEOUT", 0.3)
        with pytest.raises(b.BaselineError) as error:
            b.update_file(str(path), "s", {"a": {"heap_peak": 9_000_000}}, (), TOL)
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipe
    assert str(error.value) == (
        f"{path}: another run held the lock {lock} for 0.3 s; the baseline was not written"
    )
    assert path.read_bytes() == before


def test_cli_diff_as_markdown_lists_regressions_first_and_stays_comment_sized(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def report(path: Path, tests: dict[str, int]) -> Path:
        rows = [
            {"nodeid": nodeid, "outcome": "passed", "metrics": {"allocations": n}}
            for nodeid, n in tests.items()
        ]
        path.write_text(json.dumps({"version": 1, "scope": "cpython-3.11", "tests": rows}))
        return path

    old = report(tmp_path / "old.json", {"t.py::a": 1000, "t.py::b|`x`": 1000, "t.py::gone": 5})
    new = report(tmp_path / "new.json", {"t.py::a": 100, "t.py::b|`x`": 5000, "t.py::c": 5})
    args = ["diff", str(old), str(new), "--metrics", "allocations", "--format=markdown"]
    assert main(args) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "### memguard: memory against the baseline"
    assert lines[2].startswith("**1 regressed**, 1 improved")
    assert lines[2].endswith("1 new, 1 gone.")
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| | test | change |"
    # The id's "|" escaped, its backticks inside a longer fence.
    assert table[1] == (
        "| :x: | `` [cpython-3.11] t.py::b\\|`x` `` | allocations: baseline 1,000, now 5,000 "
        "(+400.0%; tolerance 5%+64) |"
    )
    assert table[2].startswith("| :white_check_mark: | `[cpython-3.11] t.py::a` |")
    assert [row.split(" | ")[0] for row in table[3:]] == ["| new", "| gone"]
    # Past the comment limit, the rest is counted.
    monkeypatch.setattr(cli, "MARKDOWN_LIMIT", 450)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert len(out) < 450
    assert re.search(r"\.\.\. and [1-3] more \(see the job's log\)", out)


def test_a_run_lists_each_test_under_its_status(tmp_path: Path) -> None:
    check = b.BaselineCheck(str(tmp_path), "s", "check", ["heap_peak"], TOL)
    statuses = [("t.py::a", "regressed"), ("t.py::b", "cold"), ("t.py::c", "ok")]
    statuses += [("t.py::d", "improved"), ("t.py::e", "new"), ("t.py::f", "cold")]
    outcome = check.settle(statuses=statuses, passed=[], collected=[], full_run=False)
    assert outcome["cold"] == ["t.py::b", "t.py::f"]  # not compared: neither failed nor ok
    assert (outcome["regressed"], outcome["improved"], outcome["new"]) == (
        ["t.py::a"],
        ["t.py::d"],
        ["t.py::e"],
    )
    assert set(outcome) == set(b.OUTCOME_KEYS)


def test_an_unconfirmed_regression_is_cold_where_its_entry_lacks_its_first_use() -> None:
    change = b.Change("allocations", 100, 200, TOL)
    regressed = b.Checked("regressed", [change], [change])
    cold = b.Checked("cold", [change], [])
    assert regressed.unwarmed(imported=True, first_use=False) == cold
    assert regressed.unwarmed(imported=False, first_use=True) == cold
    # No first use seen, or a compile its entry's figures hold too: it fails.
    assert regressed.unwarmed(imported=False, first_use=False) is regressed
    for status in ("ok", "improved", "new"):
        checked = b.Checked(status, [], [])
        assert checked.unwarmed(imported=True, first_use=True) is checked


def test_an_entry_says_whether_its_figures_hold_a_compile(tmp_path: Path) -> None:
    """Marked where the update's window compiled with no warm call; the mark alone does not
    rewrite an entry whose figures stay within tolerance, and a check reads it back."""
    root = str(tmp_path)
    update = b.BaselineCheck(root, "s", "update", ["allocations"], TOL)
    passed = [
        ("test_a.py::cold", {"allocations": 873}, True),
        ("test_a.py::warm", {"allocations": 291}, False),
    ]
    update.settle(statuses=[], passed=passed, collected=[], full_run=False)
    path = str(tmp_path / "__memguard__" / "test_a.json")
    assert b.load(path) == {
        "s": {"cold": {"allocations": 873, "first_use": 1}, "warm": {"allocations": 291}}
    }
    check = b.BaselineCheck(root, "s", "check", ["allocations"], TOL)
    assert check.recorded_first_use("test_a.py::cold")
    assert not check.recorded_first_use("test_a.py::warm")
    assert not check.recorded_first_use("test_a.py::missing")
    assert check.compare("test_a.py::cold", {"allocations": 873}).status == "ok"
    written = Path(path).read_bytes()
    same = [("test_a.py::cold", {"allocations": 880}, False)]
    b.BaselineCheck(root, "s", "update", ["allocations"], TOL).settle(
        statuses=[], passed=same, collected=[], full_run=False
    )
    assert Path(path).read_bytes() == written
    moved = [("test_a.py::cold", {"allocations": 291}, False)]
    b.BaselineCheck(root, "s", "update", ["allocations"], TOL).settle(
        statuses=[], passed=moved, collected=[], full_run=False
    )
    assert b.load(path)["s"]["cold"] == {"allocations": 291}
