"""The collector policy around windows: frozen while open, full collections paid for by time."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from pytest_memguard.garbage import Collector


class Node:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def cycle() -> weakref.ref[Node]:
    return weakref.ref(Node())


def test_window_garbage_is_collected_and_older_objects_are_frozen_meanwhile() -> None:
    collector = Collector(share=1e-9, first_delay=0)  # one full collection, then none for long
    old = Node()
    collector.begin()
    assert gc.get_freeze_count() > 0
    made_inside = cycle()
    collector.collect()
    assert made_inside() is None
    collector.end()
    assert gc.get_freeze_count() == 0
    del old


def test_garbage_from_before_a_window_waits_for_a_full_collection() -> None:
    collector = Collector(share=1e-9, first_delay=0)
    collector.begin()
    collector.end()
    assert collector.full_collections == 1
    before = cycle()
    collector.begin()  # not due: the old cycle is frozen, not collected
    collector.collect()
    assert before() is not None
    collector.end()
    assert collector.full_collections == 1

    eager = Collector(share=float("inf"), first_delay=0)  # a full collection before each window
    eager.begin()
    assert before() is None
    eager.end()


def test_the_first_full_collection_waits() -> None:
    collector = Collector(first_delay=3600)
    collector.begin()
    collector.end()
    assert collector.full_collections == 0


def test_nested_windows_freeze_once() -> None:
    collector = Collector()
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
