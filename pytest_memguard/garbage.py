"""Garbage collection around measured windows, at a cost that does not grow with the heap.

A window needs the collector twice: at its start, so that every window begins from the same
collector state (allocation counts are only deterministic when an automatic collection cannot
fall at a history-dependent moment inside the window), and at its end, so that 'retained' does
not count the window's own cyclic garbage. A full ``gc.collect()`` walks every tracked object:
2.8 ms at 30k objects, 120 ms at 1M (measured here). Two of those per test made a plain run with
baselines 1.8x slower, and the leak loop, which collects after every call, 30x.

So the collector is frozen for the length of a window: ``gc.freeze()`` at the start moves every
existing object out of reach (O(1)), the collection that follows walks nothing and only resets
the generation counts, and the collection at the end walks the window's own objects. The
objects of the window are never frozen, so its garbage is always collected in time for the
reading.

What this gives up: garbage made *before* a window and still uncollected when it starts waits
until after the window; and since every collection resets CPython's allocation counts, the
collector never decides on a full collection of its own again. So one runs between windows when
CPython's own rule would call it due: once the container objects added since the last one (net
of those freed: CPython's count) reach what its thresholds allow (about 100,000 by default,
290,000 from 3.13) and a quarter of the objects that survived it. The counts are read before
each collection resets them and summed here (a little high: what is freed just after a reset is
not subtracted), so a full collection comes no later than CPython's would have, at a point that
depends on what the code does, not on the speed of the machine. (An earlier schedule by elapsed
time gave a run under valgrind, 50 times slower, full collections that a native run never had.)
With ``gc.disable()`` or a zero threshold there are none, as in CPython. The garbage that waits
is bounded the same way: that many objects, or a quarter of a larger heap.

A ``gc.freeze()`` made by the code under test is undone when the outermost window ends
(``gc.unfreeze()`` cannot tell whose objects it releases; counting them is O(heap)).
"""

from __future__ import annotations

import gc

# CPython skips a full collection while the objects added since the last one are fewer than a
# quarter of those that survived it (gcmodule.c, "long_lived_pending").
GROWTH = 4


class Collector:
    """Nests: only the outermost window freezes and unfreezes, inner windows collect over the
    objects made since the outermost one began (which includes their own)."""

    def __init__(self) -> None:
        self.depth = 0
        self.full_collections = 0
        self.added = 0  # CPython's counts since the last full collection, summed (see _fold)
        self.long_lived = -1  # objects after the last full collection (-1: no window yet)
        self.due: float = 0  # ``added`` at which the next full collection is due

    def begin(self) -> None:
        self._fold()
        if self.depth == 0:
            gc.freeze()
            if self.added >= self.due:
                self._collect_all()
        self.depth += 1
        gc.collect()

    def collect(self) -> None:
        """Collect the garbage made since the outermost window began."""
        self._fold()
        gc.collect()

    def end(self) -> None:
        if self.depth == 0:
            return
        self.depth -= 1
        if self.depth == 0:
            gc.unfreeze()

    def _fold(self) -> None:
        """Add what CPython has counted since the last collection, which the next one resets:
        objects, and any young collections since, in objects."""
        young, middle, old = gc.get_count()
        self.added += young
        if middle or old:
            first, second, _ = gc.get_threshold()
            self.added += (middle + old * _cycle(second)) * (first + 1)

    def _collect_all(self) -> None:
        """A full collection where CPython's rule calls one due, with the heap unfrozen for its
        length (the caller froze it), then the next due point. The first window only takes the
        heap it finds as long-lived, as if just collected: counting it is O(heap), once."""
        first, second, third = gc.get_threshold()
        if self.long_lived >= 0:
            if not gc.isenabled() or first <= 0:
                return  # CPython would not collect either; asked again at the next window
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.full_collections += 1
        self.long_lived = gc.get_freeze_count()
        self.added = 0
        self.due = max((first + 1) * _cycle(second) * _cycle(third), self.long_lived // GROWTH)


def _cycle(threshold: int) -> int:
    """Younger collections per collection of a generation: CPython collects the oldest one
    whose count exceeds its threshold when the youngest is due, in place of that one."""
    return threshold + 2
