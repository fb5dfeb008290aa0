"""A retransmission buffer, as an RTP sender keeps one to answer NACKs, with the bug that hid for
hours in production: pruning walks from the oldest packet and stops at the first one that is
recent enough, comparing 16-bit sequence numbers with a plain ``<``. Once the sequence number
wraps from 65535 to 0, the oldest packet (65500-something) never looks old again, pruning stops
for good, and the buffer grows with every packet sent."""

from __future__ import annotations

import collections

SEQ_BITS = 16
SEQ_MOD = 1 << SEQ_BITS
WINDOW = 64  # packets kept for retransmission


def seq_distance(newer: int, older: int) -> int:
    """How far ``older`` is behind ``newer`` in serial-number arithmetic (RFC 1982)."""
    return (newer - older) % SEQ_MOD


class BuggyBuffer:
    def __init__(self) -> None:
        self.packets: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def insert(self, seq: int, payload: bytes) -> None:
        self.packets[seq] = payload
        while self.packets:
            oldest = next(iter(self.packets))
            if oldest < seq - WINDOW:  # the bug: wrong across the wrap
                self.packets.popitem(last=False)
            else:
                break


class FixedBuffer(BuggyBuffer):
    def insert(self, seq: int, payload: bytes) -> None:
        self.packets[seq] = payload
        while self.packets:
            oldest = next(iter(self.packets))
            if seq_distance(seq, oldest) > WINDOW:
                self.packets.popitem(last=False)
            else:
                break
