"""The stand-in for KIP-447: a member the group asked to rejoin does not commit its batch.

aiokafka 0.14 cannot send the consumer's generation with the transaction's offsets, so the
routing loop asks the consumer itself before committing; this holds that question to a real
broker's answer (no mocked aiokafka).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from aiokafka import ConsumerRebalanceListener

from email_channels.consume import make_consumer
from router.transactions import StaleMembership, _check_membership, _rejoin_pending

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from email_channels.settings import KafkaSettings


class BatchInFlight(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Holds a revocation until ``done`` is set, as the routing loop's batch lock does."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        if revoked:
            await self.done.wait()

    async def on_partitions_assigned(self, assigned: object) -> None:
        return None


async def joined(consumer: AIOKafkaConsumer, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not consumer.assignment():
        assert loop.time() < deadline, "the consumer never got partitions"
        await consumer.getmany(timeout_ms=200)


@pytest.mark.integration
async def test_a_member_asked_to_rejoin_refuses_to_commit(kafka_settings: KafkaSettings) -> None:
    """A settled member may commit; once a second member joins while the first one is in a
    batch (its revocation waits for the batch), the first one's heartbeat learns of the
    rebalance and the commit check raises; after the rebalance it may commit again."""
    topic, group = kafka_settings.topics.raw, f"{kafka_settings.topic_prefix}fencing"
    options = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 300}
    first = make_consumer(kafka_settings, group_id=group, client_id="first", **options)
    second = make_consumer(kafka_settings, topic, group_id=group, client_id="second", **options)
    in_batch = BatchInFlight()
    await first.start()
    first.subscribe([topic], listener=in_batch)
    try:
        await joined(first)
        assert not _rejoin_pending(first)
        _check_membership(first)  # a settled member: no error
        await second.start()
        joining = asyncio.create_task(joined(second))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not _rejoin_pending(first):  # no getmany: the first one is "in a batch"
            assert loop.time() < deadline, "the heartbeat never reported the rebalance"
            await asyncio.sleep(0.1)
        with pytest.raises(StaleMembership, match="rebalancing"):
            _check_membership(first)
        in_batch.done.set()  # the batch aborted: the rebalance goes on
        await asyncio.wait_for(joining, 30)
        deadline = loop.time() + 20
        while _rejoin_pending(first):  # the first one rejoins with its next fetch
            assert loop.time() < deadline, "the first member never rejoined"
            await first.getmany(timeout_ms=200)
        _check_membership(first)
    finally:
        in_batch.done.set()
        await second.stop()
        await first.stop()
