"""The one consume loop: handle each record, then apply the error policy, then commit.

Policy (house style, errors as data):

- handler returns            -> done
- ``err.retriable``          -> retry with capped exponential backoff, up to ``policy.attempts``;
                                still failing -> dead-letter with ``retriable=True`` so it can be
                                replayed once the fault is gone
- any other error            -> dead-letter at once with the error class and message
                                (a bug in our code is dead-lettered too: never silently dropped);
                                a dead letter that cannot be published is retried until it is

Offsets are committed only after a record was handled or dead-lettered, so a crash re-delivers
(at-least-once); handlers are idempotent by their own keys. Stopping in the middle of a retry
leaves the record uncommitted for the next owner.

Hooks, explicit rather than subclassed: :func:`settle` passes the attempt number (1, 2, ...) to
an :data:`AttemptHandler`, and calls a :data:`GiveUp` hook once, just before a record is
dead-lettered, with the final error and the attempts made (a stage reports its own outcome
there, e.g. the sender's "failed" delivery event). :func:`handle_with_policy` and
:func:`consume` keep the plain one-argument :data:`RecordHandler`. Many records at once, with
per-key order: :class:`email_channels.lanes.LaneConsumer`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import Counter

from email_channels.errors import PipelineError
from email_channels.events import DeadLetter

if TYPE_CHECKING:
    from email_channels.blobstore import BlobStore
    from email_channels.codec import Headers
    from email_channels.events import Contract
    from email_channels.settings import KafkaSettings
    from email_channels.topics import TopicNames

log = structlog.get_logger(__name__)

RECORDS = Counter(
    "email_channels_records_total",
    "Records consumed, by stage and outcome (ok, retried, dead_lettered)",
    ["stage", "outcome"],
)


@functools.cache
def _records(stage: str, outcome: str) -> Counter:
    """The ``RECORDS`` child of these labels, looked up once (settled for every record)."""
    return RECORDS.labels(stage, outcome)


Record: TypeAlias = ConsumerRecord  # ConsumerRecord[bytes, bytes]; aiokafka ships no types
RecordHandler = Callable[[Record], Awaitable[None]]
AttemptHandler = Callable[[Record, int], Awaitable[None]]
"""A handler told which attempt this is (1 for the first delivery of the record)."""
GiveUp = Callable[[Record, BaseException, int], Awaitable[None]]
"""Called once per given-up record (record, final error, attempts) before it is dead-lettered;
retried until it returns, so it must be safe to call again after a failure."""

DLQ_INLINE_MAX = 512 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_backoff: float = 0.2
    max_backoff: float = 30.0

    def backoff(self, attempt: int) -> float:
        # The exponent is capped: with (nearly) unlimited attempts 2**n would overflow a float.
        return float(min(self.max_backoff, self.first_backoff * 2 ** min(attempt - 1, 60)))


def make_consumer(
    settings: KafkaSettings,
    *topics: str,
    group_id: str | None,
    client_id: str,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits; offsets are committed by :func:`consume`.
    ``overrides`` are further AIOKafkaConsumer options (e.g. ``session_timeout_ms``)."""
    options: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    return AIOKafkaConsumer(
        *topics,
        **settings.client_kwargs(),
        group_id=group_id,
        client_id=client_id,
        **(options | overrides),
    )


class Publisher(Protocol):
    """What :class:`DeadLetters` needs: an :class:`~email_channels.producer.EventProducer`, or
    any adapter with the same two members (e.g. over a faust app's producer)."""

    @property
    def topics(self) -> TopicNames: ...

    async def publish(
        self,
        topic: str,
        key: str,
        event: Contract | None,
        *,
        headers: Headers | None = None,
        **header_values: str,
    ) -> object: ...


class DeadLetters:
    """Publishes poison records to ``email.dlq`` with their reason and origin."""

    def __init__(self, producer: Publisher, *, stage: str, blobs: BlobStore | None = None) -> None:
        self._producer = producer
        self._stage = stage
        self._blobs = blobs

    async def send(self, record: Record, error: BaseException, *, attempts: int = 1) -> None:
        value, value_ref = record.value, None
        if value is not None and len(value) > DLQ_INLINE_MAX and self._blobs is not None:
            value_ref = await self._blobs.put(value)
            value = None
        letter = DeadLetter(
            stage=self._stage,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error_kind=error.kind if isinstance(error, PipelineError) else type(error).__name__,
            error_message=str(error)[:4000],
            retriable=isinstance(error, PipelineError) and error.retriable,
            attempts=attempts,
            original_key=record.key,
            original_value=value,
            original_value_ref=value_ref,
            original_headers={
                k: v.decode("utf-8", errors="replace") for k, v in (record.headers or ())
            },
        )
        key = (record.key or b"").decode("utf-8", errors="replace")
        await self._producer.publish(self._producer.topics.dlq, key, letter)
        RECORDS.labels(self._stage, "dead_lettered").inc()
        log.warning(
            "record dead-lettered",
            stage=self._stage,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error_kind=letter.error_kind,
            error=letter.error_message,
        )


