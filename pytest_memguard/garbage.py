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
until after the window. A full collection therefore runs between windows, first a second after
the first window, then whenever the time since the last one reaches ``1 / share`` times what it
cost, which keeps it under ``share`` of the wall time whatever the heap size, and still
collects pytest's own cyclic garbage several times a second on a small heap.

A ``gc.freeze()`` made by the code under test is undone when the outermost window ends
(``gc.unfreeze()`` cannot tell whose objects it releases; counting them is O(heap)).
"""

from __future__ import annotations

import gc
import time

DEFAULT_SHARE = 0.01
# The cost of the first full collection is unknown until it has run; deferring it keeps a short
# run (where a fixed cost shows most) from paying it at all.
FIRST_DELAY = 1.0


class Collector:
    """Nests: only the outermost window freezes and unfreezes, inner windows collect over the
    objects made since the outermost one began (which includes their own)."""

    def __init__(self, share: float = DEFAULT_SHARE, first_delay: float = FIRST_DELAY) -> None:
        self.share = share
        self.first_delay = first_delay
        self.depth = 0
        self._next_full: float | None = None  # perf_counter() time a full collection is due
        self.full_collections = 0

    def begin(self) -> None:
        if self.depth == 0:
            now = time.perf_counter()
            if self._next_full is None:
                self._next_full = now + self.first_delay
            if now >= self._next_full:
                self._collect_all(now)
            gc.freeze()
        self.depth += 1
        gc.collect()

    def collect(self) -> None:
        """Collect the garbage made since the outermost window began."""
        gc.collect()

    def end(self) -> None:
        if self.depth == 0:
            return
        self.depth -= 1
        if self.depth == 0:
            gc.unfreeze()

    def _collect_all(self, start: float) -> None:
        """A full collection, outside any window; schedules the next one."""
        gc.collect()
        done = time.perf_counter()
        self.full_collections += 1
        self._next_full = done + (done - start) / self.share
