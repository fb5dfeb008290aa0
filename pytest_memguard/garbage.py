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
the heap has grown, net, by what CPython's thresholds allow (about 100,000 objects by default,
290,000 from 3.13) or by a quarter of what it held after the last full one (CPython's
"long_lived_pending" rule). Net: what was freed since counts against the growth, uncollected
garbage counts for it, so the garbage that waits is bounded by that much.

The heap is measured as ``sys.getallocatedblocks()``, the blocks pymalloc has handed out: one
per small object, 0.4-0.7 ms to read at 3-6M blocks (it visits each pool) where counting the
tracked objects walks them all, 60-200 ms. So it is read only when CPython's counts, read before
each collection resets them and summed, say the growth could be due. Those counts cost nothing
but are no measure of growth: an object made in one window and freed after the next reset is
never subtracted, and each young collection counts as a full generation of new objects. On
packaging's suite (64,000 tests) they alone called 13 full collections, 0.5-1 s each; the net
growth of the heap called 2. Either way a full collection falls at a point that depends on what
the code does, not on the speed of the machine (an earlier schedule by elapsed time gave a run
under valgrind, 50 times slower, full collections that a native run never had). With
``gc.disable()`` or a zero threshold there are none, as in CPython.

A suite that freezes the heap itself keeps it frozen. packaging's conftest freezes its 64,000
collected items so that its collections skip them; thawed after every window, they made each
full collection (the plugin's and pytest's five at the session's end) walk 2.2M objects instead
of 0.9M, and the run 1.31x plain instead of 1.07x. ``gc.unfreeze()`` cannot tell whose objects
it releases, so once a window finds anything frozen the collector stops thawing the heap after
its windows; what it froze since waits for the scheduled full collections, which thaw it for
their length, and one more when the session ends (``settle``), so that no garbage (and no
finalizer) made under the plugin is left for after it. A freeze made inside a window is undone
when the window ends.
"""

from __future__ import annotations

import gc
import sys

# CPython skips a full collection while the objects added since the last one are fewer than a
# quarter of those that survived it (gcmodule.c, "long_lived_pending"); here, in blocks.
GROWTH = 4


class Collector:
    """Nests: only the outermost window freezes and unfreezes, inner windows collect over the
    objects made since the outermost one began (which includes their own)."""

    def __init__(self) -> None:
        self.depth = 0
        self.full_collections = 0
        # Growth since the heap was last measured, bounded from above by CPython's counts
        # (see _fold), plus the growth measured then.
        self.added = 0
        self.heap = -1  # the heap after the last full collection (-1: no window yet)
        self.due = 0  # growth at which the next full collection is due
        self.suite_freezes = False  # the suite froze the heap itself: keep it frozen

    def begin(self) -> None:
        self._fold()
        if self.depth == 0:
            # Nothing is frozen between windows unless the suite froze it (one step when empty).
            self.suite_freezes = self.suite_freezes or gc.get_freeze_count() > 0
            gc.freeze()
            if self.added >= self.due:
                self._collect_if_grown()
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
        if self.depth == 0 and not self.suite_freezes:
            gc.unfreeze()

    def settle(self) -> None:
        """The end of the measured session: where the suite froze the heap, collect what the
        collector froze after it, and leave everything frozen as the suite would find it."""
        if self.suite_freezes and self.depth == 0:
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    def _fold(self) -> None:
        """Add what CPython has counted since the last collection, which the next one resets:
        objects, and any young collections since, in objects."""
        young, middle, old = gc.get_count()
        self.added += young
        if middle or old:
            first, second, _ = gc.get_threshold()
            self.added += (middle + old * _cycle(second)) * (first + 1)

    def _collect_if_grown(self) -> None:
        """A full collection where the heap has grown by the due amount, with the heap unfrozen
        for its length (the caller froze it), then the next due point. The first window only
        takes the heap it finds as it is, as if just collected."""
        first, second, third = gc.get_threshold()
        if self.heap >= 0:
            if not gc.isenabled() or first <= 0:
                return  # CPython would not collect either; asked again at the next window
            self.added = heap_size() - self.heap
            if self.added < self.due:
                return
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.full_collections += 1
        self.heap = heap_size()
        self.added = 0
        self.due = max((first + 1) * _cycle(second) * _cycle(third), self.heap // GROWTH)


def heap_size() -> int:
    """Blocks allocated by pymalloc; with another allocator (``PYTHONMALLOC=malloc``, where
    CPython reports 0) the objects the collector tracks, all frozen when this is called."""
    return sys.getallocatedblocks() or gc.get_freeze_count()


def _cycle(threshold: int) -> int:
    """Younger collections per collection of a generation: CPython collects the oldest one
    whose count exceeds its threshold when the youngest is due, in place of that one."""
    return threshold + 2
