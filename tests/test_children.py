"""The test's own children: ``ChildWatch`` (pure) and ``mem_budget(..., children=True)``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_memguard.budget import BudgetError, merge_markers, parse_budget
from pytest_memguard.children import ChildWatch, descendants

from .conftest import Runner
from .test_other_process import MiB, Server

HOLD = (
    "import sys, time; b = bytearray({n}); b[::4096] = b'x' * len(b[::4096]); "
    "sys.stdout.write('ok\\n'); sys.stdout.flush(); time.sleep({seconds})"
)


def test_a_child_that_held_memory_and_exited_is_listed_with_its_peak() -> None:
    watch = ChildWatch()
    watch.start()
    subprocess.run([sys.executable, "-c", HOLD.format(n=40 * MiB, seconds=0.3)], check=True)
    (child,) = watch.stop()
    assert 38 * MiB <= child.peak <= 56 * MiB  # 40 MiB touched, plus the interpreter's own
    assert child.private is None  # exited before the end
    assert "python" in child.name


def test_children_alive_at_the_end_count_their_private_memory_and_grandchildren_count() -> None:
    watch = ChildWatch()
    watch.start()
    server = Server()  # a child that starts a child of its own
    try:
        assert server.send(f"hold {24 * MiB}") == "ok"
        answer = server.send(f"spawn {16 * MiB}")
        grandchild = int(answer.split()[1])
        assert grandchild in descendants(server.process.pid)
        children = {child.pid: child for child in watch.stop()}
    finally:
        server.close()
    assert set(children) == {server.process.pid, grandchild}
    mine = children[server.process.pid]
    theirs = children[grandchild]
    assert mine.private is not None
    assert 22 * MiB <= mine.private <= 40 * MiB
    assert theirs.private is not None
    assert 14 * MiB <= theirs.private <= 30 * MiB


def test_processes_running_before_the_watch_are_not_the_tests() -> None:
    earlier = Server()
    try:
        assert earlier.send(f"hold {8 * MiB}") == "ok"
        watch = ChildWatch()
        watch.start()
        assert earlier.send(f"hold {8 * MiB}") == "ok"
        assert watch.stop() == []
    finally:
        earlier.close()


def test_the_marker_takes_a_switch_and_needs_peak_or_private() -> None:
    budget = parse_budget((), {"peak": "10MB", "children": True}, "t")
    assert budget.children is True
    assert parse_budget((), {"private": "1MB", "children": "true"}, "t").children is True
    outer = parse_budget((), {"peak": "10MB", "children": True}, "t")
    inner = parse_budget((), {"retained": "1MB"}, "t")
    merged = merge_markers([inner, outer])
    assert merged is not None
    assert merged.children is True  # the closest marker did not say: the outer one holds
    with pytest.raises(BudgetError, match=r"children on t 'maybe': expected True or False"):
        parse_budget((), {"peak": "10MB", "children": "maybe"}, "t")
    with pytest.raises(BudgetError, match=r"children=True counts the processes.*peak"):
        parse_budget((), {"retained": "1MB", "children": True}, "t")


def test_a_budget_with_children_fails_on_a_subprocess_and_lists_it(
    pytester: pytest.Pytester, run: Runner
) -> None:
    hold = HOLD.format(n=60 * MiB, seconds=0.3)
    pytester.makepyfile(
        test_children=f"""
        import subprocess, sys
        import pytest

        HOLD = {hold!r}

        @pytest.mark.mem_budget(peak="30MB", children=True)
        def test_counted():
            subprocess.run([sys.executable, "-c", HOLD], check=True)

        @pytest.mark.mem_budget(peak="30MB")
        def test_not_counted():
            subprocess.run([sys.executable, "-c", HOLD], check=True)

        @pytest.mark.mem_budget(private="20MB", children=True)
        def test_left_running(request):
            kid = subprocess.Popen([sys.executable, "-c", HOLD.replace("0.3", "3")],
                                   stdout=subprocess.PIPE)
            kid.stdout.readline()
            request.addfinalizer(kid.kill)
        """
    )
    result = run("-p", "no:randomly", "-rA")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*peak * MiB (this process *, the processes it started 6* MiB) exceeds mem_budget "
            "30.0 MiB by *",
            "Processes the test started (private memory: highest sample, every 5 ms; at the end):",
            "  pid * peak * MiB  at the end*exited  *python* -c import sys, time;*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*private * (this process *, the processes it started 6* MiB) exceeds mem_budget*"]
    )
