"""Wiring only: settings -> Kafka clients, views, transports -> the lane consumer.

Start-up order matters: the channels view and the delivery ledger are caught up *before* the
first outbound record is consumed, so no channel looks unknown and no sent id looks new just
because the sender has not read far enough yet; and every time partitions are assigned (a
takeover after another replica stopped or crashed), the ledger is caught up again before any
record of them is handled, so that replica's last intents are seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import structlog

from email_channels.admin import ensure_topics
from email_channels.blobstore import blob_store_from_url
from email_channels.compacted import CompactedView
from email_channels.consume import DeadLetters, make_consumer
from email_channels.events import ChannelConfig
from email_channels.health import group_problem, views_problem
from email_channels.lanes import LaneConsumer
from email_channels.producer import EventProducer
from sender.handlers import OutboundHandler
from sender.ledger import DeliveryLedger, delivery_view
from sender.retries import RetrySchedule
from sender.transports.factory import ChannelTransports

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

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
        self._views: list[tuple[str, CompactedView[Any] | None]] = []
        self._consumer: AIOKafkaConsumer | None = None

    def not_ready_reason(self) -> str | None:
        """For /readyz: views caught up, then a working member of the outbound group."""
        if not self.ready.is_set():
            return "starting: topics, producer, channels and sent-ids views"
        return views_problem(self._views) or group_problem(self._consumer, self.settings.group_id)

    def default_transports(self) -> TransportFactory:
        common = self.settings.common
        return ChannelTransports(
            host_policy=common.host_policy(),
            secrets=common.secret_box(needed_for="decrypt SMTP passwords"),
            ca_file=common.ca_file,
            smtp_timeout=self.settings.smtp_timeout,
            local_hostname=self.settings.local_hostname,
            limits=self.settings.pool_limits,
            graph_throttle_wait_s=self.settings.graph_throttle_wait_s,
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Serve until ``stopping`` is set; every client is closed on the way out."""
        settings = self.settings
        kafka, topics, client_id = settings.kafka, settings.kafka.topics, settings.client_id
        transports = self._transports or self.default_transports()
        retries = RetrySchedule(topics, settings.retry_delays_s)
        if settings.ensure_topics:
            await ensure_topics(kafka, client_id=f"{client_id}-admin", extra_topics=retries.specs())
        async with AsyncExitStack() as stack:
            blobs = self._blobs or blob_store_from_url(settings.common.blob_store_url)
            stack.push_async_callback(blobs.aclose)
            stack.push_async_callback(transports.aclose)

            producer = EventProducer(
                kafka,
                client_id=client_id,
                compression_type=settings.producer_compression.kafka_name,
            )
            await producer.start()
            stack.push_async_callback(producer.stop)

            channels = CompactedView(
                kafka, topics.channels, ChannelConfig, client_id=f"{client_id}-channels"
            )
            await channels.start()
            stack.push_async_callback(channels.stop)

            ledger = DeliveryLedger()
            instance = uuid.uuid4().hex.encode()  # this life of this process, on its events
            deliveries = delivery_view(
                kafka, ledger, client_id=f"{client_id}-ledger", instance=instance
            )
            await deliveries.start()
            stack.push_async_callback(deliveries.stop)
            self._views = [("channels", channels), ("delivery", deliveries)]

            handler = OutboundHandler(
                channels=channels,
                transports=transports,
                publisher=producer,
                topics=topics,
                ledger=ledger,
                blobs=blobs,
                retries=retries,
                max_attachment_bytes=settings.max_attachment_bytes,
                instance=instance,
            )

            async def catch_up_deliveries(assigned: set[TopicPartition]) -> None:
                await deliveries.catch_up(timeout=60)
                log.info("delivery ledger caught up after assignment", partitions=len(assigned))

            session_timeout_ms = int(settings.group_session_timeout_s * 1000)
            consumer = make_consumer(
                kafka,
                group_id=settings.group_id,
                client_id=f"{client_id}-outbound",
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=max(1000, session_timeout_ms // 3),
            )
            lanes = LaneConsumer(
                consumer,
                handler,
                dead_letters=DeadLetters(producer, stage=STAGE, blobs=blobs),
                give_up=handler.gave_up,
                stage=STAGE,
                policy=settings.retry_policy,
                max_in_flight=settings.max_in_flight,
                due=retries.due,
                on_assigned=catch_up_deliveries,
            )
            consumer.subscribe([topics.outbound, *retries.topic_names], listener=lanes.listener)
            await consumer.start()
            stack.push_async_callback(consumer.stop)
            self._consumer = consumer
            reaper = asyncio.create_task(_reap(transports, settings.pool_idle_s / 2))
            stack.callback(reaper.cancel)

            log.info(
                "sender ready",
                channels=len(channels),
                outcomes=len(ledger),
                group_id=settings.group_id,
                topic=topics.outbound,
                retry_delays_s=list(settings.retry_delays_s),
            )
            self.ready.set()
            await lanes.run(stopping)
            log.info("sender stopping")


async def _reap(transports: TransportFactory, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(Exception):
            transports.reap()
