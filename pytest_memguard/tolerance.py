"""Tolerance: how much worse than its baseline a figure may get before it is a regression.

A regression is ``now > base + absolute + relative * base``. Both parts matter: relative slack
alone fails tiny tests on a few bytes of noise, absolute slack alone hides a doubling of a big
test. Counts (allocator calls) have an absolute slack of their own: on real suites a test's count
moves by a few calls with what ran before it (13 -> 14 would be "+7.7%").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .units import SizeError, format_size, parse_size


class ToleranceError(ValueError):
    pass


_PERCENT = r"^(?P<pct>\d+(?:\.\d+)?)\s*%$"  # compiled on first use (see units)
_CALLS = r"^(?P<calls>\d+)\s*(?:allocations|calls)$"
DEFAULT_COUNT_SLACK = 64
MAX_PERCENT = 10_000.0  # 100x the baseline: more is no gate at all (and "1"*400 is no number)


@dataclass(frozen=True)
class Tolerance:
    relative: float = 0.0
    absolute: int = 0
    count_absolute: int = DEFAULT_COUNT_SLACK

    @classmethod
    def parse(cls, value: object, what: str = "tolerance") -> Tolerance:
        """``10%``, ``64KiB``, ``10%+64KiB`` (any order), each part at most once, and an
        absolute slack for counts, ``100 allocations`` (default 64); or a ``Tolerance``."""
        if isinstance(value, Tolerance):
            return value
        if not isinstance(value, str) or not value.strip():
            raise ToleranceError(
                f"invalid {what} {value!r}: expected a spec such as '10%+64KiB', '5%' or '1MiB'"
            )
        relative = 0.0
        absolute = 0
        calls = DEFAULT_COUNT_SLACK
        seen_pct = seen_abs = seen_calls = False
        for part in (p.strip() for p in value.split("+")):
            match = re.match(_PERCENT, part)
            if match and not seen_pct and float(match.group("pct")) <= MAX_PERCENT:
                relative = float(match.group("pct")) / 100.0
                seen_pct = True
                continue
            match = re.match(_CALLS, part)
            if match and not seen_calls:
                calls = int(match.group("calls"))
                seen_calls = True
                continue
            try:
                if seen_abs:
                    raise SizeError("twice")
                absolute = parse_size(part, what)
                seen_abs = True
            except SizeError:
                raise ToleranceError(
                    f"invalid {what} {value!r}: expected a spec such as '10%+64KiB', '5%' or '1MiB'"
                ) from None
        return cls(relative, absolute, calls)

    def allowance(self, base: int, count: bool = False) -> float:
        """Slack around ``base``: the absolute part is bytes, or calls for a count."""
        return self.relative * base + (self.count_absolute if count else self.absolute)

    def side(self, base: int, now: int, count: bool = False) -> int:
        """1 above the slack around ``base`` (a regression), -1 below it (an improvement), 0
        within: one call where a comparison needs both answers."""
        slack = self.allowance(base, count)
        return 1 if now > base + slack else -1 if now < base - slack else 0

    def __str__(self) -> str:
        parts = []
        if self.relative:
            parts.append(f"{self.relative * 100:g}%")
        if self.absolute or not parts:
            parts.append(format_size(self.absolute))
        if self.count_absolute != DEFAULT_COUNT_SLACK:
            parts.append(f"{self.count_absolute} allocations")
        return "+".join(parts)
