"""Why memory is kept: the shortest reference path from a root a person recognises.

A leak report says where growing memory was allocated and which types grew; this says who holds
it. Roots are what a reader can find in their code: a module's globals (``myapp.audit._LOG``),
a live frame of a thread (a local variable of a running function), and ``gc.garbage``. Class
attributes, closure cells, registries, logging handlers and caches are links on the way from
them, each written as the code would name it (``.attr``, ``[key]``, ``[index]``) or, where code
cannot, with an arrow (``→ closure cell 'name'``).

The search runs backwards from the held objects, one ``gc.get_referrers`` walk of the heap per
level for the whole level at once. Memory stays small (only the visited nodes), and the levels
stay narrow for the usual culprits (a container in a module or a class): 0.05 s for a 4-link
chain on a heap of 1.27 million objects (``benchmarks/run.py``). It is bounded in depth, in
width (that walk compares every reference with every object of the level) and in time, and
says when it was cut short. Only explaining a failure runs it.
"""

from __future__ import annotations

import array
import contextvars
import dataclasses
import functools
import gc
import itertools
import operator
import sys
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from .census import PACKAGE_DIR, TypeGrowth, live_objects, mro, type_name

MAX_DEPTH = 24
# Objects per level: get_referrers compares each reference in the heap with each of them.
MAX_WIDTH = 48
DEFAULT_SECONDS = 2.0


@dataclass(frozen=True)
class Chain:
    """One reference path: ``root`` then ``links`` lead to an object of type ``target``.

    ``count`` objects (of the ones asked about) are held along this path, and ``grows`` is the
    index in ``links`` where their paths part: the container that holds them all, the link that
    keeps growing (``len(links)`` when the target is that container). None when the chain
    holds one object."""

    root: str
    links: tuple[str, ...]
    target: str
    count: int = 1
    grows: int | None = None
    # Where a root that is not a module is: the frame whose local variable ``root`` is.
    where: str = ""
    # What the caller knows of the target (a container's growth per call).
    note: str = ""

    def path(self) -> str:
        """The chain as code would spell it; the link where the held objects part is ``[…]``
        (one of many entries) when it is a subscript."""
        parts = [self.root]
        for index, link in enumerate(self.links):
            parts.append("[…]" if index == self.grows and link.startswith("[") else link)
        if self.grows == len(self.links):  # the target is the container that grows
            parts.append("[…]")
        text = "".join(_repeats_counted(parts))
        return f"{text}  ({self.where})" if self.where else text


# A link repeated this many times in a row is written once with its count: wrappers stacked on
# wrappers (wrapt's, one more a run) or a linked list's ``.next`` ran to 24 links of the same text.
REPEATS_COUNTED = 3


def _repeats_counted(parts: Sequence[str]) -> list[str]:
    """``parts`` with each run of REPEATS_COUNTED or more equal links written once with its
    count: `` → Wrapper ×10``, ``(.next ×12)``."""
    out: list[str] = []
    for part, same in itertools.groupby(parts):
        run = len(list(same))
        if run < REPEATS_COUNTED:
            out.append(part * run)
        elif part.startswith(" → "):
            out.append(f"{part} ×{run}")
        else:  # a link code would spell (``.next``, ``[0]``): bracketed, so it reads as one
            out.append(f"({part} ×{run})")
    return out


@dataclass
class Retainers:
    """What was found: chains by how many objects they hold, and whether the search stopped
    early (``cut_short`` says why; the chains found are still shortest ones)."""

    chains: list[Chain]
    asked: int
    unreached: int = 0
    cut_short: str = ""
    # From ``growth_retainers``: each container that grew, with its chain. Held so that a later
    # check can watch the same container (``leaks.KnownLeaks``); not rendered.
    containers: list[tuple[object, Chain]] = field(default_factory=list)


