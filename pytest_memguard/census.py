"""Where memory went: allocation samples grouped into sites by their top user frame, and a
census of live objects by type.

What a failure message shows, and what the leak check compares between calls, with the plain
types both backends report them in (``Frame``, ``Site``, ``TypeGrowth``). Only explaining runs
it: walking the heap costs milliseconds on a big one.
"""

from __future__ import annotations

import gc
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Frame:
    filename: str
    lineno: int
    function: str = ""

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"


@dataclass(frozen=True)
class Site:
    """Where memory was allocated: estimated bytes and count, and how much is still alive."""

    frame: Frame
    bytes: int
    count: int
    alive_bytes: int
    stack: tuple[Frame, ...] = ()


@dataclass(frozen=True)
class TypeGrowth:
    """Objects of one type allocated in the window and still alive at its end."""

    name: str
    count: int
    bytes: int


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_NAME = __name__.rpartition(".")[0]


def _user_frames(frames: tuple[Frame, ...]) -> tuple[Frame, ...]:
    """Drop our own frames from the top of a stack: a site inside memguard explains nothing.
    A stack that is ours all the way down was memguard's own bookkeeping: empty."""
    index = 0
    while index < len(frames) and frames[index].filename.startswith(PACKAGE_DIR):
        index += 1
    return frames[index:]


