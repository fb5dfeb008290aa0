"""Caches and queues whose memory behaviour only shows over time."""

from __future__ import annotations

import collections
import time
from typing import Any


class TTLCache:
    """Entries expire ``ttl`` seconds after insertion (checked on every insert)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.entries: collections.OrderedDict[Any, tuple[float, Any]] = collections.OrderedDict()

    def put(self, key: Any, value: Any) -> None:
        now = time.monotonic()
        self.entries[key] = (now, value)
        while self.entries:
            oldest_key, (stamp, _) = next(iter(self.entries.items()))
            if now - stamp < self.ttl:
                break
            del self.entries[oldest_key]


class ForeverCache:
    """The same interface with no expiry: fine in a unit test, unbounded in a service."""

    def __init__(self) -> None:
        self.entries: dict[Any, Any] = {}

    def put(self, key: Any, value: Any) -> None:
        self.entries[key] = value


class Pipeline:
    """A producer that enqueues two items for every one its consumer takes."""

    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()

    def step(self) -> None:
        self.queue.append(b"x" * 64)
        self.queue.append(b"y" * 64)
        self.queue.popleft()