def _roots(context: contextvars.Context) -> dict[int, str]:
    """Root nodes by id: each module's globals dict, by the module's name."""
    roots: dict[int, str] = {}
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None) if module is not None else None
        if isinstance(namespace, dict):
            roots.setdefault(id(namespace), name)
    roots[id(gc.garbage)] = "gc.garbage"
    # This thread's context variables (their values are roots of their own, _context_values):
    # its Context is held by the thread's state, which no object refers to, so what a
    # ContextVar holds was reached from no root. asgiref's Local makes a ContextVar per
    # instance and sets it, and every one stays in the thread's context.
    for mapping in gc.get_referents(context):
        roots.setdefault(id(mapping), "contextvars.copy_context()")
    return roots


def _context_values(context: contextvars.Context) -> dict[int, tuple[str, str]]:
    """The values of this thread's context variables, by id: (the root as code would reach
    it, ""). Like running frames' locals, they are found before the collector is asked."""
    return {
        id(value): (f"contextvars.copy_context()[ContextVar({variable.name!r})]", "")
        for variable, value in context.items()
    }


def _frame_locals(ours: types.FrameType) -> dict[int, tuple[str, str]]:
    """Local variables of the frames running in every thread (not ours), by the id of their
    value: (the variable's name, its frame as a reader would find it). A running frame's
    locals are not among its referents for the collector, so ``get_referrers`` never names it."""
    names = {t.ident: t.name for t in threading.enumerate()}
    found: dict[int, tuple[str, str]] = {}
    for ident, current in _running_frames():
        code = current.f_code
        # Module-level code: its variables are the module's globals, named from there.
        module_level = current.f_locals is current.f_globals
        if (
            current is not ours
            and not module_level
            and not code.co_filename.startswith(PACKAGE_DIR)
        ):
            where = (
                f"a local variable of {code.co_name}() at {code.co_filename}:"
                f"{current.f_lineno}, thread {names.get(ident, ident)!r}"
            )
            for name, value in list(current.f_locals.items()):
                found.setdefault(id(value), (name, where))
    return found


def _running_frames() -> Iterator[tuple[int, types.FrameType]]:
    """The frames of the calls running now, in every thread, with the thread's ident."""
    for ident, top in sys._current_frames().items():
        frame: types.FrameType | None = top
        while frame is not None:
            yield ident, frame
            frame = frame.f_back


def find_retainers(
    targets: Sequence[object],
    ignore: Iterable[object] = (),
    seconds: float = DEFAULT_SECONDS,
    limit: int = 5,
) -> Retainers:
    """Shortest paths from roots to ``targets``, grouped where they share a root and a path.

    ``ignore``: the caller's own containers that hold targets (they are not why the targets
    are alive). Frames of this package are never roots nor links."""
    if not targets:
        return Retainers([], 0)
    # get_referrers does not search frozen objects (the leak loop and the per-test windows
    # run under gc.freeze()), and module dicts are among them.
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    try:
        return _search(targets, ignore, seconds, limit)
    finally:
        if frozen:
            gc.freeze()


