"""Where the fetcher's events go: email.raw, email.fetch-cursors, email.channel-status.

The worker depends on the small :class:`EventSink` Protocol; :class:`KafkaSink` is the real
one. Every method returns only after Kafka acknowledged the record (acks=all, idempotent
producer), which is what lets the worker touch the mailbox afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from email_channels.events import ChannelStatus, FetchCursor, RawEmail
    from email_channels.producer import EventProducer


class EventSink(Protocol):
    async def publish_raw(self, email: RawEmail) -> None:
        """One fetched message to email.raw (key: channel id)."""
        ...

    async def publish_cursor(self, cursor: FetchCursor) -> None:
        """The channel's fetch position to email.fetch-cursors (key: channel id)."""
        ...

    async def publish_status(self, status: ChannelStatus) -> None:
        """The channel's inbound health to email.channel-status (key: channel id)."""
        ...


class KafkaSink:
    """:class:`EventSink` on the shared durable producer."""

    def __init__(self, producer: EventProducer) -> None:
        self._producer = producer
        self._topics = producer.topics

    async def publish_raw(self, email: RawEmail) -> None:
        await self._producer.publish(self._topics.raw, email.channel_id, email)

    async def publish_cursor(self, cursor: FetchCursor) -> None:
        await self._producer.publish(self._topics.fetch_cursors, cursor.channel_id, cursor)

    async def publish_status(self, status: ChannelStatus) -> None:
        await self._producer.publish(self._topics.channel_status, status.key, status)
