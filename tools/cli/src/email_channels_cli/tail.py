"""Print a topic's records: key, the headers consumers filter on, and the JSON value."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from email_channels.topics import Topic

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from email_channels.settings import KafkaSettings


@dataclass(frozen=True)
class Shown:
    """One record as the CLI shows it."""

    topic: str
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]
    value: Any


def full_name(settings: KafkaSettings, topic: str) -> str:
    """``email.routed`` -> the deployment's name behind its prefix; other names as given."""
    known = {t.value for t in Topic}
    return settings.topics(Topic(topic)) if topic in known else topic


def shown(record: Any) -> Shown:
    """A record for display: bytes decoded, raw MIME and undecodable values summarised."""
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
    value: Any
    if record.value is None:
        value = None
    else:
        try:
            value = json.loads(record.value)
        except ValueError:
            value = f"<{len(record.value)} bytes, not JSON>"
    if isinstance(value, dict):
        for field in ("raw_mime", "original_value"):
            if isinstance(value.get(field), str) and len(value[field]) > 200:  # noqa: PLR2004
                value[field] = f"<{len(value[field])} base64 chars>"
    return Shown(record.topic, record.partition, record.offset, key, headers, value)


async def records(
    settings: KafkaSettings, topic: str, *, follow: bool = False, last: int | None = None
) -> AsyncIterator[Any]:
    """The records of ``topic`` oldest first (only the ``last`` N per partition if given);
    without ``follow`` it stops at the end, with it it waits for new ones."""
    consumer = AIOKafkaConsumer(
        **settings.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - first look-up
            partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise LookupError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        if last is not None:
            begins = await consumer.beginning_offsets(tps)
            for tp in tps:
                consumer.seek(tp, max(begins[tp], ends[tp] - last))
        else:
            await consumer.seek_to_beginning(*tps)
        while follow or not await _at(consumer, ends):
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                for record in batch:
                    yield record
    finally:
        await consumer.stop()


async def _at(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether every partition has been read up to the end offsets taken at the start."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True
