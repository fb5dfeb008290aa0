"""Reference chains (retainers.py): who holds what grew, from a root a person recognises.

The corpus holds one leak of each common shape at module level, as application code would; a
"call" adds one entry, and the chain must name the root and the link that grows.
"""

from __future__ import annotations

import array
import collections
import contextlib
import contextvars
import functools
import gc
import logging
import sys
import threading
from collections.abc import Callable

import filelock  # noqa: F401 - its module-level _LOGGER also reaches logging's manager
import pytest

from pytest_memguard.census import TypeGrowth
from pytest_memguard.retainers import (
    Chain,
    Survivors,
    container_lengths,
    find_retainers,
    growth_retainers,
    new_objects,
)

HERE = __name__


class Record:
    def __init__(self, n: int) -> None:
        self.n = n

    def notify(self) -> None:
        pass


_LOG: list[Record] = []


class Cache:
    store: dict[int, Record] = {}


def _make_handler() -> Callable[[Record], None]:
    items: list[Record] = []

    def handler(record: Record) -> None:
        items.append(record)

    return handler


HANDLER = _make_handler()
_CALLBACKS: list[Callable[..., object]] = []


class Service:
    @functools.cache  # noqa: B019 - the leak under test
    def lookup(self, key: int) -> int:
        return key


_LOCAL = threading.local()
_GRAVE: list[object] = []


class Resurrecting:
    def __del__(self) -> None:
        _GRAVE.append(self)


class Registry(dict):  # type: ignore[type-arg]
    pass


_REGISTRY = Registry()
_QUEUE: collections.deque[Record] = collections.deque()
_SAMPLES = array.array("d")


def _thread_local_append() -> None:
    if not hasattr(_LOCAL, "items"):
        _LOCAL.items = []
    _LOCAL.items.append(Record(0))


def _cycle_through_registry() -> None:
    record = Record(0)
    record.registry = _REGISTRY  # type: ignore[attr-defined]
    _REGISTRY[id(record)] = record


CORPUS: dict[str, tuple[Callable[[], object], str]] = {
    "module list": (lambda: _LOG.append(Record(0)), f"{HERE}._LOG[…]"),
    "class-level dict cache": (
        lambda: Cache.store.setdefault(len(Cache.store), Record(0)),
        f"{HERE}.Cache.store[…]",
    ),
    "closure-held list": (lambda: HANDLER(Record(0)), f"{HERE}.HANDLER → closure cell 'items'[…]"),
    "callback registered per call": (
        lambda: _CALLBACKS.append(Record(0).notify),
        f"{HERE}._CALLBACKS[…]",
    ),
    "logging handler added per call": (
        lambda: logging.getLogger("memguard.corpus").addHandler(logging.NullHandler()),
        "logging.getLogger('memguard.corpus').handlers[…]",
    ),
    "lru_cache on a method": (
        lambda: Service().lookup(1),
        f"{HERE}.Service.lookup → its lru_cache[…]",
    ),
    "thread-local": (_thread_local_append, f"{HERE}._LOCAL → one thread's attributes.items[…]"),
    "resurrecting __del__": (lambda: Resurrecting(), f"{HERE}._GRAVE[…]"),
    "cycle through a dict subclass": (_cycle_through_registry, f"{HERE}._REGISTRY[…]"),
    "C container: deque": (lambda: _QUEUE.append(Record(0)), f"{HERE}._QUEUE[…]"),
    "C container: array": (lambda: _SAMPLES.extend([1.0] * 8), f"{HERE}._SAMPLES[…]"),
}


@pytest.mark.parametrize("shape", list(CORPUS))
def test_each_leak_shape_names_its_root_and_the_growing_link(shape: str) -> None:
    call, expected = CORPUS[shape]
    call()  # first-call effects (the logger's creation) are not growth
    gc.collect()
    before = container_lengths()
    for _ in range(5):
        call()
    gc.collect()
    found = growth_retainers(before, calls=5)
    paths = [chain.path() for chain in found.chains]
    assert expected in paths, paths
    chain = found.chains[paths.index(expected)]
    assert chain.grows == len(chain.links)  # the container is the target: it is what grows
    per_call = 8 if "array" in shape else 1
    assert f"+{per_call:.1f} entr" in chain.note
    assert found.cut_short == ""


def test_objects_in_one_container_are_one_chain_with_their_count() -> None:
    records = [Record(n) for n in range(7)]
    _QUEUE.extend(records)
    try:
        found = find_retainers(records)
    finally:
        _QUEUE.clear()
    assert found.asked == 7
    assert found.unreached == 0
    (chain,) = found.chains
    assert chain.count == 7
    assert chain.path() == f"{HERE}._QUEUE[…]"
    assert chain.target == f"{HERE}.Record"


