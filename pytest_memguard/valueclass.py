"""Value classes: what ``@dataclass`` gives this package, without its start-up cost.

``@dataclass`` writes the source of ``__init__``, ``__repr__``, ``__eq__`` (and for frozen
classes ``__setattr__``, ``__delattr__``, ``__hash__``) and compiles it with ``exec``: about
1.4 ms per frozen class here. The plugin had nineteen of them on its import path, so ~25 ms of
every pytest run went to compiling methods, which on a suite of 500 sub-millisecond tests was a
tenth of what the plugin cost in all. These methods are closures over the field names instead:
building a class costs microseconds, and an instance costs a little more to make (classes made
per test write their own ``__init__``, which is kept).

Type checkers see ``@dataclass`` semantics through ``dataclass_transform`` (PEP 681).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar, overload

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda f: f


T = TypeVar("T", bound=type)
V = TypeVar("V")
_MISSING: Any = object()


class _Field:
    __slots__ = ("default", "factory")

    def __init__(self, default: Any, factory: Callable[[], Any] | None) -> None:
        self.default = default
        self.factory = factory


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None) -> Any:
    """A field with a default, or a factory for a mutable default (``list``, ``dict``)."""
    return _Field(default, default_factory)


class FrozenError(AttributeError):
    """Assignment to a field of a frozen value."""


def _fields(cls: type) -> list[tuple[str, Any, Callable[[], Any] | None]]:
    """(name, default or _MISSING, factory or None) in declaration order."""
    found = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        default = cls.__dict__.get(name, _MISSING)
        factory = None
        if isinstance(default, _Field):
            default, factory = default.default, default.factory
            if default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, default)
        found.append((name, default, factory))
    return found


def _make_init(cls_name: str, fields: list[tuple[str, Any, Callable[[], Any] | None]]) -> Any:
    count = len(fields)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > count:
            raise TypeError(
                f"{cls_name}() takes {count} positional arguments but {len(args)} were given"
            )
        # object.__setattr__, not self.__dict__: on 3.12+ touching __dict__ turns the object's
        # inline attribute values into a real dict, which later allocates where it did not.
        put = object.__setattr__
        for index, (name, default, factory) in enumerate(fields):
            if index < len(args):
                if name in kwargs:
                    raise TypeError(f"{cls_name}() got multiple values for argument {name!r}")
                put(self, name, args[index])
            elif name in kwargs:
                put(self, name, kwargs.pop(name))
            elif factory is not None:
                put(self, name, factory())
            elif default is not _MISSING:
                put(self, name, default)
            else:
                raise TypeError(f"{cls_name}() missing required argument {name!r}")
        if kwargs:  # what is left was not a field
            unexpected = ", ".join(sorted(kwargs))
            raise TypeError(f"{cls_name}() got unexpected keyword argument(s) {unexpected}")

    return __init__


def _build(cls: T, frozen: bool) -> T:
    fields = _fields(cls)
    names = tuple(name for name, _, _ in fields)

    if "__init__" not in cls.__dict__:
        cls.__init__ = _make_init(cls.__name__, fields)  # type: ignore[misc]

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    if "__repr__" not in cls.__dict__:
        cls.__repr__ = __repr__  # type: ignore[assignment]
    cls.__eq__ = __eq__  # type: ignore[assignment,method-assign]
    setattr(cls, "__match_args__", names)  # noqa: B010 - mypy forbids the assignment
    setattr(cls, "__value_fields__", names)  # noqa: B010
    if frozen:

        def __setattr__(self: Any, name: str, value: Any) -> None:
            raise FrozenError(f"cannot assign to field {name!r} of a frozen {cls.__name__}")

        def __delattr__(self: Any, name: str) -> None:
            raise FrozenError(f"cannot delete field {name!r} of a frozen {cls.__name__}")

        def __hash__(self: Any) -> int:
            return hash(tuple(getattr(self, n) for n in names))

        cls.__setattr__ = __setattr__  # type: ignore[assignment,method-assign]
        cls.__delattr__ = __delattr__  # type: ignore[assignment,method-assign]
        cls.__hash__ = __hash__  # type: ignore[assignment,method-assign]
    else:
        cls.__hash__ = None  # type: ignore[assignment]
    return cls


@overload
def valueclass(cls: T) -> T: ...
@overload
def valueclass(*, frozen: bool = False) -> Callable[[T], T]: ...
@dataclass_transform(field_specifiers=(field,))
def valueclass(cls: T | None = None, *, frozen: bool = False) -> T | Callable[[T], T]:
    """``@valueclass`` or ``@valueclass(frozen=True)``, used like ``@dataclass``."""
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)


def replace(value: V, **changes: Any) -> V:
    """A copy of a value with some fields changed (``dataclasses.replace``)."""
    fields: tuple[str, ...] = getattr(type(value), "__value_fields__")  # noqa: B009
    current = {name: getattr(value, name) for name in fields}
    current.update(changes)
    return type(value)(**current)
