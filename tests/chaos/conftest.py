"""Chaos scenarios: the full versions run only under ``make chaos`` (EMAIL_CHANNELS_CHAOS=1).

``make test`` runs the short version (``test_short_...``) so CI guards the guarantees; the long
ones (thousands of messages, dozens of kills) are deselected there, not skipped.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("EMAIL_CHANNELS_CHAOS") == "1":
        return
    full = [item for item in items if item.get_closest_marker("chaos") is not None]
    if full:
        config.hook.pytest_deselected(items=full)
        items[:] = [item for item in items if item.get_closest_marker("chaos") is None]