def test_objects_the_collector_does_not_track_end_at_their_container() -> None:
    # No local variable may hold them: a running frame's locals are roots too.
    globals()["_ATOMS"] = {"key": "".join(["not ", "interned"])}
    globals()["_PAIRS"] = [(1, int("9" * 30))]
    gc.collect()
    try:
        # Up to 3.13 the collector stops tracking both; from 3.14 on, only the tuple.
        assert not gc.is_tracked(globals()["_PAIRS"][0])
        by_text = find_retainers([globals()["_ATOMS"]["key"]])
        by_number = find_retainers([globals()["_PAIRS"][0][1]])
    finally:
        del globals()["_ATOMS"], globals()["_PAIRS"]
    assert [c.path() for c in by_text.chains] == [f"{HERE}._ATOMS['key']"]
    assert [c.path() for c in by_number.chains] == [f"{HERE}._PAIRS[0][1]"]


def test_a_running_threads_local_variable_is_a_root() -> None:
    ready, done = threading.Event(), threading.Event()
    box: list[Record] = []

    def holder() -> None:
        kept = [Record(1)]
        box.append(kept[0])
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=holder, name="holder-thread")
    thread.start()
    try:
        assert ready.wait(10)
        found = find_retainers([box.pop()])
    finally:
        done.set()
        thread.join()
    (chain,) = found.chains
    assert chain.root == "kept"
    assert chain.links == ("[0]",)
    assert "holder()" in chain.where
    assert "thread 'holder-thread'" in chain.where


def test_a_search_out_of_time_says_so() -> None:
    _LOG.append(Record(0))
    try:
        found = find_retainers([_LOG[-1]], seconds=0)
    finally:
        _LOG.pop()
    assert found.chains == []
    assert found.unreached == 1
    assert found.cut_short == "the search took over 0 s"


def test_nothing_asked_nothing_found() -> None:
    found = find_retainers([])
    assert (found.chains, found.asked, found.unreached, found.cut_short) == ([], 0, 0, "")


def test_new_objects_skip_import_debris_atoms_and_small_types() -> None:
    made = [Record(n) for n in range(30)]
    kept = {id(obj) for obj in made}
    grown = [
        TypeGrowth("function", 100, 10_000),
        TypeGrowth("int", 50, 5_000),
        TypeGrowth(f"{HERE}.Record", 30, 1_500),
        TypeGrowth("tuple", 1, 64),  # under a tenth of the biggest kept type
    ]
    found = new_objects(lambda obj: id(obj) in kept, grown)
    assert len(found) == 12  # per type
    assert all(type(obj) is Record for obj in found)


BOOM = ValueError("raised again and again")


def _raise_boom() -> None:
    raise BOOM


def _catch_boom() -> None:
    with contextlib.suppress(ValueError):
        _raise_boom()


def test_frames_of_returned_calls_are_asked_about_alone_and_traced_to_their_exception() -> None:
    """jsonschema's tests re-raise a module-level exception: each raise extends its traceback
    by the raise's frames, which keep every local of those calls and of their callers. The
    lists and dicts those locals hold grew too; asked about, they led to pytest's locals. The
    frames lead to the exception."""
    made_before = set(map(id, gc.get_objects()))
    for _ in range(3):
        _catch_boom()
    grown = [TypeGrowth("list", 50, 5_000), TypeGrowth("frame", 6, 2_400)]
    found = new_objects(lambda obj: id(obj) not in made_before, grown)
    assert 1 <= len(found) <= 12
    assert {type(obj).__name__ for obj in found} == {"frame"}
    assert all(obj is not sys._getframe() for obj in found)  # never a running call's frame
    paths = {chain.path() for chain in find_retainers(found).chains}
    assert f"{HERE}.BOOM.__traceback__.tb_frame" in paths, paths


def test_without_returned_frames_the_other_types_are_asked_about() -> None:
    grown = [TypeGrowth(f"{HERE}.Record", 30, 1_500), TypeGrowth("frame", 1, 400)]
    made = [Record(n) for n in range(3)]
    kept = {id(obj) for obj in made} | {id(sys._getframe())}
    found = new_objects(lambda obj: id(obj) in kept, grown)
    assert sorted(map(id, found)) == sorted(map(id, made))  # the running frame is left out


_LEFT: list[Record] = []


def test_survivors_finds_what_a_block_made_and_left_behind() -> None:
    old = Record(-1)
    watch = Survivors([Record]).start()
    _LEFT.append(Record(1))
    Record(2)  # made and dropped
    watch.finish()
    try:
        assert [obj.n for obj in watch.objects] == [1]  # type: ignore[attr-defined]
        assert old not in watch.objects
        assert watch.counts() == {f"{HERE}.Record": 1}
        text = watch.explain()
        assert text.startswith(f"1 object of {HERE}.Record made here is still alive after it:")
        assert f"  {HERE}._LEFT[0]  ({HERE}.Record)" in text.splitlines()
        with pytest.raises(AssertionError, match="still alive"):
            watch.check()
    finally:
        _LEFT.clear()


def test_survivors_by_name_match_subclasses_and_honour_exclusions() -> None:
    class Special(Record):
        pass

    watch = Survivors([f"{HERE}.Record"]).start()
    fixture_value = Special(1)
    watch.finish(exclude=[fixture_value])
    assert watch.objects == []
    watch = Survivors([f"{HERE}.Record"]).start()
    also = Special(2)
    watch.finish()
    assert watch.objects == [also]