def aggregate_sites(
    rows: Sequence[tuple[int, float, bool, tuple[Frame, ...]]],
    limit: int,
    alive_only: bool,
    by_count: bool = False,
) -> list[Site]:
    """Group samples (size, weight, alive, stack) by their top user frame, biggest first
    (most allocations first when ``by_count``: what an allocation budget is about)."""
    totals: dict[Frame, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    stacks: dict[Frame, tuple[Frame, ...]] = {}
    for size, weight, alive, stack in rows:
        if alive_only and not alive:
            continue
        if not stack:
            frames: tuple[Frame, ...] = (Frame("<no Python frame>", 0),)
        else:
            frames = _user_frames(stack)
            if not frames:
                continue
        top = frames[0]
        entry = totals[top]
        entry[0] += weight
        entry[1] += weight / size if size else 0.0
        entry[2] += weight if alive else 0.0
        stacks.setdefault(top, frames)
    column = 1 if by_count else (2 if alive_only else 0)
    order = sorted(totals.items(), key=lambda kv: (-kv[1][column], str(kv[0])))
    return [
        Site(top, int(v[0]), max(1, round(v[1])), int(v[2]), stacks[top])
        for top, v in order[:limit]
    ]


def all_objects() -> list[object]:
    """``gc.get_objects()`` including frozen objects, which it silently leaves out (the leak
    loop and per-test collection run under ``gc.freeze()``)."""
    if gc.get_freeze_count():
        gc.unfreeze()
        try:
            return gc.get_objects()
        finally:
            gc.freeze()
    return gc.get_objects()


# Objects whose referents are asked for in one call: one list for a batch, not one per object.
# On the tracemalloc fallback every block the walk allocates is traced (about 1 µs each), and
# the per-object lists were a third of the walk's cost there.
_BATCH = 512


def live_objects(skip: set[int]) -> Iterator[object]:
    """Every live object once: the GC-tracked ones and, as their referents, the untracked ones
    (ints, strings, bytes, and the dicts and tuples of such values the collector stops tracking,
    with what they hold in turn). Frozen objects included; ids in ``skip`` (the caller's
    bookkeeping), memguard's own types and ``None`` (a static object, never new, and a tenth
    of all references) left out. Only to explain a failure: about a second for a million
    objects."""
    seen: set[int] = set()  # untracked objects only: a tracked one is listed once
    ours: dict[type, bool] = {}
    objects = all_objects()
    batch: list[object] = []
    # Untracked dicts and tuples found so far, whose own referents are still to be listed: a
    # dict nested in an untracked dict is nobody's referent the collector knows (pyparsing's
    # context manager nested a dict a run in one that way).
    nested: list[object] = []
    skip = skip | {id(seen), id(objects), id(skip), id(ours), id(batch), id(nested)}

    def foreign(obj: object) -> bool:
        kind = type(obj)
        mine = ours.get(kind)
        if mine is None:
            mine = ours[kind] = type_name(kind).startswith(_PACKAGE_NAME)
        return not mine

    is_tracked = gc.is_tracked
    get_referents = gc.get_referents

    def untracked_referents() -> Iterator[object]:
        for referent in get_referents(*batch):
            if referent is None or is_tracked(referent):
                continue
            ident = id(referent)
            if ident in seen or ident in skip:
                continue
            seen.add(ident)
            if isinstance(referent, (dict, tuple)):
                nested.append(referent)
            if foreign(referent):
                yield referent

    try:
        for start in range(0, len(objects), _BATCH):
            batch[:] = [obj for obj in objects[start : start + _BATCH] if id(obj) not in skip]
            for obj in batch:
                if foreign(obj):
                    yield obj
            yield from untracked_referents()
        while nested:
            batch[:] = nested[-_BATCH:]
            del nested[-_BATCH:]
            yield from untracked_referents()
    finally:
        # Up to 3.10 this generator's own frame is a GC object and so in ``objects``: frame and
        # list hold each other, and under a frozen collector nothing breaks the cycle. Each
        # census then kept the previous one's sets alive and counted them: 4.6 GB on 3.9.
        objects.clear()
        batch.clear()
        nested.clear()
        seen.clear()


def _dunder_str(kind: type, name: str, default: str) -> str:
    # Read from the type itself, never trusting it to be a str: a metatype may define the name
    # as a descriptor for its instances (Cython 3 metatypes, as in numpy.random, do this for
    # ``__module__``), and then the lookup on the type returns the descriptor object.
    try:
        value = getattr(kind, name, default)
    except Exception:
        return default
    return value if isinstance(value, str) else default


def type_name(kind: type) -> str:
    """``module.QualName`` of a type (builtins without a prefix), for any type at all."""
    module = _dunder_str(kind, "__module__", "?")
    qualname = (
        _dunder_str(kind, "__qualname__", "")
        or _dunder_str(kind, "__name__", "")
        or _own_qualname(kind)
    )
    return qualname if module == "builtins" else f"{module}.{qualname}"


def mro(kind: type) -> tuple[type, ...]:
    """``kind.__mro__``, for any type at all: the type alone where the collector cleared it
    (see ``_own_qualname``), whose MRO is gone and whose ``__mro__`` lookup raises."""
    return _own_mro(kind) or (kind,)


def _own_mro(kind: type) -> tuple[type, ...] | None:
    """The MRO read through ``type``'s own descriptor (a metatype may raise on names); None
    where the collector cleared the class."""
    try:
        found = type.__dict__["__mro__"].__get__(kind, type)
    except Exception:
        return None
    return found if isinstance(found, tuple) else None


def _own_qualname(kind: type) -> str:
    """The name a class was made with, read through ``type``'s own descriptors where a lookup
    on the class fails: its metatype raises, or the garbage collector cleared it and could not
    free it. A class made its own type (``cls.__class__ = cls``, as h11's ``Sentinel`` does)
    holds itself in a way the collector does not see: found in a cycle, it is cleared (its
    dict and MRO emptied, so every lookup on it fails) and stays alive, five blocks a class."""
    try:
        qualname = type.__dict__["__qualname__"].__get__(kind, type)
    except Exception:
        return "?"
    if not isinstance(qualname, str) or not qualname:
        return "?"
    return qualname if _own_mro(kind) else f"{qualname} (cleared by the collector, not freed)"


def _sizeof(obj: object) -> int:
    try:
        return sys.getsizeof(obj)
    except Exception:  # objects whose __sizeof__ is broken or raises
        pass
    try:
        # The size of the object's struct, which no class can override. At 0 such objects
        # sorted last and fell out of the census where their blocks' sizes are not known
        # (the tracemalloc fallback).
        return object.__sizeof__(obj)
    except Exception:
        return 0


def _tally(skip: set[int], block_size: Callable[[object], int]) -> dict[str, list[int]]:
    """[count, bytes] by type name of the live objects whose ``block_size`` is not negative,
    kept by type and named once per type (naming each object cost a string per object).
    ``skip`` is the caller's bookkeeping, a set of ids this adds its own to: passed on whole,
    so that the ids it holds are left out too (a copy would leave them in, an int each)."""
    by_type: dict[type, list[int]] = {}
    skip.add(id(by_type))
    for obj in live_objects(skip):
        size = block_size(obj)
        if size < 0:
            continue
        kind = type(obj)
        entry = by_type.get(kind)
        if entry is None:
            entry = by_type[kind] = [0, 0]
        entry[0] += 1
        # The object's own block may be a header whose buffer is a second block.
        entry[1] += max(size, _sizeof(obj))
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for kind, (count, size) in by_type.items():
        entry = totals[type_name(kind)]  # two types of one name count as one
        entry[0] += count
        entry[1] += size
    return totals


def _any_block(obj: object) -> int:
    return 0


def census_objects(block_size: Callable[[object], int], limit: int) -> list[TypeGrowth]:
    """Types of objects allocated in the window and still alive, by bytes."""
    counts = _tally(set(), block_size)
    order = sorted(counts.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return [TypeGrowth(name, c, b) for name, (c, b) in order[:limit]]


def _reachable_ids(roots: Sequence[object], depth: int = 4) -> set[int]:
    """Ids of ``roots`` and what they hold, a few levels deep: bookkeeping to leave out."""
    found: set[int] = set()
    level = list(roots)
    for _ in range(depth):
        following = []
        for obj in level:
            if id(obj) not in found:
                found.add(id(obj))
                following.extend(gc.get_referents(obj))
        level = following
    return found


def census_types(exclude: Sequence[object] = ()) -> dict[str, tuple[int, int]]:
    """Live objects by type name: (count, bytes). Compared before and after a few calls, it
    names the types that grew. ``exclude`` (and what it holds) is bookkeeping to skip."""
    totals = _tally(_reachable_ids(exclude), _any_block)
    return {name: (c, b) for name, (c, b) in totals.items()}


def per_call(sites: list[Site], per: int, limit: int) -> list[Site]:
    """Sites of growth, per call: at least a block per call, or a block that keeps growing
    (a list's array); what is merely alive once (a cache refilled) is not growth."""
    per = max(1, per)
    return [
        Site(s.frame, s.bytes // per, max(1, round(s.count / per)), s.alive_bytes // per, s.stack)
        for s in sites
        if s.count >= per or s.alive_bytes >= 64 * per
    ][:limit]
