"""faust wiring only: settings -> faust app (durable producer, config views) -> handlers.

Choices, and why:

- **Config as CompactedViews, not faust GlobalTables.** Every router instance needs all
  channels and filters. A GlobalTable would need faust's changelog naming or a hand-pointed
  changelog topic, faust-side serialisers, and faust's table recovery (which also wants the
  faust partition assignor and a local store) -- for topics faust does not own and must never
  write to. The shared :class:`~email_channels.compacted.CompactedView` already reads a
  compacted topic from the beginning without a consumer group, handles tombstones and bad
  records, and can wait until it has caught up. :class:`RouterState` runs two of them as a mode
  service the app starts *before* its producer, consumer and agents, so no record is routed
  before the config has been read, and stops them after the agents.
- **Durable producer.** faust's ``producer_acks`` covers acks=all, but faust turns on
  idempotence only inside exactly-once transactions; :class:`DurableProducer` adds it and
  asserts both (``email_channels.producer.assert_durable``) as the producer starts.
- **Topics are the contract's**, created by ``email_channels.admin.ensure_topics``; faust may
  not declare any (``topic_allow_declare=False``, no leader topic, the raw topic not internal).
- **Acks by hand.** faust acks an event when the agent moves on *or* when the agent is torn down
  in the middle of it; the router iterates a ``noack`` stream and acks only after the routed
  record (or the dead letter) was acknowledged by Kafka, so a shutdown mid-retry re-delivers
  instead of committing past an unrouted email. For the same reason faust must not wait for
  in-flight events on stop or rebalance (``stream_wait_empty=False``): a record retried until
  the blob store is back would otherwise hold up SIGTERM and every rebalance; the unacked
  record is simply delivered again to whoever owns the partition next (at-least-once).
- **One agent instance, records in order.** Concurrency would process a partition's records
  out of order and leave gaps in the acked offsets; mail volume does not need it. Scale by
  adding router processes (partitions of email.raw are spread by the consumer group).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import TYPE_CHECKING, Any

import faust
import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service

from email_channels.codec import encode, encode_key, record_headers
from email_channels.compacted import CompactedView
from email_channels.consume import DeadLetters, RetryPolicy
from email_channels.events import ChannelConfig, ChannelFilters
from email_channels.health import group_problem, views_problem
from email_channels.producer import MAX_REQUEST_BYTES, assert_durable, map_publish_error
from email_channels.service import health_server
from router.handlers import EmailRouter, RawRecordHandler, RecordProcessor

if TYPE_CHECKING:
    from email_channels.blobstore import BlobStore
    from email_channels.codec import Headers
    from email_channels.events import Contract
    from email_channels.health import HealthServer
    from email_channels.settings import KafkaSettings
    from email_channels.topics import TopicNames
    from router.settings import RouterSettings

log = structlog.get_logger(__name__)

STAGE = "router"


class DurableProducer(faust_aiokafka.Producer):
    """faust's aiokafka producer with ``enable_idempotence=True``, asserted at start-up."""

    def _settings_extra(self) -> dict[str, Any]:
        # acks=-1 comes from the app's producer_acks; faust only lacks an idempotence switch.
        return {**super()._settings_extra(), "enable_idempotence": True}

    async def on_start(self) -> None:
        await super().on_start()
        assert_durable(self._producer)
        log.info("producer started", acks="all", idempotent=True)


class DurableTransport(faust_aiokafka.Transport):
    Producer = DurableProducer


class RouterState(Service):
    """The config views (channels, filters) and the blob store, for the app's lifetime."""

    def __init__(self, settings: RouterSettings, blobs: BlobStore, **kwargs: Any) -> None:
        kafka, topics = settings.kafka, settings.kafka.topics
        self.settings = settings
        self.blobs = blobs
        self.channels = CompactedView(
            kafka, topics.channels, ChannelConfig, client_id=f"{settings.app_id}-channels"
        )
        self.filters = CompactedView(
            kafka, topics.filters, ChannelFilters, client_id=f"{settings.app_id}-filters"
        )
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        timeout = self.settings.config_start_timeout_seconds
        try:
            await asyncio.gather(
                self.channels.start(timeout=timeout), self.filters.start(timeout=timeout)
            )
        except BaseException:
            await self._stop_views()
            raise
        log.info("config loaded", channels=len(self.channels), filters=len(self.filters))

    async def on_stop(self) -> None:
        await self._stop_views()
        await self.blobs.aclose()

    async def _stop_views(self) -> None:
        await self.filters.stop()
        await self.channels.stop()

    async def catch_up(self) -> None:
        """Read channels and filters up to what the topics hold now."""
        timeout = self.settings.config_catch_up_timeout_seconds
        await asyncio.gather(
            self.channels.catch_up(timeout=timeout), self.filters.catch_up(timeout=timeout)
        )


