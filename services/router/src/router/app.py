"""Wiring only: settings -> Kafka clients, config views, the table of marks -> the routing loop.

Choices, and why:

- **aiokafka directly, not faust.** faust-streaming 0.15.3's ``exactly_once`` guarantee cannot
  be relied on: its aiokafka driver swallows failures of the transaction calls
  (``Producer.begin_transaction``, ``commit_transaction`` and ``abort_transaction`` in
  ``faust/transport/drivers/aiokafka.py`` end in ``except Exception: logger.warning(...)``),
  so a commit that failed is logged and processing carries on as if it had succeeded; and it
  commits on its commit timer (``broker_commit_every``), not per batch, with one transactional
  producer per assigned partition. The loop the router needs is short
  (:mod:`router.transactions`), so it is written with aiokafka's transactional producer,
  where every failure is seen and handled.
- **Config as CompactedViews** (channels, filters), read before the first record is routed.
- **The table of marks** (:mod:`router.marks`) is a CompactedView of ``email.router-state``,
  read in full by every instance; the routing transactions write it, and
  :class:`~router.delivery_marks.DeliveryMarks` adds the Message-IDs of sent mail from
  ``email.delivery``.
- **Topics are the contract's**, created by ``email_channels.admin.ensure_topics``.
- **One batch at a time**, records in order inside it; parsing and blob writes of a batch run
  ahead concurrently. A local-disk blob store syncs once per transaction (before the commit)
  instead of two fsyncs per blob. Scale by adding router processes (partitions of email.raw
  are spread by the consumer group), each with its own ``ROUTER_INSTANCE_ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from email_channels.admin import ensure_topics
from email_channels.blobstore import LocalBlobStore
from email_channels.compacted import CompactedView
from email_channels.consume import DeadLetters, RetryPolicy, consume
from email_channels.errors import TransientError
from email_channels.events import ChannelConfig, ChannelFilters, RouterMark
from email_channels.health import group_problem, views_problem
from email_channels.producer import MAX_REQUEST_BYTES, EventProducer, assert_durable
from router.batched_blobs import BatchedBlobs
from router.delivery_marks import DeliveryMarks
from router.handlers import EmailRouter, RawRecordHandler
from router.marks import Marks
from router.transactions import STAGE, RoutingLoop, TransactionalPublisher

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine

    from email_channels.blobstore import BlobStore
    from router.settings import RouterSettings

log = structlog.get_logger(__name__)

MAX_BATCH_BYTES = 1024 * 1024
"""Records per partition batch, uncompressed (aiokafka's default is 16 KiB). An idempotent
producer has one batch in flight per partition, and a record larger than the batch size
travels alone: with the default, each 25 KB routed mail was one broker round trip. 1 MiB
stays within the broker's default ``message.max.bytes`` even before compression."""


class RouterApp:
    """The router for the lifetime of :meth:`run`."""

    def __init__(self, settings: RouterSettings, *, blobs: BlobStore) -> None:
        self.settings = settings
        if isinstance(blobs, LocalBlobStore):  # one filesystem sync per transaction, not 2/blob
            blobs = LocalBlobStore(blobs.root, durability="batch")
        self.blobs = BatchedBlobs(blobs)  # written together before each transaction commits
        kafka, topics = settings.kafka, settings.kafka.topics
        self.channels = CompactedView(
            kafka, topics.channels, ChannelConfig, client_id=f"{settings.app_id}-channels"
        )
        self.filters = CompactedView(
            kafka, topics.filters, ChannelFilters, client_id=f"{settings.app_id}-filters"
        )
        self.marks = Marks(
            window=timedelta(seconds=settings.duplicate_window_s),
            retention=timedelta(seconds=settings.marks_retention_s),
            max_entries=settings.marks_max_entries,
        )
        self.state = CompactedView(
            kafka,
            topics.router_state,
            RouterMark,
            client_id=f"{settings.app_id}-state",
            on_change=self.marks.on_change,
            retain=False,  # the marks keep their own indexes
        )
        self._consumer: AIOKafkaConsumer | None = None

    def not_ready_reason(self) -> str | None:
        """For /readyz: config views and the table of marks caught up, then a working member
        of the router's group (joined, with a generation)."""
        views: list[tuple[str, CompactedView[Any] | None]] = [
            ("channels", self.channels),
            ("filters", self.filters),
            ("router-state", self.state),
        ]
        return views_problem(views) or group_problem(self._consumer, self.settings.app_id)

    @property
    def transactional_id(self) -> str:
        return f"{self.settings.app_id}-{self.settings.instance_id}"

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.settings
        if settings.ensure_topics:
            await ensure_topics(settings.kafka, client_id=settings.app_id)
        timeout = settings.config_start_timeout_seconds
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.blobs.aclose)
            for view in (self.channels, self.filters, self.state):
                stack.push_async_callback(view.stop)
            await asyncio.gather(
                self.channels.start(timeout=timeout),
                self.filters.start(timeout=timeout),
                self.state.start(timeout=timeout),
            )
            log.info(
                "config and marks loaded",
                channels=len(self.channels),
                filters=len(self.filters),
                marks=len(self.marks),
            )
            producer = self._transactional_producer()
            stack.push_async_callback(producer.stop)
            await _start(producer.start(), "the transactional producer")
            assert_durable(producer)
            log.info("transactional producer started", transactional_id=self.transactional_id)

            consumer = self._raw_consumer()
            loop = self._routing_loop(consumer, producer)
            stack.push_async_callback(consumer.stop)
            await _start(consumer.start(), "the email.raw consumer")
            consumer.subscribe([settings.kafka.topics.raw], listener=loop)
            self._consumer = consumer

            delivery = DeliveryMarks(settings.kafka, group_id=f"{settings.app_id}-delivery-marks")
            marks_producer = EventProducer(settings.kafka, client_id=f"{settings.app_id}-marks")
            stack.push_async_callback(marks_producer.stop)
            await marks_producer.start()
            delivery_consumer = delivery.consumer()
            stack.push_async_callback(delivery_consumer.stop)
            await _start(delivery_consumer.start(), "the email.delivery consumer")
            await self._run_until_stopped(
                loop.run(stopping),
                consume(
                    delivery_consumer,
                    delivery.handler(marks_producer),
                    dead_letters=DeadLetters(marks_producer, stage=f"{STAGE}-delivery-marks"),
                    stopping=stopping,
                    stage=f"{STAGE}-delivery-marks",
                    policy=self._policy(),
                ),
            )
            log.info("router stopping")

    @staticmethod
    async def _run_until_stopped(*work: Coroutine[Any, Any, None]) -> None:
        """Run the loops together; the first to fail (or all, on stop) ends the router."""
        tasks = [asyncio.create_task(w) for w in work]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _raw_consumer(self) -> AIOKafkaConsumer:
        settings = self.settings
        session_ms = int(settings.session_timeout_s * 1000)
        return AIOKafkaConsumer(
            **settings.kafka.client_kwargs(),
            group_id=settings.app_id,
            client_id=settings.app_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 5),
        )

    def _transactional_producer(self) -> AIOKafkaProducer:
        settings = self.settings
        return AIOKafkaProducer(
            **settings.kafka.client_kwargs(),
            client_id=settings.app_id,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=int(settings.transaction_timeout_s * 1000),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=MAX_BATCH_BYTES,
            max_request_size=MAX_REQUEST_BYTES,
            compression_type=settings.compression.kafka_name,
        )

    def _routing_loop(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> RoutingLoop:
        settings = self.settings
        publisher = TransactionalPublisher(producer, settings.kafka.topics)
        handler = RawRecordHandler(
            EmailRouter(
                channels=self.channels,
                filters=self.filters,
                blobs=self.blobs,
                catch_up=self._catch_up_config,
                max_routed_bytes=settings.max_routed_bytes,
                limits=settings.parse_limits,
                parse_inline_max_bytes=settings.parse_inline_max_bytes,
            ),
            publisher,
            self.marks,
            prefetch_concurrency=settings.prefetch_concurrency,
        )
        return RoutingLoop(
            consumer=consumer,
            producer=producer,
            publisher=publisher,
            handler=handler,
            dead_letters=DeadLetters(publisher, stage=STAGE, blobs=self.blobs),
            policy=self._policy(),
            group_id=settings.app_id,
            catch_up=self._catch_up_state,
            before_commit=self.blobs.flush,
            batch_max_records=settings.batch_max_records,
        )

    def _policy(self) -> RetryPolicy:
        settings = self.settings
        return RetryPolicy(
            attempts=settings.retry_attempts or sys.maxsize,
            first_backoff=settings.retry_first_backoff_seconds,
            max_backoff=settings.retry_max_backoff_seconds,
        )

    async def _catch_up_config(self) -> None:
        """Read channels and filters up to what the topics hold now."""
        timeout = self.settings.config_catch_up_timeout_seconds
        await asyncio.gather(
            self.channels.catch_up(timeout=timeout), self.filters.catch_up(timeout=timeout)
        )

    async def _catch_up_state(self) -> None:
        """Read the marks up to what is committed now (before routing newly assigned mail)."""
        await self.state.catch_up(timeout=self.settings.config_catch_up_timeout_seconds)


async def _start(starting: Awaitable[None], what: str) -> None:
    try:
        await starting
    except KafkaError as exc:
        raise TransientError(f"cannot start {what}: {exc!r}") from exc
