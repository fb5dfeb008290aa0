"""Failure explanations describe any object: hostile types never replace a report by a crash."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_memguard import census
from pytest_memguard.census import census_types, live_objects, type_name

from .conftest import HOOK, Runner

# Types a report meets in real processes: Cython 3 metatypes (numpy.random, memray) define
# ``__module__`` as a descriptor for their instances, so on the metatype itself it reads as the
# descriptor; proxies raise from attribute reads; some objects' ``__sizeof__`` raises.
HOSTILE = """
class DescriptorModuleMeta(type):
    @property
    def __module__(self):
        return "described"


class Described(metaclass=DescriptorModuleMeta):
    pass


class RaisingMeta(type):
    def __getattribute__(cls, name):
        if name in ("__module__", "__qualname__", "__name__"):
            raise RuntimeError("no names here")
        return super().__getattribute__(name)


class Nameless(metaclass=RaisingMeta):
    def __sizeof__(self):
        raise RuntimeError("no size either")

    def __repr__(self):
        raise RuntimeError("no repr either")
"""


def _hostile() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "hostile"}
    exec(HOSTILE, namespace)
    return namespace


def test_type_name_of_ordinary_and_hostile_types() -> None:
    ns = _hostile()
    assert type_name(int) == "int"
    assert type_name(pytest.MonkeyPatch) == "_pytest.monkeypatch.MonkeyPatch"
    # The metatype's own __module__ is a property object, not a str.
    assert not isinstance(ns["DescriptorModuleMeta"].__module__, str)
    assert type_name(ns["DescriptorModuleMeta"]) == "?.DescriptorModuleMeta"
    assert type_name(ns["Described"]) == "described.Described"
    # Its metatype raises on every name: type's own descriptor still reads the class's.
    assert type_name(ns["Nameless"]) == "?.Nameless"


# A class made its own type (h11 0.16's ``Sentinel``), which the collector clears and cannot
# free. Run in a child: once cleared, such a class stays in the process, and pytest's own
# report of a failure whose arguments hold one raises while formatting it.
SENTINEL = """
class Sentinel(type):
    def __new__(cls, name, bases, namespace):
        made = super().__new__(cls, name, bases, namespace)
        made.__class__ = made
        return made
"""

CLEARED = (
    """
import gc

from pytest_memguard.census import census_types, mro, type_name
from pytest_memguard.retainers import Survivors
"""
    + SENTINEL
    + """

def make():
    class S(Sentinel, metaclass=Sentinel):
        pass


class Record:
    pass


make()
gc.collect()
(kind,) = [o for o in gc.get_objects() if isinstance(o, type) and type(o) is o]
print("cleared", type.__dict__["__mro__"].__get__(kind, type) is None)
print("name", type_name(kind))
print("mro", mro(kind) == (kind,))
watch = Survivors([Record, "app.Session"]).start()
kept = Record()
watch.finish()
print("survivors", [type_name(type(o)) for o in watch.objects])
print("census", [n for n, (c, b) in census_types().items() if "cleared" in n and c == 1])
"""
)


def test_a_class_the_collector_cleared_but_could_not_free_is_named_and_survived(
    tmp_path: Path,
) -> None:
    """Every name lookup on such a class fails (its dict and MRO are emptied): its name is read
    through ``type``'s descriptors, and the heap walks (survivors, census) get past it, where
    ``Survivors`` raised ``AttributeError: __mro__``."""
    script = tmp_path / "cleared.py"
    script.write_text(CLEARED)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    name = "?.make.<locals>.S (cleared by the collector, not freed)"
    assert done.stdout.splitlines() == [
        "cleared True",
        f"name {name}",
        "mro True",
        "survivors ['__main__.Record']",
        f"census [{name!r}]",
    ]


def test_census_counts_hostile_objects() -> None:
    ns = _hostile()
    keep = [ns["Nameless"]() for _ in range(3)]
    count, size = census_types()["?.Nameless"]
    assert count >= 3
    # Their __sizeof__ raises: the size of their struct stands in (at 0 they sorted last and
    # fell out of a census limited to its top rows).
    struct = object.__sizeof__(keep[0])
    assert 3 * struct <= size <= count * struct
    assert struct >= 16


HOSTILE_TESTS = (
    HOSTILE
    + """
