"""Sizes as people write them and as people read them.

Input units follow pytest-memray (``KB``/``MB`` are powers of 1024) so that budgets written for
it carry over unchanged; output always uses IEC names (``KiB``, ``MiB``) so nobody has to
wonder which convention a number was printed in.
"""

from __future__ import annotations

import math
import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}

# One number (integer or decimal), at most one space, an optional unit. Nothing else: "5 0MB"
# and "50XB" must fail rather than be guessed at. (re.match caches the compiled pattern: not
# compiling it at import keeps ~0.5 M instructions off every pytest start that parses no size.)
_SIZE_PATTERN = r"^(?P<num>\d+(?:\.\d*)?|\.\d+) ?(?P<unit>[A-Za-z]*)$"

EXPECTED = "a size such as 50MB, 1.5GiB, '512 KiB' or an int of bytes"


class SizeError(ValueError):
    """A value that is not a size; the message says what was expected."""


def parse_size(value: object, what: str = "size") -> int:
    """Return ``value`` as a whole number of bytes.

    ``what`` names the value in the error (``"mem_budget peak on tests/test_x.py::test_y"``):
    a bad budget is only useful to report if the user can find where it was written.
    """
    if isinstance(value, bool):
        raise SizeError(f"invalid {what} {value!r}: expected {EXPECTED}, not a bool")
    if isinstance(value, int):
        if value < 0:
            raise SizeError(f"invalid {what} {value!r}: a size cannot be negative")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise SizeError(f"invalid {what} {value!r}: expected {EXPECTED}")
        return int(round(value))
    if not isinstance(value, str):
        raise SizeError(f"invalid {what} {value!r}: expected {EXPECTED}")
    match = re.match(_SIZE_PATTERN, value.strip())
    unit = match.group("unit").lower() if match else None
    if match is None or unit not in _UNITS:
        raise SizeError(f"invalid {what} {value!r}: expected {EXPECTED}")
    number = match.group("num")
    if number.isdigit():
        return int(number) * _UNITS[unit]
    # Fraction, not float: byte counts past 2**53 must survive exactly.
    from fractions import Fraction

    return round(Fraction(number) * _UNITS[unit])


# Stops at TiB so that every printed size parses back (INTERFACE sizes end at T).
_IEC = ("B", "KiB", "MiB", "GiB", "TiB")


def format_size(value: int | None, signed: bool = False) -> str:
    """Render bytes in IEC units with one decimal (``30.0 MiB``); ``None`` is ``n/a``.

    ``signed`` prefixes ``+`` on growth so that deltas read as deltas.
    """
    if value is None:
        return "n/a"
    sign = "-" if value < 0 else ("+" if signed and value > 0 else "")
    magnitude = float(abs(value))
    if magnitude < 1024:
        return f"{sign}{int(magnitude)} B"
    for unit in _IEC[1:]:
        magnitude /= 1024.0
        if magnitude < 1024 or unit == _IEC[-1]:
            return f"{sign}{magnitude:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_count(value: int | None, signed: bool = False) -> str:
    """Render a count with thousands separators; ``None`` is ``n/a``."""
    if value is None:
        return "n/a"
    return f"{value:+,}" if signed else f"{value:,}"