@pytest.mark.parametrize("kinds", [(), (5,), ("",)])
def test_survivors_refuse_what_is_not_a_class(kinds: tuple[object, ...]) -> None:
    with pytest.raises(TypeError, match="survivors"):
        Survivors(kinds)  # type: ignore[arg-type]


_KEPT_BY_BLOCK: list[Record] = []


def test_measure_with_explain_says_who_keeps_what_the_block_made() -> None:
    import sys

    import pytest_memguard
    from pytest_memguard.measurement import get_engine

    if not get_engine().heap.counts_calls and sys.version_info < (3, 12):
        pytest.skip("tracemalloc before 3.12 cannot tell which class instances it traced")

    with pytest_memguard.measure(explain=True) as measured:
        _KEPT_BY_BLOCK.extend(Record(n) for n in range(100))
    try:
        assert measured.retainers is not None
        assert [c.path() for c in measured.retainers.chains] == [f"{HERE}._KEPT_BY_BLOCK[…]"]
        assert measured.retainers.chains[0].count == 12  # as many as were asked about
    finally:
        _KEPT_BY_BLOCK.clear()


def test_an_object_asked_about_twice_counts_once() -> None:
    _LEFT.append(Record(5))
    try:
        found = find_retainers([_LEFT[0], _LEFT[0]])
    finally:
        _LEFT.clear()
    assert (found.asked, found.unreached) == (1, 0)
    assert [c.path() for c in found.chains] == [f"{HERE}._LEFT[0]"]


def test_the_packages_own_generators_are_never_asked_about() -> None:
    """measure()'s context manager runs a generator of this package, made before the window it
    measures; a window nested in a test's window counts it as new (CPython 3.12 then listed
    `self.gen` of contextlib's __exit__ as what keeps it)."""
    import pytest_memguard

    ours = pytest_memguard.measure().gen

    def users() -> object:
        yield 1

    theirs = users()
    held = new_objects(lambda obj: obj is ours or obj is theirs, [TypeGrowth("generator", 2, 400)])
    assert [obj is theirs for obj in held] == [True]
    ours.close()


def test_a_value_set_in_a_context_variable_is_reached_from_this_threads_context() -> None:
    """A Context is held by its thread's state, which no object refers to: without it as a
    root, asgiref's per-instance ContextVars read as 'reached from no root'."""
    variable: contextvars.ContextVar[Record] = contextvars.ContextVar("memguard_test_variable")
    token = variable.set(Record(7))
    try:
        found = find_retainers([variable.get()])
    finally:
        variable.reset(token)
    (chain,) = found.chains
    assert chain.root == "contextvars.copy_context()[ContextVar('memguard_test_variable')]"
    assert chain.links == ()
    assert chain.target.endswith("Record")


class Node:
    def __init__(self, following: object) -> None:
        self.next = following


class Wrapper:
    __slots__ = ("wrapped",)

    def __init__(self, wrapped: object) -> None:
        self.wrapped = wrapped


def _stack_up() -> None:
    """A linked list of 12 nodes and 10 wrappers stacked on wrappers, held by globals only (a
    running frame's locals are roots too)."""
    held = Record(1)
    head: object = held
    for _ in range(12):
        head = Node(head)
    stacked: object = ([Record(2)],)
    for _ in range(10):
        stacked = Wrapper(stacked)
    globals().update(_HEAD=head, _PAIR=Node(Node(Record(3))), _STACKED=stacked)


def _end(first: object, attr: str) -> object:
    while hasattr(first, attr):
        first = getattr(first, attr)
    return first


def test_a_link_repeated_in_a_row_is_written_once_with_its_count() -> None:
    """A linked list's ``.next`` 12 times, and 10 wrappers stacked on wrappers (wrapt's, one
    more a run): each run of three or more equal links is written once, with its count; two in
    a row stay as they are."""
    _stack_up()
    try:
        linked = find_retainers([_end(globals()["_HEAD"], "next")])
        paired = find_retainers([_end(globals()["_PAIR"], "next")])
        wrapped = find_retainers([_end(globals()["_STACKED"], "wrapped")])
    finally:
        del globals()["_HEAD"], globals()["_STACKED"], globals()["_PAIR"]
    assert [c.path() for c in linked.chains] == [f"{HERE}._HEAD(.next ×12)"]
    assert [c.path() for c in paired.chains] == [f"{HERE}._PAIR.next.next"]
    assert [c.path() for c in wrapped.chains] == [f"{HERE}._STACKED(.wrapped ×10)"]
    # Links code cannot spell (a C type's references) are arrows, counted the same way.
    arrows = (" → _wrappers.FunctionWrapper",) * 10 + (" → function", " → closure cell 'called'")
    chain = Chain("m.global_function_4", arrows, "list", grows=len(arrows))
    assert chain.path() == (
        "m.global_function_4 → _wrappers.FunctionWrapper ×10 → function → closure cell 'called'[…]"
    )