class HealthService(Service):
    """/healthz and /readyz (email_channels.health) on the worker's loop, first up, last down."""

    def __init__(self, server: HealthServer, **kwargs: Any) -> None:
        self.server = server
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.server.start()

    async def on_stop(self) -> None:
        await self.server.stop()


def router_not_ready(app: faust.App, state: RouterState, group: str) -> str | None:
    """For /readyz: config views caught up, then a working member of the router's group."""
    views: list[tuple[str, CompactedView[Any] | None]] = [
        ("channels", state.channels),
        ("filters", state.filters),
    ]
    if reason := views_problem(views):
        return reason
    if app.rebalancing:
        return f"consumer group {group} is rebalancing"
    # faust runs the aiokafka consumer in its own thread: look at that consumer's membership.
    consumer = getattr(getattr(app.consumer, "_thread", None), "_consumer", None)
    return group_problem(consumer, group)


class FaustPublisher:
    """Publishes event models through the faust app's (durable) producer; waits for the ack."""

    def __init__(self, app: faust.App, topics: TopicNames) -> None:
        self._app = app
        self.topics = topics

    async def publish(
        self,
        topic: str,
        key: str,
        event: Contract | None,
        *,
        headers: Headers | None = None,
        **header_values: str,
    ) -> object:
        all_headers = record_headers(event, headers, **header_values)
        try:
            return await self._app.producer.send_and_wait(
                topic,
                encode_key(key),
                encode(event) if event is not None else None,
                partition=None,
                timestamp=None,
                headers=all_headers,
            )
        except Exception as exc:
            mapped = map_publish_error(exc, topic)
            if mapped is None:
                raise
            raise mapped from exc


def broker_urls(bootstrap_servers: str) -> list[str]:
    """``host1:9092,host2:9092`` -> faust broker URLs, one per server."""
    servers = [server.strip() for server in bootstrap_servers.split(",") if server.strip()]
    if not servers:
        raise ValueError("KAFKA_BOOTSTRAP_SERVERS is empty")
    return [f"kafka://{server}" for server in servers]


def broker_credentials(kafka: KafkaSettings) -> Any:
    """faust credentials equivalent to ``KafkaSettings.client_kwargs()`` (None = plaintext)."""
    ssl_context = kafka.client_kwargs().get("ssl_context")
    if not isinstance(ssl_context, ssl.SSLContext):
        ssl_context = None
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism,
            ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


def build_app(settings: RouterSettings, *, blobs: BlobStore) -> faust.App:
    """The router's faust app: one agent on email.raw, config views as a dependency."""
    kafka, topics = settings.kafka, settings.kafka.topics
    app = faust.App(
        settings.app_id,
        broker=broker_urls(kafka.bootstrap_servers),
        broker_credentials=broker_credentials(kafka),
        broker_client_id=settings.app_id,
        producer_acks=-1,
        producer_max_request_size=MAX_REQUEST_BYTES,
        producer_compression_type="gzip",
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        stream_wait_empty=False,  # a record stuck in retries must not block stop or rebalance
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
        datadir=str(settings.data_dir),
        web_enabled=settings.web_port is not None,
        web_port=settings.web_port or 6066,
        web_bind=settings.web_bind,
        autodiscover=False,
    )
    app.transport = DurableTransport(app.conf.broker_consumer, app)

    state = RouterState(settings, blobs)
    health = health_server(settings.common, lambda: router_not_ready(app, state, settings.app_id))
    if health is not None:
        app.add_dependency(HealthService(health))  # first: probes answer while config loads
    app.add_dependency(state)  # before faust's own services: config is read before routing

    publisher = FaustPublisher(app, topics)
    processor = RecordProcessor(
        RawRecordHandler(
            EmailRouter(
                channels=state.channels,
                filters=state.filters,
                blobs=blobs,
                catch_up=state.catch_up,
                max_routed_bytes=settings.max_routed_bytes,
            ),
            publisher,
        ),
        dead_letters=DeadLetters(publisher, stage=STAGE, blobs=blobs),
        policy=RetryPolicy(
            attempts=settings.retry_attempts or sys.maxsize,
            first_backoff=settings.retry_first_backoff_seconds,
            max_backoff=settings.retry_max_backoff_seconds,
        ),
        stage=STAGE,
    )
    raw_topic = app.topic(
        topics.raw,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        internal=False,
    )

    async def route_raw(stream: Any) -> None:
        events = stream.noack()
        async for event in events.events():
            await processor(event.message)
            await events.ack(event)

    app.agent(raw_topic, name=f"{settings.app_id}.route-raw", concurrency=1)(route_raw)
    return app
