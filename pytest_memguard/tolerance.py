"""Tolerance: how much worse than its baseline a figure may get before it is a regression.

A regression is ``now > base + absolute + relative * base``. Both parts matter: relative slack
alone fails tiny tests on a few bytes of noise, absolute slack alone hides a doubling of a big
test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .units import SizeError, format_size, parse_size


class ToleranceError(ValueError):
    pass


_PERCENT = r"^(?P<pct>\d+(?:\.\d+)?)\s*%$"  # compiled on first use (see units)


@dataclass(frozen=True)
class Tolerance:
    relative: float = 0.0
    absolute: int = 0

    @classmethod
    def parse(cls, value: object, what: str = "tolerance") -> Tolerance:
        """``10%``, ``64KiB``, ``10%+64KiB`` (either order), or a ``Tolerance``."""
        if isinstance(value, Tolerance):
            return value
        if not isinstance(value, str) or not value.strip():
            raise ToleranceError(
                f"invalid {what} {value!r}: expected a spec such as '10%+64KiB', '5%' or '1MiB'"
            )
        relative = 0.0
        absolute = 0
        seen_pct = seen_abs = False
        for part in (p.strip() for p in value.split("+")):
            match = re.match(_PERCENT, part)
            if match and not seen_pct:
                relative = float(match.group("pct")) / 100.0
                seen_pct = True
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
        return cls(relative, absolute)

    def allowance(self, base: int, count: bool = False) -> float:
        """Slack around ``base``. The absolute part is bytes, so a count (allocator calls)
        gets only the relative part."""
        return self.relative * base + (0 if count else self.absolute)

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
        return "+".join(parts)
