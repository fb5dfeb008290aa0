from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_memguard.units import SizeError, format_count, format_size, parse_size

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (123, 123),
        ("123", 123),
        ("123B", 123),
        ("1K", KiB),
        ("1kb", KiB),
        ("1KiB", KiB),
        ("50MB", 50 * MiB),
        ("50mb", 50 * MiB),
        ("50 MiB", 50 * MiB),
        ("1.5GB", int(1.5 * GiB)),
        ("1.5 gib", int(1.5 * GiB)),
        (".5M", MiB // 2),
        ("2T", 2 * TiB),
        ("2TiB", 2 * TiB),
        ("  7 KB ", 7 * KiB),
        (1e6, 1_000_000),
    ],
)
def test_parse_size_accepts(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        -1,
        "-1MB",
        "NaN",
        float("nan"),
        float("inf"),
        -0.5,
        True,
        False,
        "fifty",
        "50XB",
        "5 0MB",
        "",
        "MB",
        "50  MB",
        "1e3",
        None,
        [50],
        "50M B",
    ],
)
def test_parse_size_rejects_with_the_value_and_the_name(bad: object) -> None:
    with pytest.raises(SizeError) as info:
        parse_size(bad, "mem_budget peak on tests/test_x.py::test_y")
    message = str(info.value)
    assert "mem_budget peak on tests/test_x.py::test_y" in message
    assert repr(bad) in message


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "n/a"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (30 * MiB, "30.0 MiB"),
        (int(1.5 * GiB), "1.5 GiB"),
        (-10 * MiB, "-10.0 MiB"),
        (5 * TiB, "5.0 TiB"),
    ],
)
def test_format_size(value: int | None, text: str) -> None:
    assert format_size(value) == text


def test_format_size_signed_and_counts() -> None:
    assert format_size(2 * MiB, signed=True) == "+2.0 MiB"
    assert format_size(0, signed=True) == "0 B"
    assert format_count(1234567) == "1,234,567"
    assert format_count(5, signed=True) == "+5"
    assert format_count(None) == "n/a"


@given(st.integers(min_value=0, max_value=2**60))
def test_int_and_bytes_round_trip_exactly(n: int) -> None:
    assert parse_size(n) == n
    assert parse_size(str(n)) == n
    assert parse_size(f"{n}B") == n
    assert parse_size(f"{n} b") == n


@given(st.integers(min_value=0, max_value=2**60))
def test_formatted_sizes_parse_back_within_rounding(n: int) -> None:
    back = parse_size(format_size(n))
    # One decimal in a unit >= 1 is at most 5% off; below 1 KiB the value is exact.
    assert math.isclose(back, n, rel_tol=0.05, abs_tol=0)


@given(
    st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False),
    st.sampled_from(["K", "KB", "KiB", "M", "MB", "MiB", "G", "GB", "GiB"]),
    st.sampled_from(["", " "]),
    st.booleans(),
)
def test_units_are_case_insensitive_powers_of_1024(
    number: object, unit: str, space: str, lower: bool
) -> None:
    text = f"{number}{space}{unit.lower() if lower else unit}"
    factor = {"K": KiB, "M": MiB, "G": GiB}[unit[0]]
    assert parse_size(text) == round(Fraction(str(number)) * factor)