class _Search:
    """One backward search: the visited nodes, the way from each towards a target, which
    targets each reaches (a bit each), and the roots found."""

    def __init__(self, targets: list[object], ignore: Iterable[object]) -> None:
        self.nodes: dict[int, object] = {id(t): t for t in targets}
        self.towards: dict[int, int] = {}
        self.reach: dict[int, int] = {id(t): 1 << n for n, t in enumerate(targets)}
        # Every holder found of each node: a node reached again from another target passes
        # that target's bit on to all the nodes above it.
        self.holders: dict[int, list[int]] = {}
        # (the root's name, where it is if not a module, id of the first node under it)
        self.found: list[tuple[str, str, int]] = []
        context = contextvars.copy_context()  # this thread's, shared with it: one copy
        self.roots = _roots(context)
        self.narrowed = ""  # why a level was cut to MAX_WIDTH, if one was
        self.here = sys._getframe(1)
        # Roots found by what they hold, before the collector is asked: running frames' locals
        # and this thread's context variables' values.
        self.held_roots = {**_context_values(context), **_frame_locals(self.here)}
        self.bookkeeping = {id(self), id(vars(self)), id(targets), id(self.here)}
        self.bookkeeping.update(id(value) for value in vars(self).values())
        self.bookkeeping.update(id(obj) for obj in ignore)

    def covered(self) -> int:
        return functools.reduce(operator.or_, (self.reach[top] for *_, top in self.found), 0)

    def local_roots(self, level: list[object]) -> list[object]:
        """The level without the objects that are local variables of a running frame or values
        of this thread's context variables (each noted as a root): neither the frame nor the
        context is a referrer the collector names."""
        rest = []
        for obj in level:
            root = self.held_roots.get(id(obj))
            if root is None:
                rest.append(obj)
            else:
                self.found.append((*root, id(obj)))
        return rest

    def step(self, level: list[object], candidates: Iterable[object]) -> list[object]:
        """The next level: the ``candidates`` that hold an object of ``level`` (roots noted)."""
        wanted = {id(obj) for obj in level}
        following: list[object] = []
        self.bookkeeping.update((id(level), id(wanted), id(following)))
        for candidate in candidates:
            ident = id(candidate)
            if ident in self.bookkeeping or isinstance(candidate, types.FrameType):
                continue  # ours, or a finished frame's locals (running ones are roots, above)
            if _is_argument_tuple(candidate, level):
                continue  # get_referrers(*level) packs the level into a tuple (3.13+)
            held = [id(r) for r in gc.get_referents(candidate) if id(r) in wanted]
            if not held:
                continue
            for child in held:
                self.holders.setdefault(child, []).append(ident)
            bits = functools.reduce(operator.or_, (self.reach[h] for h in held))
            if ident in self.nodes:
                self._spread(ident, bits)
                continue
            self.nodes[ident] = candidate
            self.towards[ident] = held[0]
            self.reach[ident] = bits
            if ident in self.roots:
                self.found.append((self.roots[ident], "", ident))
            else:
                following.append(candidate)
        self.bookkeeping.difference_update((id(level), id(wanted), id(following)))
        return following

    def _spread(self, ident: int, bits: int) -> None:
        todo = [ident]
        while todo:
            node = todo.pop()
            new = bits & ~self.reach[node]
            if new:
                self.reach[node] |= new
                todo.extend(self.holders.get(node, ()))

    def untracked_holders(self, level: list[object]) -> list[object]:
        """The next level from the containers the collector does not track (a dict or a tuple
        of atomic values), which get_referrers cannot see: one walk of the heap."""
        candidates = [
            obj
            for obj in live_objects(set(self.bookkeeping))
            if isinstance(obj, (dict, tuple)) and not gc.is_tracked(obj)
        ]
        self.bookkeeping.add(id(candidates))
        return self.step(level, candidates)

    def run(self, seconds: float) -> tuple[list[tuple[str, str, int]], str]:
        deadline = time.perf_counter() + seconds
        everything = (1 << len(self.nodes)) - 1
        level = list(self.nodes.values())
        scanned = False
        for _ in range(MAX_DEPTH):
            level = self.local_roots(level)
            if self.covered() == everything or not level:
                return self.found, ""
            if time.perf_counter() > deadline:
                return self.found, f"the search took over {seconds:g} s"
            if len(level) > MAX_WIDTH:
                self.narrowed = f"more than {MAX_WIDTH} objects at one level; some were dropped"
                level.sort(key=lambda obj: -self.reach[id(obj)])
                del level[MAX_WIDTH:]
            self.bookkeeping.add(id(level))
            following = self.step(level, gc.get_referrers(*level))
            self.bookkeeping.discard(id(level))
            if not following and not scanned:
                scanned = True
                following = self.untracked_holders(level)
            level = following
        return self.found, f"no root within {MAX_DEPTH} links of some of them"


