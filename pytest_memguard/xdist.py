"""pytest-xdist hooks, registered only in the controller of an xdist run (the hook names are
unknown without xdist). Results travel to the controller with each report's user_properties;
what it also needs is the full list of collected tests, to tell stale baseline entries from
tests that merely were not run here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class XdistHooks:
    def __init__(self, collected: set[str]) -> None:
        self.collected = collected

    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        self.collected.update(ids)
