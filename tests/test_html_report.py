"""The HTML report: its pure parts (down-sampling, charts, escaping, limits), a real run that
writes it (serial and under xdist), the CLI that makes it from a saved report, and a headless
Chromium that loads it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_memguard import html_report
from pytest_memguard.cli import main
from pytest_memguard.html_report import charts_of, downsample, render_html, svg_chart

from .conftest import HOOK, Runner


def _test(
    nodeid: str, outcome: str = "passed", details: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "nodeid": nodeid,
        "outcome": outcome,
        "metrics": {"peak": 4096, "heap_peak": 2048, "retained": None, "allocations": 12},
        "budget": {"peak": 8192},
        "baseline": {},
        **({"details": details} if details else {}),
    }


def _document(tests: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": 1, "scope": "cpython-3.11", "measured": "peak = test", "tests": tests}


def _points(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'data-points="(\d+)"', page)]


def test_downsampling_keeps_each_buckets_lowest_and_highest_in_order() -> None:
    xs = list(range(1000))
    ys = [0.0] * 1000
    ys[537] = 99.0  # one spike: an average would hide it
    ys[100] = -5.0
    out_x, out_y = downsample(xs, ys, limit=100)
    assert 50 <= len(out_y) <= 100
    assert max(out_y) == 99.0
    assert min(out_y) == -5.0
    assert out_x == sorted(out_x)
    assert 537 in out_x
    assert 100 in out_x
    short_x, short_y = downsample([1, 2, 3], [3.0, 1.0, 2.0], limit=100)
    assert (short_x, short_y) == ([1, 2, 3], [3.0, 1.0, 2.0])


def test_a_long_series_says_it_was_down_sampled() -> None:
    ys = [float(x % 7) for x in range(5000)]
    series = html_report.Series("heap", [float(x) for x in range(5000)], ys, "bytes")
    svg = svg_chart(series)
    assert _points(svg) == [html_report.MAX_POINTS]
    assert "down-sampled from 5,000 to 400 points" in svg
    short = svg_chart(html_report.Series("heap", [1.0, 2.0], [1.0, 3.0], "bytes"))
    assert _points(short) == [2]
    assert "down-sampled" not in short


def test_charts_come_from_soak_and_leak_series_failed_first() -> None:
    tests = [
        _test(
            "t.py::test_soak",
            "passed",
            {
                "soak.iterations": 300,
                "soak.growing": False,
                "soak.positions": [100, 200, 300],
                "soak.heap": [10, 12, 11],
            },
        ),
        _test(
            "t.py::test_leak",
            "failed",
            {
                "leak.calls": 32,
                "leak.leaked": True,
                "leak.blocks_series": [1, 2, 3, 4],
                "leak.bytes_series": [16, 32, 48, 64],
            },
        ),
        _test("t.py::test_bad", "passed", {"soak.positions": [1, 2], "soak.heap": ["x", 1]}),
        _test("t.py::test_clean", "passed", {"leak.calls": 7, "leak.leaked": False}),
        _test(
            "t.py::test_same_leak",
            "failed",
            {
                "leak.calls": 22,
                "leak.leaked": True,
                "leak.known_from": "t.py::test_leak",
                "leak.blocks_series": [1, 2, 3],
            },
        ),
    ]
    charts = charts_of(tests)
    names = [c.nodeid for c in charts]
    assert names == ["t.py::test_leak", "t.py::test_same_leak", "t.py::test_soak"]
    assert [s.name for s in charts[0].series] == ["blocks", "bytes"]
    assert charts[0].title == "leak check, the judged runs of 32: leaked"
    assert charts[1].title == (
        "leak check, the judged runs of 22: leaked, the leak explained under t.py::test_leak"
    )
    assert charts[2].title == "soak over 300 iterations: levels off"
    page = render_html(_document(tests))
    assert _points(page) == [4, 4, 3, 3]


def test_what_a_test_or_its_failure_says_is_escaped() -> None:
    nodeid = "t.py::test_x[</script><script>alert(1)</script>]"
    page = render_html(
        _document([_test(nodeid, "failed")]),
        {nodeid: "assert '<b>' == 1"},
    )
    assert "<script>alert(1)" not in page
    assert "&lt;b&gt;" in page
    data = re.search(r'id="memguard-data">(.*?)</script>', page, re.S)
    assert data is not None
    rows = json.loads(data.group(1))["rows"]
    assert rows[0][0] == nodeid  # the embedded data reads back as it was
    assert rows[0][7] == 0.5  # budget use: a peak of 4 KiB against 8 KiB


def test_failures_come_first_with_their_explanation_cut_at_the_limit() -> None:
    tests = [
        _test("t.py::test_ok"),
        _test("t.py::test_big", "failed"),
        _test("t.py::test_e", "error"),
    ]
    page = render_html(_document(tests), {"t.py::test_big": "x" * 10_000})
    assert page.index("Failures (2)") < page.index("All tests")
    assert "[... cut at 4,000 characters]" in page
    assert "x" * 4_000 in page
    assert "x" * 4_001 not in page
    assert "(no explanation recorded)" in page  # the error had none


def test_ten_thousand_tests_make_a_page_of_bounded_size(monkeypatch: pytest.MonkeyPatch) -> None:
    tests = [_test(f"tests/test_module_{i // 100}.py::test_case_{i}") for i in range(10_000)]
    page = render_html(_document(tests))
    assert 500_000 < len(page) < 2_500_000
    assert '<span id="shown">10,000</span>' in page
    monkeypatch.setattr(html_report, "MAX_TESTS", 100)
    cut = render_html(_document(tests[:150]))
    assert "50 more tests are in the JSON report only (the page holds 100)" in cut
    assert '<span id="shown">100</span>' in cut


def test_cli_makes_the_page_of_a_saved_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps(_document([_test("t.py::test_a")])))
    out = tmp_path / "page.html"
    assert main(["html", str(report), "-o", str(out)]) == 0
    assert "t.py::test_a" in out.read_text()
    (tmp_path / "bad.json").write_text('{"tests": 3}')
    assert main(["html", str(tmp_path / "bad.json"), "-o", str(out)]) == 2
    assert "expected a JSON report" in capsys.readouterr().err


@pytest.fixture
def leaky_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
        import pytest

        SINK = []

        @pytest.mark.mem_leak_check(iterations=20)
        def test_leaks():
            SINK.append(bytearray(64))

        @pytest.mark.mem_budget(retained="1KB")
        def test_keeps_too_much():
            SINK.append(bytearray(100_000))

        def test_fine():
            assert sum(range(10)) == 45

        def test_soak(memguard):
            cache = {}
            for i in memguard.soak(2_000, samples=50):
                cache[i % 10] = bytearray(100)
        """
    )