def _is_argument_tuple(candidate: object, level: list[object]) -> bool:
    return (
        type(candidate) is tuple
        and len(candidate) == len(level)
        and all(a is b for a, b in zip(candidate, level))
    )


def _search(
    targets: Sequence[object], ignore: Iterable[object], seconds: float, limit: int
) -> Retainers:
    distinct = list({id(target): target for target in targets}.values())
    search = _Search(distinct, [targets, *ignore])
    found, cut_short = search.run(seconds)
    chains = _merge([_chain(name, where, top, search) for name, where, top in found])
    asked = len(distinct)
    reached = bin(search.covered()).count("1")
    # Shortest first, then the shortest root name: where several modules reach the same
    # object, the shorter name is usually the one people know.
    chains.sort(key=lambda c: (-c.count, len(c.links), len(c.root), c.path()))
    return Retainers(chains[:limit], asked, asked - reached, cut_short or search.narrowed)


def _merge(chains: list[Chain]) -> list[Chain]:
    """One chain per root and path (the same path printed twice says nothing new)."""
    merged: dict[str, Chain] = {}
    for chain in chains:
        key = f"{chain.path()} {chain.target}"
        old = merged.get(key)
        if old is None or chain.count > old.count:
            merged[key] = chain
    return list(merged.values())


def _chain(root: str, where: str, top: int, search: _Search) -> Chain:
    reach = search.reach
    path = [search.nodes[top]]
    ident = top
    while ident in search.towards:
        ident = search.towards[ident]
        path.append(search.nodes[ident])
    labelled = [(index, _link(path, index, bool(where))) for index in range(len(path) - 1)]
    named = _named_logger(path)
    if named is not None:
        # Whichever module's logger led to the manager, the logger is logging.getLogger(name).
        index, name = named
        root, where = "logging", ""
        labelled = [(index, f".getLogger({name!r})")] + [
            (i, text) for i, text in labelled if i > index
        ]
    links = tuple(text for _, text in labelled if text)
    count = bin(reach[top]).count("1")
    grows = None
    if count > 1:
        # The deepest node that still holds all of them: its first printed link onwards is
        # where their paths part (a ``__dict__`` between an object and its attribute prints
        # nothing of its own).
        parting = max(i for i, node in enumerate(path) if reach[id(node)] == reach[top])
        printed = [index for index, text in labelled if text]
        later = [n for n, index in enumerate(printed) if index >= parting]
        grows = later[0] if later else None
    return Chain(root, links, type_name(type(path[-1])), count, grows, where)


def _named_logger(path: list[object]) -> tuple[int, str] | None:
    """(index in ``path``, name) of the last logger reached through logging's manager (the
    manager just above its ``loggerDict``, or two above where its ``__dict__`` is a node)."""
    for index in range(len(path) - 2, 0, -1):
        loggers = path[index]
        if not isinstance(loggers, dict):
            continue
        managers = path[max(0, index - 2) : index]
        if not any(
            type_name(type(m)) == "logging.Manager" and getattr(m, "loggerDict", None) is loggers
            for m in managers
        ):
            continue
        for name, logger in list(loggers.items()):
            if logger is path[index + 1]:
                return index, str(name)
    return None


def _is_namespace_of(owner: object, namespace: object) -> bool:
    if isinstance(owner, type):
        return namespace is _type_dict(owner)
    try:
        return getattr(owner, "__dict__", None) is namespace
    except Exception:
        return False


def _type_dict(kind: type) -> object:
    """A class's own dict (``vars()`` gives a read-only proxy to it; the referent is the dict)."""
    for referent in gc.get_referents(kind):
        if isinstance(referent, dict) and referent.keys() == vars(kind).keys():
            return referent
    return None


