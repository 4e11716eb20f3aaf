"""ConfigStore's write discipline that needs no broker to show."""

from __future__ import annotations

from typing import Any

import pytest

from config_api.errors import Unavailable
from config_api.store import ConfigStore
from email_channels.errors import TransientError
from email_channels.settings import KafkaSettings


class SlowView:
    """Stands in for a CompactedView's read-back wait (our own interface)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.waits: list[tuple[int, int]] = []

    async def wait_for(self, partition: int, offset: int, *, timeout: float) -> None:
        self.waits.append((partition, offset))
        if self.failures:
            self.failures -= 1
            raise TransientError("not read back")


async def test_a_write_not_read_back_blocks_the_next_write_until_it_is() -> None:
    """After a read-back timeout, the next write waits for the earlier record first, so it
    never checks a revision against a view that misses the previous write."""
    store = ConfigStore(KafkaSettings(), transactional_id="t")
    view: Any = SlowView(failures=1)
    store._unread = [(view, 0, 41)]
    try:
        with pytest.raises(Unavailable, match="previous write"):
            await store._settle_unread()
        assert store._unread == [(view, 0, 41)]
        await store._settle_unread()
        assert store._unread == []
        assert view.waits == [(0, 41), (0, 41)]
    finally:
        await store.stop()