def test_a_run_writes_the_page(
    pytester: pytest.Pytester,
    run: Runner,
    plugin_args: Sequence[str],
    leaky_suite: None,
) -> None:
    page_path = pytester.path / "out" / "memguard.html"
    result = run(*plugin_args, "-p", "no:randomly", f"--mem-html={page_path}")
    result.assert_outcomes(passed=2, failed=2)
    page = page_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "Failures (2)" in page
    # Each failure's own explanation, from the controller's reports under xdist too.
    assert "memory leaks: blocks" in page
    assert "retained" in page
    assert "exceeds mem_budget" in page
    assert "test_suite.py::test_leaks" in page
    assert "Series (2)" in page
    points = _points(page)
    # The leak's blocks (and bytes, which only the hook's runs trace), the soak's heap.
    assert len(points) == (3 if HOOK else 2)
    assert all(2 <= n <= 50 for n in points)
    assert "http://" not in page
    assert "https://" not in page


def test_an_html_path_that_is_a_directory_is_a_usage_error(
    pytester: pytest.Pytester, run: Runner, leaky_suite: None
) -> None:
    result = run(f"--mem-html={pytester.path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mem-html*is a directory*"])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None, reason="no chromium to load the page (apt install chromium)"
)
def test_the_page_loads_in_a_real_browser(
    pytester: pytest.Pytester, run: Runner, leaky_suite: None, tmp_path: Path
) -> None:
    """Headless Chromium loads the page of a real run: no console error, one table row a
    test (built by the page's script), the charts' points, and a screenshot."""
    page_path = pytester.path / "memguard.html"
    run("-p", "no:randomly", f"--mem-html={page_path}")
    browser = [
        str(_chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*browser, "--enable-logging=stderr", "--v=0", "--dump-dom", page_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    rows = re.findall(r'<tr class="(\w+)', dom.stdout)
    assert sorted(rows) == ["failed", "failed", "passed", "passed"]
    assert len(_points(dom.stdout)) == 3
    shot = tmp_path / "page.png"
    subprocess.run(
        [*browser, "--window-size=1280,1600", f"--screenshot={shot}", page_path.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert shot.stat().st_size > 10_000
    # A page of 10,000 tests: the script builds every row.
    big = tmp_path / "big.html"
    big.write_text(
        render_html(_document([_test(f"t.py::test_{i}") for i in range(10_000)])),
        encoding="utf-8",
    )
    dom = subprocess.run(
        [*browser, "--dump-dom", big.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<tr class="passed"') == 10_000