import pytest

try:
    import numpy.random  # noqa: F401  (Cython 3 metatypes, the case met in the wild)
except ImportError:
    pass

KEEP = []


@pytest.mark.mem_budget(retained="64KB")
def test_budget_explained():
    KEEP.append([Nameless() for _ in range(2000)])
    KEEP.append(Described)


@pytest.mark.mem_leak_check(iterations=12, warmup=2)
def test_leak_explained():
    KEEP.append(Nameless())
"""
)


def test_live_objects_lists_each_object_once_across_batches() -> None:
    """The walk asks for referents a batch at a time: every tracked object and every untracked
    one it holds is still listed exactly once, whichever batch holds it."""
    shared = "".join(["held by ", "every holder"])  # untracked, referenced from every batch
    holders = [[f"own {i}".encode(), shared, i + 1000] for i in range(3 * census._BATCH + 7)]
    skipped = ["".join(["kept ", "out"]).encode()]
    listed = Counter(id(obj) for obj in live_objects({id(skipped)}))
    assert all(listed[id(holder)] == 1 for holder in holders)
    assert all(listed[id(holder[0])] == 1 and listed[id(holder[2])] == 1 for holder in holders)
    assert listed[id(shared)] == 1
    assert listed[id(skipped)] == 0
    assert listed[id(skipped[0])] == 0  # held only by a skipped object: not reached
    assert listed[id(None)] == 0


def test_live_objects_lists_what_untracked_containers_hold() -> None:
    """The collector stops tracking a tuple or dict of atomic values, so nothing it tracks
    refers to the tuples inside such a tuple: the walk lists them from their untracked holder."""
    import gc

    inner = tuple(f"atom {i}" for i in range(3))
    outer = (inner, "".join(["also ", "atomic"]))
    holder = [outer]
    gc.collect()  # untracks both tuples
    assert not gc.is_tracked(outer)
    assert not gc.is_tracked(inner)
    listed = Counter(id(obj) for obj in live_objects(set()))
    assert listed[id(holder)] == listed[id(outer)] == listed[id(inner)] == 1
    assert all(listed[id(atom)] == 1 for atom in inner)


def test_reports_survive_hostile_types(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(test_hostile=HOSTILE_TESTS)
    result = run()
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    assert "AttributeError" not in text
    assert "RuntimeError" not in text
    if HOOK or sys.version_info >= (3, 12):
        result.stdout.fnmatch_lines(
            [
                "*retained * exceeds mem_budget 64.0 KiB by *",
                "Object types allocated during the test and still alive:",
                "*2,00? *?.Nameless",
                "*grew over 12 judged runs*",
                "Object types that grew (per run):",
                "*+1 *?.Nameless",
            ]
        )
    else:  # tracemalloc before 3.12 cannot tell which class instances it traced
        result.stdout.fnmatch_lines(
            ["*retained * exceeds mem_budget 64.0 KiB by *", "*grew over 12 judged runs*"]
        )


def test_a_leak_of_classes_the_collector_cleared_names_them(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """h11 0.16's ``test_make_sentinel`` makes two classes a run that are their own type: the
    collector clears them and cannot free them (five blocks a class, on 3.11-3.15 without the
    plugin too). The leak check fails it and names the classes, where it wrote ``?.?``."""
    pytester.makepyfile(
        test_sentinel="import pytest\n"
        + SENTINEL
        + """

@pytest.mark.mem_leak_check
def test_make_sentinel():
    class S(Sentinel, metaclass=Sentinel):
        pass

    assert type(S) is S
"""
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*blocks *+5.00/run  grew on every run",
            "Object types that grew (per run):",
            "      +1 * ?.test_make_sentinel.<locals>.S (cleared by the collector, not freed)",
        ]
    )
