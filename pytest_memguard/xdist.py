"""pytest-xdist hooks, registered only when xdist is installed (its hook names would be unknown
otherwise). Results already travel to the controller with each report's user_properties; what
the controller also needs is the full list of collected tests, to tell stale baseline entries
from tests that merely were not run here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plugin import MemguardPlugin


class XdistHooks:
    def __init__(self, plugin: MemguardPlugin) -> None:
        self.plugin = plugin

    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        self.plugin.collected.update(ids)
