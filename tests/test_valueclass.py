"""Value classes behave like the dataclasses they replace."""

from __future__ import annotations

import pickle

import pytest

from pytest_memguard.valueclass import FrozenError, field, replace, valueclass


@valueclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()


@valueclass
class Bag:
    name: str
    items: list[int] = field(default_factory=list)
    count: int = field(default=3)


def test_init_defaults_and_factories() -> None:
    assert (Point(1).x, Point(1).y, Point(1, 2).y, Point(x=1, y=5).y) == (1, 0, 2, 5)
    first, second = Bag("a"), Bag("b")
    first.items.append(1)
    assert second.items == []  # a fresh list per instance, not a shared default
    assert first.count == 3


def test_eq_repr_and_hash() -> None:
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(2, 1)
    assert Point(1).__eq__((1, 0, ())) is NotImplemented
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=())"
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert len({Point(1, 2), Point(1, 2), Point(3)}) == 2
    with pytest.raises(TypeError):
        hash(Bag("a"))  # mutable values are unhashable, as with dataclass(eq=True)


def test_frozen_refuses_assignment() -> None:
    point = Point(1)
    with pytest.raises(FrozenError, match="frozen Point"):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del point.y
    bag = Bag("a")
    bag.count = 5
    assert bag.count == 5


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "missing required argument 'x'"),
        ((1, 2, (), 4), {}, "takes 3 positional arguments but 4 were given"),
        ((1,), {"x": 2}, "multiple values for argument 'x'"),
        ((1,), {"z": 2, "w": 1}, "unexpected keyword argument.* w, z"),
    ],
)
def test_bad_arguments_are_type_errors(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)  # type: ignore[arg-type]


def test_replace_and_pickle() -> None:
    point = Point(1, 2, ("a",))
    moved = replace(point, y=7)
    assert moved == Point(1, 7, ("a",))
    assert point.y == 2
    assert pickle.loads(pickle.dumps(point)) == point
    assert pickle.loads(pickle.dumps(Bag("a", [1]))) == Bag("a", [1])
