"""Wiring only: settings -> Kafka producer, blob store, sources -> workers -> ownership.

Everything with behaviour lives in its own module: :mod:`fetcher.ownership` (which channels),
:mod:`fetcher.supervisor` (one worker per channel), :mod:`fetcher.worker` (the fetch loop and
its failure policy), :mod:`fetcher.sources` (mail protocols), :mod:`fetcher.sink` (Kafka).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import TYPE_CHECKING

import structlog

from email_channels.admin import ensure_topics
from email_channels.blobstore import blob_store_from_url
from email_channels.producer import EventProducer
from fetcher.ownership import Ownership
from fetcher.published import KafkaPublished
from fetcher.sink import KafkaSink
from fetcher.sources import SourceRegistry
from fetcher.sources.graph import GraphOptions, GraphSourceFactory
from fetcher.sources.imap import ImapOptions, ImapSourceFactory
from fetcher.sources.mailserver import MailServerOptions
from fetcher.sources.pop3 import Pop3Options, Pop3SourceFactory
from fetcher.supervisor import Supervisor
from fetcher.worker import ChannelWorker, WorkerPolicy

if TYPE_CHECKING:
    from email_channels.blobstore import BlobStore
    from email_channels.events import ChannelConfig, FetchCursor
    from fetcher.settings import FetcherSettings

log = structlog.get_logger(__name__)


class FetcherApp:
    """The fetcher process: run until ``stopping`` is set, then stop cleanly."""

    def __init__(self, settings: FetcherSettings) -> None:
        self.settings = settings
        self._secret_box = settings.common.secret_box(needed_for="decrypt mailbox passwords")
        self._ownership: Ownership | None = None

    def not_ready_reason(self) -> str | None:
        """For /readyz: ready once the channels this fetcher owns are known."""
        if self._ownership is None:
            return "starting: topics and producer"
        return self._ownership.not_ready_reason()

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.settings
        client_id = f"email-fetcher-{settings.instance_id}"
        if settings.ensure_topics:
            await ensure_topics(settings.kafka, client_id=client_id)
        blobs = blob_store_from_url(settings.common.blob_store_url)
        try:
            async with EventProducer(
                settings.kafka,
                client_id=client_id,
                # A batch of messages goes out as one produce request per partition: aiokafka's
                # 16 KiB default batch would hold less than one 26 KB message, and with
                # idempotence only one request per partition is in flight, so every message
                # would wait for its own acks=all round trip.
                max_batch_size=settings.producer_batch_bytes,
                linger_ms=round(settings.producer_linger_s * 1000),
                compression_type=settings.producer_compression.kafka_name,
            ) as producer:
                published = KafkaPublished(settings.kafka, client_id=client_id)
                supervisor = self._supervisor(KafkaSink(producer), blobs, published)
                ownership = Ownership(
                    settings.kafka, supervisor, group_id=settings.group_id, client_id=client_id
                )
                self._ownership = ownership
                log.info(
                    "fetcher starting",
                    instance_id=settings.instance_id,
                    group_id=settings.group_id,
                    bootstrap_servers=settings.kafka.bootstrap_servers,
                    topic_prefix=settings.kafka.topic_prefix,
                )
                await ownership.run(stopping)
        finally:
            await blobs.aclose()
        log.info("fetcher stopped")

    def _supervisor(
        self, sink: KafkaSink, blobs: BlobStore, published: KafkaPublished
    ) -> Supervisor:
        settings = self.settings
        common = settings.common
        large_downloads = asyncio.Semaphore(settings.large_downloads)
        server = asdict(
            MailServerOptions(
                command_timeout=settings.command_timeout_s,
                fetch_timeout=settings.fetch_timeout_s,
                poll_interval=settings.poll_interval_s,
                ca_file=common.ca_file,
                max_message_bytes=settings.max_message_bytes,
                batch_bytes=settings.batch_bytes,
                large_message_bytes=settings.large_message_bytes,
                large_chunk_bytes=settings.large_chunk_bytes,
            )
        )
        sources = SourceRegistry(
            {
                "imap": ImapSourceFactory(
                    secret_box=self._secret_box,
                    host_policy=common.host_policy(),
                    options=ImapOptions(
                        **server,
                        use_idle=settings.imap_idle,
                        idle_renew=settings.idle_renew_s,
                        hot_window=settings.hot_window_s,
                        hot_poll=settings.hot_poll_s,
                    ),
                    large_downloads=large_downloads,
                    blobs=blobs,
                ),
                "pop3": Pop3SourceFactory(
                    secret_box=self._secret_box,
                    host_policy=common.host_policy(),
                    options=Pop3Options(**server),
                    large_downloads=large_downloads,
                    blobs=blobs,
                ),
                "graph": GraphSourceFactory(
                    secret_box=self._secret_box,
                    host_policy=common.host_policy(),
                    options=GraphOptions(
                        poll_interval=settings.poll_interval_s,
                        timeout=settings.fetch_timeout_s,
                        ca_file=common.ca_file,
                        max_message_bytes=settings.max_message_bytes,
                    ),
                ),
            }
        )
        policy = WorkerPolicy(
            first_backoff=settings.retry_first_backoff_s,
            max_backoff=settings.retry_max_backoff_s,
            misconfigured_backoff=settings.misconfigured_backoff_s,
            inactive_after_failures=settings.inactive_after_failures,
            batch_size=settings.batch_size,
            unreadable_tries=settings.unreadable_tries,
        )

        def worker(channel: ChannelConfig, cursor: FetchCursor | None) -> ChannelWorker:
            return ChannelWorker(
                channel,
                cursor,
                sources=sources,
                sink=sink,
                blobs=blobs,
                inline_max_bytes=common.inline_max_bytes,
                reported_by=settings.instance_id,
                policy=policy,
                published=published,
            )

        return Supervisor(worker, fetchable=sources.supports, stop_timeout=settings.stop_timeout_s)
