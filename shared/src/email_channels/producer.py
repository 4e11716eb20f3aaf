"""The one way to produce: acks=all and an idempotent producer, asserted at start-up.

"No mail lost" rests on this: a message is removed from its mailbox only after a send through
this producer returned, i.e. after every in-sync replica has it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Self

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError

from email_channels.codec import Headers, encode, encode_key, record_headers
from email_channels.errors import PermanentError, PipelineError, TransientError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiokafka.structs import RecordMetadata

    from email_channels.events import Contract
    from email_channels.settings import KafkaSettings

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES = 2 * 1024 * 1024
"""Upper bound of one record we produce; larger content goes through the blob store."""


class ProducerNotDurable(PermanentError):
    """The producer is not configured for acks=all + idempotence; refuse to start."""


def assert_durable(producer: AIOKafkaProducer) -> None:
    """Fail start-up unless the producer waits for all replicas and is idempotent.

    aiokafka exposes no public getter for these, so read the attributes it sets in its
    constructor; a library upgrade that renames them fails here loudly rather than silently.
    """
    sender_acks = getattr(getattr(producer, "_sender", None), "_acks", None)
    idempotent = getattr(producer, "_txn_manager", None) is not None
    if sender_acks != -1 or not idempotent:  # -1 is how aiokafka stores acks="all"
        raise ProducerNotDurable(
            f"producer must use acks=all and enable_idempotence=True (acks={sender_acks!r}, "
            f"idempotent={idempotent})"
        )


def map_publish_error(exc: BaseException, topic: str) -> PipelineError | None:
    """The one place a failed publish becomes a pipeline error; ``None``: not a Kafka error.

    Frameworks may wrap aiokafka's error (faust does), so the cause is looked at too. A
    timeout is transient even though aiokafka marks ``KafkaTimeoutError`` not retriable.
    """
    if isinstance(exc, PipelineError):
        return None
    cause = exc if isinstance(exc, KafkaError) else exc.__cause__
    if not isinstance(cause, KafkaError):
        return None
    if isinstance(cause, KafkaTimeoutError) or getattr(cause, "retriable", False):
        return TransientError(f"publish to {topic} failed: {cause!r}")
    return PermanentError(f"publish to {topic} failed: {cause!r}")


class EventProducer:
    """Publishes event models; owns one durable AIOKafkaProducer."""

    def __init__(self, settings: KafkaSettings, *, client_id: str, **overrides: Any) -> None:
        self.topics = settings.topics
        tuning: dict[str, Any] = {
            "linger_ms": 5,
            "max_request_size": MAX_REQUEST_BYTES,
            "compression_type": "gzip",
        } | overrides  # a service may tune these; acks and idempotence are not negotiable
        self._producer = AIOKafkaProducer(
            **settings.client_kwargs(),
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            **tuning,
        )
        assert_durable(self._producer)

    @property
    def raw(self) -> AIOKafkaProducer:
        return self._producer

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            raise TransientError(f"cannot connect the producer to Kafka: {exc}") from exc
        assert_durable(self._producer)
        log.info("producer started", acks="all", idempotent=True)

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def publish(
        self,
        topic: str,
        key: str,
        event: Contract | None,
        *,
        headers: Headers | None = None,
        **header_values: str,
    ) -> RecordMetadata:
        """Send one event (``None`` = tombstone) and wait until Kafka acknowledged it."""
        all_headers = record_headers(event, headers, **header_values)
        try:
            return await self._producer.send_and_wait(
                topic,
                value=encode(event) if event is not None else None,
                key=encode_key(key),
                headers=all_headers,
            )
        except KafkaError as exc:
            raise _mapped(exc, topic) from exc

    async def publish_all(
        self, topic: str, events: Sequence[tuple[str, Contract]]
    ) -> list[RecordMetadata]:
        """Send ``(key, event)`` pairs together and wait until Kafka acknowledged every one.

        Records of one key keep their order (idempotent producer). If any fails, the error of
        the first failure is raised after all have settled, so a caller retries the whole set.
        """
        try:
            futures = [
                await self._producer.send(
                    topic,
                    value=encode(event),
                    key=encode_key(key),
                    headers=record_headers(event, None),
                )
                for key, event in events
            ]
            results = await asyncio.gather(*futures, return_exceptions=True)
        except KafkaError as exc:
            raise _mapped(exc, topic) from exc
        for result in results:
            if isinstance(result, KafkaError):
                raise _mapped(result, topic) from result
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if not isinstance(r, BaseException)]

    async def publish_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> RecordMetadata:
        try:
            return await self._producer.send_and_wait(topic, value=value, key=key, headers=headers)
        except KafkaError as exc:
            raise _mapped(exc, topic) from exc


def _mapped(exc: KafkaError, topic: str) -> PipelineError:
    mapped = map_publish_error(exc, topic)
    assert mapped is not None  # a KafkaError always maps
    return mapped
