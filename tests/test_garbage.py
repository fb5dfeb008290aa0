"""The collector policy around windows: frozen while open, full collections when CPython's own
rule would make one."""

from __future__ import annotations

import gc
import re
import sys
import weakref
from collections.abc import Iterator

import pytest

from pytest_memguard.garbage import Collector, heap_size

from .conftest import Runner


class Node:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def new_collector() -> Collector:
    """A collector of the test's own, on a thawed heap: the plugin measuring this test froze
    it for the test's window, which a new collector would take for the suite's own freeze."""
    gc.unfreeze()
    return Collector()


def cycle() -> weakref.ref[Node]:
    return weakref.ref(Node())


def test_window_garbage_is_collected_and_older_objects_are_frozen_meanwhile() -> None:
    collector = new_collector()
    old = Node()
    collector.begin()
    assert gc.get_freeze_count() > 0
    made_inside = cycle()
    collector.collect()
    assert made_inside() is None
    collector.end()
    assert gc.get_freeze_count() == 0
    del old


def _window(collector: Collector) -> None:
    collector.begin()
    collector.end()


def test_the_first_window_takes_the_heap_as_long_lived_and_collects_nothing() -> None:
    before = cycle()
    collector = new_collector()
    _window(collector)
    assert before() is not None  # frozen, not collected: a full collection costs O(heap)
    assert collector.full_collections == 0
    assert collector.heap > 0
    first, second, third = gc.get_threshold()  # (700, 10, 10); 3.13: (2000, 10, 10)
    expected = (first + 1) * (second + 2) * (third + 2)  # ~100,000 objects
    assert collector.due == max(expected, collector.heap // 4)


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def _grow_past_due(collector: Collector) -> list[list[int]]:
    """Containers that CPython counts, enough to make a full collection due; made with the
    collector off, or CPython could make that full collection itself on the way."""
    gc.disable()
    try:
        return [[] for _ in range(int(collector.due) - collector.added + 100)]
    finally:
        gc.enable()


@pytest.mark.usefixtures("thresholds")
def test_garbage_from_before_a_window_waits_until_cpython_would_collect_it() -> None:
    gc.set_threshold(99, 8, 8)  # due after 10,000 objects, or a quarter of a larger heap
    collector = new_collector()
    _window(collector)
    before = cycle()
    _window(collector)  # few objects added since: not due, the cycle was frozen
    assert before() is not None
    assert collector.full_collections == 0
    assert 0 < collector.added < collector.due
    grown = _grow_past_due(collector)
    _window(collector)
    assert before() is None
    assert collector.full_collections == 1
    assert collector.added == 0
    assert collector.heap >= len(grown)  # what survived sets the next due point
    assert collector.due == max(100 * 10 * 10, collector.heap // 4)


@pytest.mark.usefixtures("thresholds")
def test_objects_made_and_freed_again_do_not_make_a_full_collection_due() -> None:
    gc.set_threshold(99, 8, 8)
    collector = new_collector()
    _window(collector)
    before = cycle()
    for _ in range(10):
        collector.begin()
        # Outlives the window's collection, freed after the next one reset the counts.
        transient: list[list[int]] = [[] for _ in range(collector.due // 5)]
        collector.end()
        del transient
    assert before() is not None
    assert collector.full_collections == 0
    assert -1000 < collector.added < collector.due


@pytest.mark.usefixtures("thresholds")
def test_counts_of_young_collections_are_counted_in_objects() -> None:
    gc.set_threshold(49, 2, 1000)
    collector = new_collector()
    _window(collector)
    # Young collections of both kinds run on the way.
    kept: list[list[int]] = [[] for _ in range(1000)]
    assert gc.get_count()[1:] != (0, 0)
    collector.begin()  # reads the counts before resetting them
    collector.end()
    assert len(kept) <= collector.added <= len(kept) + 50
    del kept


@pytest.mark.usefixtures("thresholds")
def test_no_full_collection_where_cpython_would_make_none() -> None:
    collector = new_collector()
    _window(collector)
    before = cycle()
    grown = _grow_past_due(collector)
    gc.disable()
    try:
        _window(collector)
        assert before() is not None
        assert collector.full_collections == 0
    finally:
        gc.enable()
    gc.set_threshold(0)  # CPython's other way of turning automatic collection off
    _window(collector)
    assert before() is not None
    gc.set_threshold(700, 10, 10)
    _window(collector)  # still due: collected as soon as CPython would collect again
    assert before() is None
    assert collector.full_collections == 1
    del grown


def test_the_heap_is_measured_in_blocks_or_else_in_tracked_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gc.freeze()
    blocks = sys.getallocatedblocks()
    assert blocks - 1000 < heap_size() < blocks + 1000
    monkeypatch.setattr(sys, "getallocatedblocks", lambda: 0)  # PYTHONMALLOC=malloc
    assert heap_size() == gc.get_freeze_count()
    assert gc.get_freeze_count() > 1000


def test_nested_windows_freeze_once() -> None:
    collector = new_collector()
    collector.begin()
    outer_garbage = cycle()
    collector.begin()  # an inner window must not freeze the outer window's objects
    collector.end()
    assert gc.get_freeze_count() > 0
    collector.collect()
    assert outer_garbage() is None
    collector.end()
    assert gc.get_freeze_count() == 0
    collector.end()  # unbalanced end: ignored
    assert collector.depth == 0


GARBAGE_CONFTEST = """
import gc
import weakref

import pytest

# CPython collects nothing between two tests (fewer than 2,000 objects); a full collection is
# due after a growth of ~8,000 blocks or a quarter of the heap (~40,000 at the first test).
gc.set_threshold(2000, 0, 0)
MADE = []


class Node:
    def __init__(self):
        self.me = self
        self.payload = [[] for _ in range(1000)]


@pytest.fixture(autouse=True)
def garbage_after_the_window():
    yield
    MADE.append(weakref.ref(Node()))  # cyclic garbage made in teardown, between windows
"""

GARBAGE_TESTS = """
import pytest

from conftest import MADE


@pytest.mark.parametrize("i", range(100))
def test_many(i):
    pass


def test_the_early_garbage_was_collected():
    print(f"ALIVE {sum(ref() is not None for ref in MADE)} OF {len(MADE)}")
    assert MADE[0]() is None
"""


SUITE_FREEZES = """
FROZEN_AFTER = []


def pytest_collection_finish(session):
    gc.collect()
    gc.freeze()  # as packaging's suite does, to make its collections cheaper


def pytest_runtest_logfinish(nodeid):
    FROZEN_AFTER.append(gc.get_freeze_count())  # between windows


def pytest_sessionfinish():  # after the plugin's
    print(f"LAST GARBAGE ALIVE {MADE[-1]() is not None}")
"""


@pytest.mark.parametrize("suite_freezes", [False, True], ids=["", "suite-freezes"])
def test_garbage_made_between_windows_is_collected_in_a_run(
    run: Runner, pytester: pytest.Pytester, suite_freezes: bool
) -> None:
    """Every window's collection resets CPython's counts, so in a real session the garbage
    that teardowns make would wait forever without the plugin's own full collections; also
    where the suite keeps its heap frozen."""
    pytester.makeconftest(GARBAGE_CONFTEST + (SUITE_FREEZES if suite_freezes else ""))
    tests = GARBAGE_TESTS
    if suite_freezes:
        tests += """

def test_the_suite_kept_its_freeze():
    from conftest import FROZEN_AFTER
    print(f"THAWED AFTER {sum(count == 0 for count in FROZEN_AFTER)} OF {len(FROZEN_AFTER)}")
"""
    pytester.makepyfile(test_garbage_run=tests)
    result = run("-s", "-p", "no:randomly")
    result.assert_outcomes(passed=102 if suite_freezes else 101)
    found = re.search(r"ALIVE (\d+) OF (\d+)", result.stdout.str())
    assert found is not None
    alive, made = map(int, found.groups())
    assert made == 100
    assert alive < made // 2  # collected as it became due, not only at the end
    if suite_freezes:
        result.stdout.fnmatch_lines(["*THAWED AFTER 0 OF 101*", "*LAST GARBAGE ALIVE False*"])
