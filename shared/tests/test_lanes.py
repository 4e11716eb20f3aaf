"""LaneConsumer against a real broker: concurrency across keys, order within a key, commits
that never pass a record in flight, records not yet due left in Kafka."""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import TopicPartition

from email_channels.consume import DeadLetters, make_consumer
from email_channels.lanes import LaneConsumer
from email_channels.producer import EventProducer

if TYPE_CHECKING:
    from email_channels.settings import KafkaSettings

pytestmark = pytest.mark.integration


async def _publish(settings: KafkaSettings, records: list[tuple[bytes, bytes, Any]]) -> None:
    async with EventProducer(settings, client_id="lanes-test") as producer:
        for key, value, headers in records:
            await producer.publish_raw(settings.topics.outbound, key, value, headers)


async def _run_until(lanes: LaneConsumer, done: Any, timeout: float = 30.0) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(lanes.run(stopping))
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    stopping.set()
    await task


async def test_keys_run_concurrently_in_order_and_commits_follow(
    kafka_settings: KafkaSettings,
) -> None:
    """Ten keys x ten records with random handler delays: per-key order kept, several keys at
    once, and the group's committed offsets reach the end of every partition."""
    topic = kafka_settings.topics.outbound
    records = [(f"k{i % 10}".encode(), f"{i % 10}:{i // 10}".encode(), []) for i in range(100)]
    await _publish(kafka_settings, records)
    seen: dict[str, list[int]] = {}
    running = 0
    most = 0
    rng = random.Random(7)

    async def handler(record: Any, attempt: int) -> None:
        nonlocal running, most
        assert attempt == 1
        running += 1
        most = max(most, running)
        await asyncio.sleep(rng.uniform(0, 0.02))
        key, index = record.value.decode().split(":")
        seen.setdefault(key, []).append(int(index))
        running -= 1

    group = f"{kafka_settings.topic_prefix}lanes"
    async with EventProducer(kafka_settings, client_id="dlq") as producer:
        consumer = make_consumer(kafka_settings, group_id=group, client_id="lanes")
        lanes = LaneConsumer(
            consumer, handler, dead_letters=DeadLetters(producer, stage="t"), stage="t"
        )
        consumer.subscribe([topic], listener=lanes.listener)
        await consumer.start()
        try:
            await _run_until(lanes, lambda: sum(len(v) for v in seen.values()) >= 100)
            tps = [TopicPartition(topic, p) for p in range(kafka_settings.partitions)]
            ends = await consumer.end_offsets(tps)
            committed = {tp: await consumer.committed(tp) for tp in tps}
        finally:
            await consumer.stop()

    assert seen == {f"{k}": list(range(10)) for k in range(10)}
    assert most > 1
    assert all(committed[tp] == end for tp, end in ends.items() if end), (committed, ends)


async def test_a_record_not_yet_due_waits_in_kafka_without_blocking_others(
    kafka_settings: KafkaSettings,
) -> None:
    """A due time 2 s ahead pauses only its partition; it is handled when due, not before."""
    topic = kafka_settings.topics.outbound
    due_at = time.time() + 2
    await _publish(
        kafka_settings,
        [
            (b"late", b"late", [("due", str(due_at).encode())]),
            *((f"now{i}".encode(), b"now", []) for i in range(10)),
        ],
    )
    handled: list[tuple[bytes, float]] = []

    async def handler(record: Any, _attempt: int) -> None:
        handled.append((record.value, time.time()))

    def due(record: Any) -> float | None:
        return next((float(v) for k, v in record.headers if k == "due"), None)

    async with EventProducer(kafka_settings, client_id="dlq") as producer:
        consumer = make_consumer(
            kafka_settings, group_id=f"{kafka_settings.topic_prefix}due", client_id="due"
        )
        lanes = LaneConsumer(
            consumer, handler, dead_letters=DeadLetters(producer, stage="t"), stage="t", due=due
        )
        consumer.subscribe([topic], listener=lanes.listener)
        await consumer.start()
        try:
            await _run_until(lanes, lambda: len(handled) >= 11)
        finally:
            await consumer.stop()

    late = [at for value, at in handled if value == b"late"]
    now = [at for value, at in handled if value == b"now"]
    assert len(late) == 1
    assert late[0] >= due_at
    assert len(now) == 10
