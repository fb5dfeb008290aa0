"""Long runs in seconds: counters that start next to their wrap, a clock that runs fast."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import pytest
from caches import ForeverCache, Pipeline, TTLCache
from rtp_buffer import SEQ_BITS, BuggyBuffer, FixedBuffer

from pytest_memguard.plugin import MemguardFixture


def send(buffer: BuggyBuffer, seq: Iterator[int], soak: Iterable[int]) -> None:
    for _ in soak:
        buffer.insert(next(seq), bytes(200))  # a fresh packet each time


def test_buggy_buffer_leaks_after_the_wrap(memguard: MemguardFixture) -> None:
    seq = memguard.counter(SEQ_BITS)  # starts 100 before 65535: the wrap comes early
    with pytest.raises(AssertionError, match="kept growing"):
        send(BuggyBuffer(), seq, memguard.soak(2_000))


def test_buggy_buffer_looks_fine_when_counting_from_zero(memguard: MemguardFixture) -> None:
    seq = memguard.counter(SEQ_BITS, start=0)  # how the original tests counted: no wrap, no bug
    send(BuggyBuffer(), seq, memguard.soak(2_000))


def test_fixed_buffer_survives_the_wrap(memguard: MemguardFixture) -> None:
    send(FixedBuffer(), memguard.counter(SEQ_BITS), memguard.soak(2_000))


def test_producer_outrunning_its_consumer_grows(memguard: MemguardFixture) -> None:
    pipeline = Pipeline()
    soak = memguard.soak(5_000)
    with pytest.raises(AssertionError, match="kept growing"):
        any(pipeline.step() for _ in soak)


def test_bounded_lru_levels_off(memguard: MemguardFixture) -> None:
    @functools.lru_cache(maxsize=256)
    def lookup(key: int) -> bytes:
        return bytes(100)

    for i in memguard.soak(5_000):
        lookup(i)


def test_ttl_cache_expires_under_a_fast_clock(memguard: MemguardFixture) -> None:
    cache = TTLCache(ttl=3600)  # one hour
    with memguard.fast_clock(step=60):  # every clock read is a minute later
        for i in memguard.soak(5_000):  # ~3.5 days of traffic
            cache.put(i, bytes(200))
    assert len(cache.entries) <= 61


def test_cache_without_expiry_grows(memguard: MemguardFixture) -> None:
    cache = ForeverCache()
    soak = memguard.soak(5_000)
    with pytest.raises(AssertionError, match="kept growing"):
        any(cache.put(i, bytes(200)) for i in soak)