def _key(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 40 else f"<{type_name(type(key))}>"


def _link(path: list[object], index: int, from_local: bool = False) -> str:
    """How ``path[index]`` refers to ``path[index + 1]``, as code would write it; empty where
    the next link says it (an object's ``__dict__``, a function's ``__closure__``). A path
    from a module starts at the module's dict; one ``from_local`` at the variable's value."""
    parent, child = path[index], path[index + 1]
    above = path[index - 1] if index else None
    if isinstance(parent, dict):
        attribute = (
            (index == 0 and not from_local)
            or _is_namespace_of(above, parent)
            # A thread-local's attributes: local -> its per-thread dicts -> this one.
            or (index >= 2 and type_name(type(path[index - 2])) == "_thread._local")
        )
        for key, value in list(parent.items()):
            if value is child:
                if type_name(type(above)) == "_thread._local":
                    return " → one thread's attributes"
                if attribute and isinstance(key, str) and key.isidentifier():
                    return f".{key}"
                return f"[{_key(key)}]"
        return " → a key" if any(key is child for key in parent) else "[?]"
    if isinstance(parent, (list, tuple, deque)):
        if (
            isinstance(parent, tuple)
            and isinstance(above, types.FunctionType)
            and above.__closure__ is parent
        ):
            cells = list(parent)
            names = above.__code__.co_freevars
            if child in cells:
                position = next(i for i, cell in enumerate(cells) if cell is child)
                return f" → closure cell {names[position]!r}"
        for position, value in enumerate(parent):
            if value is child:
                return f"[{position}]"
        return "[?]"
    if isinstance(parent, (set, frozenset)):
        return "{…}"
    if isinstance(parent, types.CellType):
        return ""  # named by the tuple above it
    if isinstance(parent, types.FunctionType):
        if child is parent.__closure__:
            return ""
        if child is parent.__defaults__:
            return ".__defaults__"
        if child is parent.__globals__:
            return ".__globals__"
    if isinstance(parent, types.MethodType):
        return ".__self__" if child is parent.__self__ else ".__func__"
    if isinstance(parent, BaseException):
        for name in ("__traceback__", "__context__", "__cause__"):
            if getattr(parent, name) is child:
                return f".{name}"
    if isinstance(parent, types.TracebackType):
        return ".tb_next" if child is parent.tb_next else ".tb_frame"
    if isinstance(parent, types.FrameType):
        if child is parent.f_back:
            return ".f_back"
        for name, value in list(parent.f_locals.items()):
            if value is child:
                return f" local {name!r}"
        return " (frame)"
    if _is_namespace_of(parent, child):
        return ""
    if type_name(type(parent)) == "_thread._local" or type_name(type(child)) == "_thread._local":
        return ""
    if type_name(type(parent)) == "functools._lru_cache_wrapper" and isinstance(child, dict):
        return " → its lru_cache"
    try:
        attributes = list(vars(parent).items())
    except TypeError:  # no __dict__
        attributes = []
    for name, value in attributes:
        if value is child:
            return f".{name}"
    for name in _slot_names(type(parent)):
        try:
            if getattr(parent, name) is child:
                return f".{name}"
        except Exception:
            continue
    return f" → {type_name(type(child))}"


def _slot_names(kind: type) -> list[str]:
    names: list[str] = []
    for klass in mro(kind):
        try:
            slots = vars(klass).get("__slots__", ())
        except Exception:  # a class the collector cleared has no dict to read
            continue
        names.extend([slots] if isinstance(slots, str) else list(slots))
    return names


# ---------------------------------------------------------------------------- what to ask about

# Containers whose length can grow, in the order a subclass is matched to its base (whose
# ``__len__`` is used: a subclass's own may run user code).
_CONTAINERS: tuple[type, ...] = (list, dict, set, frozenset, deque, bytearray, array.array)


_CODES = {base: code for code, base in enumerate(_CONTAINERS)}


def _container_code(obj: object) -> tuple[int, int] | None:
    """(index of its base container type, its length), or None for other objects."""
    code = _CODES.get(type(obj))
    if code is None:
        if not isinstance(obj, _CONTAINERS):
            return None
        code = next(code for code, base in enumerate(_CONTAINERS) if isinstance(obj, base))
    return code, _CONTAINERS[code].__len__(obj)  # type: ignore[attr-defined]


def container_length(obj: object) -> int:
    """A container's length by its base type's own ``__len__`` (a subclass's could run any
    code), or 0 for other objects."""
    found = _container_code(obj)
    return 0 if found is None else found[1]


def container_lengths() -> dict[int, int]:
    """The length of every live container, by id: a snapshot to compare after a few calls.
    One int each (length and base type packed), since a heap has hundreds of thousands."""
    lengths: dict[int, int] = {}
    for obj in live_objects({id(lengths)}):
        found = _container_code(obj)
        if found is not None:
            lengths[id(obj)] = found[1] * len(_CONTAINERS) + found[0]
    return lengths


def growing_containers(
    before: dict[int, int], calls: int, limit: int = 5
) -> list[tuple[object, float]]:
    """Containers alive before ``calls`` calls and after, that gained at least one entry per
    call: (container, entries per call), fastest first. The leak is usually one of them."""
    grown: list[tuple[float, int, object]] = []
    for obj in live_objects({id(before), id(grown)}):
        old = before.get(id(obj))
        if old is None:
            continue
        found = _container_code(obj)
        if found is None or found[0] != old % len(_CONTAINERS):
            continue  # another object at a freed one's address
        added = found[1] - old // len(_CONTAINERS)
        if added >= calls:
            grown.append((added / calls, len(grown), obj))
    grown.sort(key=lambda row: (-row[0], row[1]))
    return [(obj, rate) for rate, _, obj in grown[:limit]]


def growth_retainers(
    before: dict[int, int], calls: int, seconds: float = DEFAULT_SECONDS
) -> Retainers:
    """Why memory grew over ``calls`` calls: the paths to the containers that grew in them,
    each noted with its growth per call; ``before`` is ``container_lengths()`` from before."""
    grown = growing_containers(before, calls)
    containers: list[tuple[object, Chain]] = []
    cut_short = ""
    deadline = time.perf_counter() + seconds
    for container, rate in grown:
        found = find_retainers(
            [container],
            ignore=[grown, before, containers],
            seconds=max(0.0, deadline - time.perf_counter()),
        )
        cut_short = cut_short or found.cut_short
        entries = "entry" if rate == 1 else "entries"
        note = f"{type_name(type(container))}, {rate:+.1f} {entries}"
        containers.extend(
            (container, dataclasses.replace(chain, note=note, grows=len(chain.links)))
            for chain in found.chains[:1]
        )
    chains = [chain for _, chain in containers]
    return Retainers(chains, len(grown), len(grown) - len(chains), cut_short, containers)


# What an import in the window leaves (a module's functions and code), and the frames of the
# calls still running: not what a test keeps.
_IMPORT_DEBRIS = frozenset(
    {
        "code",
        "function",
        "module",
        "cell",
        "type",
        "frame",
        "getset_descriptor",
        "member_descriptor",
    }
)
# Values without references of their own, and dicts (up to 3.10 every instance's attributes
# are one): new ones are also made by the measuring itself (its figures) or belong to the
# objects of another type that grew, so they are asked about only when nothing else grew.
_ASKED_LAST = frozenset({"int", "float", "complex", "str", "bytes", "dict"})


def new_objects(
    is_new: Callable[[object], bool],
    grown: Sequence[TypeGrowth],
    types: int = 2,
    per_type: int = 12,
) -> list[object]:
    """Up to ``per_type`` live objects of each of the first ``types`` types of ``grown`` that
    ``is_new`` says were made in the window: what a retained budget or a soak asks about.
    Types under a tenth of the biggest one's bytes are left out: noise next to it. Frames of
    calls that returned, where there are any, instead of all of them (see below)."""
    rows = [row for row in grown if row.name not in _IMPORT_DEBRIS]
    biggest = max((row.bytes for row in rows), default=0)
    rows = [row for row in rows if row.bytes * 10 >= biggest]
    if any(row.name not in _ASKED_LAST for row in rows):
        rows = [row for row in rows if row.name not in _ASKED_LAST]
    names = [row.name for row in rows][:types]
    running: set[int] = set()
    if any(row.name == "frame" for row in grown):
        # The frame of a call that returned, kept by something (a traceback, most often: an
        # exception object raised again and again grows its traceback by the raise's frames
        # every time), keeps every local of that call and, through its caller frames, theirs:
        # where there are such frames, only they are asked about, or the paths found lead to
        # those locals instead (pytest's, for a test that re-raised a module's exception).
        names = ["frame", *names]
        running = {id(frame) for _, frame in _running_frames()}
    wanted: dict[str, list[object]] = {name: [] for name in names}
    for obj in live_objects({id(wanted), id(running)}):
        found = wanted.get(type_name(type(obj)))
        if (
            found is not None
            and len(found) < per_type
            and _returned(obj, running)
            and is_new(obj)
            and not _ours(obj)
        ):
            found.append(obj)
    frames = wanted.pop("frame", [])
    return frames or [obj for found in wanted.values() for obj in found]


def _returned(obj: object, running: set[int]) -> bool:
    """Not the frame of a running call, nor of a suspended generator or coroutine (whose frame
    has no caller while it waits, on every CPython this package supports): a call that
    returned. Objects of other types pass."""
    if not isinstance(obj, types.FrameType):
        return True
    return id(obj) not in running and obj.f_back is not None


def _ours(obj: object) -> bool:
    """A generator running this package's code: ``measure()``'s own context manager, which a
    window nested in a test's window counts as new (it was made in the outer one) and which
    CPython 3.12 made big enough to be asked about."""
    code = getattr(obj, "gi_code", None) if isinstance(obj, types.GeneratorType) else None
    return code is not None and code.co_filename.startswith(PACKAGE_DIR)


# ---------------------------------------------------------------------------- survivors

Kind = type | str


def kind_name(kind: Kind) -> str:
    return kind if isinstance(kind, str) else type_name(kind)


class Survivors:
    """Objects of some kinds made while it watched (``start`` to ``finish``) and alive after:
    every ``Session`` closed, no ``Connection`` left behind.

    A kind is a class (its subclasses count) or a ``"module.QualName"`` naming one, for a
    class the test cannot import. What existed at ``start`` is told apart by a weak
    reference, or by its address for objects that take none (an object made in the block at
    the address of one that died in it would then be missed)."""

    def __init__(self, kinds: Sequence[Kind]) -> None:
        if not kinds:
            raise TypeError("survivors() needs at least one class or 'module.Class' name")
        for kind in kinds:
            if not isinstance(kind, (type, str)) or kind == "":
                raise TypeError(
                    f"survivors(): expected a class or a 'module.Class' name, got {kind!r}"
                )
        self.kinds = tuple(kinds)
        self._types = tuple(k for k in kinds if isinstance(k, type))
        self._names = frozenset(k for k in kinds if isinstance(k, str))
        self._matches: dict[type, bool] = {}
        self._before: dict[int, weakref.ref[object] | None] = {}
        self.objects: list[object] = []

    def _match(self, obj: object) -> bool:
        kind = type(obj)
        known = self._matches.get(kind)
        if known is None:
            known = issubclass(kind, self._types) or any(
                type_name(klass) in self._names for klass in mro(kind)
            )
            self._matches[kind] = known
        return known

    def start(self) -> Survivors:
        before: dict[int, weakref.ref[object] | None] = {}
        for obj in live_objects({id(before), id(self)}):
            if self._match(obj):
                try:
                    before[id(obj)] = weakref.ref(obj)
                except TypeError:
                    before[id(obj)] = None
        self._before = before
        return self

    def finish(self, exclude: Iterable[object] = ()) -> None:
        """Collect garbage, then keep what is new and alive (and not in ``exclude``: a test's
        fixture values, which pytest holds until the end of its protocol)."""
        gc.collect()
        found: list[object] = []
        excluded = {id(obj) for obj in exclude}
        for obj in live_objects({id(found), id(self), id(self._before), id(excluded)}):
            if not self._match(obj) or id(obj) in excluded:
                continue
            ident = id(obj)
            if ident not in self._before:
                found.append(obj)
                continue
            old = self._before[ident]
            if old is not None and old() is not obj:  # a new object where an old one died
                found.append(obj)
        self._before = {}
        self.objects = found

    def __len__(self) -> int:
        return len(self.objects)

    def __bool__(self) -> bool:
        return bool(self.objects)

    def __iter__(self) -> Iterator[object]:
        return iter(self.objects)

    def counts(self) -> dict[str, int]:
        """How many survived, by type."""
        counts: dict[str, int] = {}
        for obj in self.objects:
            name = type_name(type(obj))
            counts[name] = counts.get(name, 0) + 1
        return counts

    def retainers(self, seconds: float = DEFAULT_SECONDS) -> Retainers:
        """Why they are alive: reference paths from roots (for up to 24 of them)."""
        return find_retainers(
            self.objects[:24], ignore=[self, vars(self), self.objects], seconds=seconds
        )

    def explain(self, source: str = "") -> str:
        """Which survived, by type, and why they are alive."""
        return render_survivors(self, source)

    def check(self) -> None:
        """Raise ``AssertionError`` with the explanation if any survived."""
        if self.objects:
            raise AssertionError(self.explain())


def render_retainers(found: Retainers, unit: str = "call") -> list[str]:
    """Why it is kept: each chain from its root, the link where many objects part marked
    ``[…]``, with how many of the objects asked about it holds."""
    if not found.chains and not found.cut_short:
        return []
    lines = ["Why it is kept (shortest reference paths from a root):"]
    for chain in found.chains:
        if chain.note:
            held = f"  ({chain.note} per {unit})"
        elif found.asked > 1:
            held = f"  ({chain.count} of {found.asked} {chain.target})"
        else:
            held = f"  ({chain.target})"
        lines.append(f"  {chain.path()}{held}")
    if found.unreached:
        lines.append(f"  ({found.unreached} of {found.asked} reached from no root found)")
    if found.cut_short:
        lines.append(f"  (search cut short: {found.cut_short})")
    return lines


def render_survivors(found: Survivors, source: str = "") -> str:
    """Objects that should not have outlived a block, by type, and why they are alive."""
    total = len(found)
    kinds = ", ".join(kind_name(k) for k in found.kinds)
    lines = [
        f"{total:,} object{'s' if total != 1 else ''} of {kinds} made here "
        f"{'are' if total != 1 else 'is'} still alive after it{f' ({source})' if source else ''}:"
    ]
    for name, count in sorted(found.counts().items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {count:>6,}  {name}")
    lines.extend(render_retainers(found.retainers()))
    return "\n".join(lines)


@contextmanager
def survivors(*kinds: Kind, pause: Callable[[bool], bool] | None = None) -> Iterator[Survivors]:
    """Watch a block: ``found.objects`` lists what of ``kinds`` it made that is still alive
    after it (garbage collected first); ``found.explain()`` says who holds them.

    ``pause`` (a heap backend's) leaves the watch's own work out of any measurement the block
    is in: its walks of the heap are not the block's allocations."""
    with _paused(pause):
        watch = Survivors(kinds).start()
    yield watch
    with _paused(pause):
        watch.finish()


@contextmanager
def _paused(pause: Callable[[bool], bool] | None) -> Iterator[None]:
    was = pause(True) if pause is not None else False
    try:
        yield
    finally:
        if pause is not None:
            pause(was)