class _Stopping(Exception):
    pass


async def _until_done(
    step: Callable[[], Awaitable[None]],
    record: Record,
    *,
    what: str,
    policy: RetryPolicy,
    stopping: asyncio.Event,
) -> None:
    """Run ``step`` until it returns, backing off between failures. Raises _Stopping when
    shutdown interrupts the wait."""
    failures = 0
    while True:
        try:
            await step()
        except Exception as exc:
            failures += 1
            delay = policy.backoff(failures)
            log.exception(
                f"{what} failed; retrying",
                topic=record.topic,
                offset=record.offset,
                error=str(exc),
                delay_s=delay,
            )
            try:
                await asyncio.wait_for(stopping.wait(), timeout=delay)
            except TimeoutError:
                continue
            raise _Stopping from exc
        else:
            return


async def handle_with_policy(
    record: Record,
    handler: RecordHandler,
    *,
    dead_letters: DeadLetters,
    policy: RetryPolicy,
    stopping: asyncio.Event,
    stage: str,
    give_up: GiveUp | None = None,
) -> None:
    """Run the handler on one record and apply the error policy. Raises _Stopping on shutdown."""

    async def without_attempt(record: Record, _attempt: int) -> None:
        await handler(record)

    await settle(
        record,
        without_attempt,
        dead_letters=dead_letters,
        policy=policy,
        stopping=stopping,
        stage=stage,
        give_up=give_up,
    )


async def settle(
    record: Record,
    handler: AttemptHandler,
    *,
    dead_letters: DeadLetters,
    policy: RetryPolicy,
    stopping: asyncio.Event,
    stage: str,
    give_up: GiveUp | None = None,
) -> None:
    """Handle one record (passing the attempt number), retrying transient errors; when giving
    up, call ``give_up`` and then dead-letter the record. Raises _Stopping on shutdown."""
    attempt = 1
    while True:
        try:
            await handler(record, attempt)
        except Exception as exc:
            retriable = isinstance(exc, PipelineError) and exc.retriable
            if retriable and attempt < policy.attempts:
                delay = policy.backoff(attempt)
                RECORDS.labels(stage, "retried").inc()
                log.info(
                    "retrying record",
                    error=str(exc),
                    attempt=attempt,
                    delay_s=delay,
                    topic=record.topic,
                    offset=record.offset,
                )
                try:
                    await asyncio.wait_for(stopping.wait(), timeout=delay)
                except TimeoutError:
                    attempt += 1
                    continue
                raise _Stopping from exc
            if not isinstance(exc, PipelineError):
                log.exception(
                    "unexpected error in handler", topic=record.topic, offset=record.offset
                )
            await _give_up(
                record,
                exc,
                attempt,
                give_up=give_up,
                dead_letters=dead_letters,
                policy=policy,
                stopping=stopping,
            )
            return
        else:
            _records(stage, "ok").inc()
            return


async def _give_up(
    record: Record,
    error: BaseException,
    attempts: int,
    *,
    give_up: GiveUp | None,
    dead_letters: DeadLetters,
    policy: RetryPolicy,
    stopping: asyncio.Event,
) -> None:
    """The hook, then the dead letter, each retried until done (never settled-but-unrecorded);
    a failing dead letter does not call the hook again."""
    if give_up is not None:
        hook = give_up

        async def hook_step() -> None:
            await hook(record, error, attempts)

        await _until_done(hook_step, record, what="give-up hook", policy=policy, stopping=stopping)

    async def letter_step() -> None:
        await dead_letters.send(record, error, attempts=attempts)

    await _until_done(
        letter_step, record, what="dead letter not published", policy=policy, stopping=stopping
    )


async def _commit(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
    """Commit ``offset``; a partition lost to a rebalance meanwhile is not an error: its new
    owner re-delivers from the last commit and handlers are idempotent."""
    try:
        await consumer.commit({tp: offset})
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning(
            "commit lost to a rebalance; records will be re-delivered",
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            error=str(exc),
        )


async def consume(
    consumer: AIOKafkaConsumer,
    handler: RecordHandler,
    *,
    dead_letters: DeadLetters,
    stopping: asyncio.Event,
    stage: str,
    policy: RetryPolicy | None = None,
    give_up: GiveUp | None = None,
) -> None:
    """Consume until ``stopping`` is set; commit after each handled batch of a partition."""
    policy = policy or RetryPolicy()
    while not stopping.is_set():
        batches = await consumer.getmany(timeout_ms=500, max_records=200)
        for tp, records in batches.items():
            done: Record | None = None
            try:
                for record in records:
                    await handle_with_policy(
                        record,
                        handler,
                        dead_letters=dead_letters,
                        policy=policy,
                        stopping=stopping,
                        stage=stage,
                        give_up=give_up,
                    )
                    done = record
            except _Stopping:
                pass
            finally:
                if done is not None:
                    await _commit(consumer, tp, done.offset + 1)
            if stopping.is_set():
                return
