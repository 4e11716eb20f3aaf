"""What a channel already published to email.raw, by fingerprint (Message-ID + sha256).

Used only after an IMAP UIDVALIDITY change: the renumbered folder is taken again, and a message
whose fingerprint the channel already published is settled instead of published twice. The
record is read back from email.raw itself, keyed (and so partitioned) by channel id: one
partition is read from its start to its end when a folder was renumbered, which is rare. Mail
older than email.raw's retention is no longer known and would be published again — a duplicate
under a new ``email_id``, never a loss.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from email_channels.codec import encode_key
from email_channels.compacted import partitions_of
from email_channels.errors import TransientError

if TYPE_CHECKING:
    from email_channels.settings import KafkaSettings


def fingerprint(message_id: str | None, sha256: str) -> str:
    """Message-ID and content hash of one message, as one string."""
    return f"{message_id or ''}\x00{sha256}"


class PublishedLookup(Protocol):
    async def fingerprints(self, channel_id: str) -> set[str]:
        """Fingerprints of every message the channel published (within retention)."""
        ...


class KafkaPublished:
    """:class:`PublishedLookup` reading the channel's partition of email.raw."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str) -> None:
        self._kafka = kafka
        self._client_id = client_id

    async def fingerprints(self, channel_id: str) -> set[str]:
        topic = self._kafka.topics.raw
        consumer = AIOKafkaConsumer(
            **self._kafka.client_kwargs(),
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
            partitions = sorted(await partitions_of(consumer, topic, wait=5.0))
            if not partitions:
                return set()
            key = encode_key(channel_id)
            # aiokafka's DefaultPartitioner, as the producer used it for this key.
            partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
            return await _read(consumer, TopicPartition(topic, partition), channel_id)
        except KafkaError as exc:
            raise TransientError(f"could not read back email.raw: {exc!r}") from exc
        finally:
            await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, channel_id: str) -> set[str]:
    consumer.assign([tp])
    end = (await consumer.end_offsets([tp]))[tp]
    await consumer.seek_to_beginning(tp)
    found: set[str] = set()
    while await consumer.position(tp) < end:
        batches = await consumer.getmany(tp, timeout_ms=1000)
        for record in batches.get(tp, []):
            if record.value is None:
                continue
            value = json.loads(record.value)
            if value.get("channel_id") == channel_id and value.get("sha256"):
                found.add(fingerprint(value.get("message_id"), value["sha256"]))
    return found
