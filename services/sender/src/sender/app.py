"""Wiring only: settings -> Kafka clients, views, transports -> the consume loop.

Start-up order matters: the channels view and the sent-ids ledger are caught up *before* the
first outbound record is consumed, so no channel looks unknown and no sent id looks new just
because the sender has not read far enough yet.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import structlog

from email_channels.admin import ensure_topics
from email_channels.blobstore import blob_store_from_url
from email_channels.compacted import CompactedView
from email_channels.consume import consume, make_consumer
from email_channels.events import ChannelConfig
from email_channels.producer import EventProducer
from sender.handlers import OutboundHandler, ReportingDeadLetters
from sender.ledger import SentLedger, delivery_view
from sender.transports.factory import ChannelTransports

if TYPE_CHECKING:
    from email_channels.blobstore import BlobStore
    from sender.settings import SenderSettings
    from sender.transports.factory import TransportFactory

log = structlog.get_logger(__name__)

STAGE = "sender"
"""``stage`` of this service's dead letters and consume metrics."""


class SenderApp:
    """The sender service. ``transports`` and ``blobs`` can be swapped (tests, demos)."""

    def __init__(
        self,
        settings: SenderSettings,
        *,
        transports: TransportFactory | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.settings = settings
        self._transports = transports
        self._blobs = blobs
        self.ready = asyncio.Event()

    def default_transports(self) -> TransportFactory:
        common = self.settings.common
        return ChannelTransports(
            host_policy=common.host_policy(),
            secrets=common.secret_box(needed_for="decrypt SMTP passwords"),
            ca_file=common.ca_file,
            smtp_timeout=self.settings.smtp_timeout,
            local_hostname=self.settings.local_hostname,
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Serve until ``stopping`` is set; every client is closed on the way out."""
        settings = self.settings
        kafka, topics, client_id = settings.kafka, settings.kafka.topics, settings.client_id
        transports = self._transports or self.default_transports()
        if settings.ensure_topics:
            await ensure_topics(kafka, client_id=f"{client_id}-admin")
        async with AsyncExitStack() as stack:
            blobs = self._blobs or blob_store_from_url(settings.common.blob_store_url)
            stack.push_async_callback(blobs.aclose)
            if isinstance(transports, ChannelTransports):
                stack.push_async_callback(transports.aclose)  # Graph keeps connections open

            producer = EventProducer(kafka, client_id=client_id)
            await producer.start()
            stack.push_async_callback(producer.stop)

            channels = CompactedView(
                kafka, topics.channels, ChannelConfig, client_id=f"{client_id}-channels"
            )
            await channels.start()
            stack.push_async_callback(channels.stop)

            ledger = SentLedger()
            deliveries = delivery_view(kafka, ledger, client_id=f"{client_id}-ledger")
            await deliveries.start()
            stack.push_async_callback(deliveries.stop)

            handler = OutboundHandler(
                channels=channels,
                transports=transports,
                publisher=producer,
                topics=topics,
                ledger=ledger,
                blobs=blobs,
                max_attachment_bytes=settings.max_attachment_bytes,
            )
            consumer = make_consumer(
                kafka,
                topics.outbound,
                group_id=settings.group_id,
                client_id=f"{client_id}-outbound",
            )
            await consumer.start()
            stack.push_async_callback(consumer.stop)

            log.info(
                "sender ready",
                channels=len(channels),
                sent_ids=len(ledger),
                group_id=settings.group_id,
                topic=topics.outbound,
            )
            self.ready.set()
            await consume(
                consumer,
                handler,
                dead_letters=ReportingDeadLetters(producer, handler, stage=STAGE, blobs=blobs),
                stopping=stopping,
                stage=STAGE,
                policy=settings.retry_policy,
            )
            log.info("sender stopping")
