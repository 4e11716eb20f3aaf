"""Where the fetcher's events go: email.raw, email.fetch-cursors, email.channel-status, email.dlq.

The worker depends on the small :class:`EventSink` Protocol; :class:`KafkaSink` is the real
one. Every method returns only after Kafka acknowledged the record(s) (acks=all, idempotent
producer), which is what lets the worker touch the mailbox afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from email_channels.events import ChannelStatus, DeadLetter, FetchCursor, RawEmail
    from email_channels.producer import EventProducer


class EventSink(Protocol):
    async def publish_raw(self, emails: Sequence[RawEmail]) -> None:
        """Fetched messages to email.raw (key: channel id), all acknowledged on return."""
        ...

    async def publish_cursor(self, cursor: FetchCursor) -> None:
        """The channel's fetch position to email.fetch-cursors (key: channel id)."""
        ...

    async def publish_status(self, status: ChannelStatus) -> None:
        """The channel's inbound health to email.channel-status (key: channel id)."""
        ...

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        """A message the fetcher cannot take to email.dlq (key: channel id)."""
        ...


class KafkaSink:
    """:class:`EventSink` on the shared durable producer."""

    def __init__(self, producer: EventProducer) -> None:
        self._producer = producer
        self._topics = producer.topics

    async def publish_raw(self, emails: Sequence[RawEmail]) -> None:
        if emails:
            await self._producer.publish_all(self._topics.raw, [(e.channel_id, e) for e in emails])

    async def publish_cursor(self, cursor: FetchCursor) -> None:
        await self._producer.publish(self._topics.fetch_cursors, cursor.channel_id, cursor)

    async def publish_status(self, status: ChannelStatus) -> None:
        await self._producer.publish(self._topics.channel_status, status.key, status)

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        await self._producer.publish(self._topics.dlq, letter.channel_id or "", letter)
